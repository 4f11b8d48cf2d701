"""``StoreKeeper``: keeps the tracker's event store usable, so that history is a record and never a
precondition of delivery.

- A store found damaged, at opening or by any call, is set aside (its home renames it, see
  ``mqd.tracking.sqlitefile``), one ERROR names both places and says history starts afresh, and
  a new, empty store takes its place; the call is made again there.
- A store that cannot be opened or written for now (a database that went away, a directory
  that cannot be written, a full disk, a lock held too long) pauses tracking: one ERROR, and
  the next call after a backoff (the home's ``retry``: 1 s doubling to 15 s for a database,
  30 s doubling to 600 s for a file) tries again.
- While paused, the tracker's events are kept in order (``mqd.tracking.backlog``, bounded:
  past the bound they are dropped and counted, said once) and written first when the store
  works again; the resumption is logged once the backlog is written, with the count written
  late. A batch whose commit may have gone through is asked about before it is written again
  (``EventStore.committed``): never twice. Other writes while paused (a provider's events, a
  cursor, pruning) are dropped and counted as before.
- A store moved or replaced under it (another worker set it aside) is opened anew.

Both stores keep a backlog. PostgreSQL's pauses are a restart or a failover, over in seconds:
without one, every message sent meanwhile would lose its timeline. SQLite's are mostly a full
disk or a lock held too long, which an operator fixes in minutes: the bound keeps what is
held in memory small, and the history of that while is kept as far as it goes (the damaged
file is still set aside, not kept waiting: it would never work again).

Nothing here raises into the writer but reads while paused (``TrackingError``) and what the
home classifies as ``Fault.OTHER`` (bugs). Every method runs on the tracker's writer thread,
one call at a time.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from mqd.errors import TrackingError
from mqd.tracking.backlog import Backlog
from mqd.tracking.eventstore import CommitInDoubt, EventStore, Fault
from mqd.tracking.records import Record

__all__ = ["FIRST_RETRY", "MAX_RETRY", "StoreHome", "StoreKeeper"]

# The tracker's logger: operators key on its name.
log = logging.getLogger("mqd.tracking.tracker")

T = TypeVar("T")

#: Seconds from a failure to open or write a file store to the next try, doubling up to
#: MAX_RETRY (a home says its own: ``StoreHome.retry``).
FIRST_RETRY = 30.0
MAX_RETRY = 600.0
#: Records written from the backlog per transaction, and per call at most (the writer thread
#: also answers reads: a long backlog is written a few seconds at a time).
CHUNK = 500
PER_CALL = 10 * CHUNK


class StoreHome(Protocol):
    """Where a store lives, and what its failures mean (``sqlitefile.SQLiteHome``)."""

    @property
    def where(self) -> str:
        """The store's place for the logs (a file's path)."""

    @property
    def retry(self) -> tuple[float, float]:
        """Seconds to the first try again after a failure, and the most, doubling between."""

    def open(self) -> EventStore:
        """The store, created if absent; raises when it cannot be."""

    def fault(self, exc: BaseException) -> Fault:
        """What ``exc``, raised by ``open`` or by the store, means."""

    def replaced(self) -> bool:
        """Whether the store opened last is no longer the one at ``where``."""

    def set_aside(self) -> object | None:
        """Move the damaged store out of the way (the store closed) and say where it went; None
        when it was gone already. Raises OSError when it cannot be moved."""


class StoreKeeper:
    """The store of ``home``, kept usable. ``clock`` (monotonic seconds) times the retries;
    ``backlog`` keeps the events while the store cannot be written."""

    def __init__(
        self,
        home: StoreHome,
        *,
        clock: Callable[[], float] = time.monotonic,
        backlog: Backlog | None = None,
    ) -> None:
        self.home = home
        self.backlog = backlog if backlog is not None else Backlog()
        #: Events written late (kept while paused), in all.
        self.late = 0
        self._late_in_pause = 0
        #: Whether a pause ended and its backlog is being written (the resumption is said then).
        self._resuming = False
        self._clock = clock
        #: The store in use; None while paused.
        self.store: EventStore | None = None
        #: Incremented each time another store is opened: readers that keep a position in the
        #: events (the notifier) start over when it changes.
        self.generation = 0
        #: Events dropped while paused, in all (for tests and the last word at closing).
        self.dropped = 0
        self._dropped_in_pause = 0
        self._paused: str | None = None
        self._delay = home.retry[0]
        self._retry_at = 0.0

    @property
    def paused(self) -> str | None:
        """Why tracking is paused; None when it is not."""
        return self._paused

    def start(self) -> None:
        """Open the store (setting a damaged one aside, or pausing)."""
        self._open()

    def write(self, op: Callable[[EventStore], T], *, events: int, otherwise: T) -> T:
        """``op(store)``, once more on a new store if the store was damaged; when paused, or
        pausing now, ``events`` are counted as dropped and ``otherwise`` is returned."""
        done, result = self._attempt(op)
        if done:
            return result  # type: ignore[return-value]  # done: op's result
        self._drop(events)
        return otherwise

    def record(self, batch: list[Record]) -> list[Record]:
        """Record ``batch`` behind the events kept before it; return those written now that were
        new (the kept ones written at last among them). While the store cannot be written the
        batch is kept (``backlog``) rather than dropped."""
        new = self._write_backlog()  # what was kept goes first (a paused store opened if due)
        if batch and not self.backlog and self._usable() is not None:
            try:
                done, written = self._attempt(functools.partial(_record, records=batch))
            except CommitInDoubt as exc:  # kept at the head, asked about before written again
                self.backlog.add(batch)
                self.backlog.doubt, self.backlog.doubt_size = exc.token, len(self.backlog)
                return new
            if done:
                return new + (written or [])
        self.backlog.add(batch)
        return new

    def _write_backlog(self) -> list[Record]:
        """Write what is kept, oldest first, a chunk a transaction, until it is all written,
        ``PER_CALL`` were, or the store fails (the rest waits for the next call)."""
        new: list[Record] = []
        written = 0
        while self.backlog and written < PER_CALL:
            if self.backlog.doubt is not None:
                token, size = self.backlog.doubt, self.backlog.doubt_size
                done, committed = self._attempt(functools.partial(_committed, token=token))
                if not done or committed is None:
                    return new  # paused again, or not known yet: the next call asks again
                if committed:
                    new += self.backlog.head(size)
                    self._written(size)
                    written += size
                    continue
                self.backlog.doubt = None  # rolled back: written again below
            chunk = self.backlog.head(CHUNK)
            try:
                done, recorded = self._attempt(functools.partial(_record, records=chunk))
            except CommitInDoubt as exc:
                self.backlog.doubt, self.backlog.doubt_size = exc.token, len(chunk)
                return new
            except Exception:  # a bug: this chunk is given up, not the events behind it
                self.backlog.pop(len(chunk))
                self._drop(len(chunk))
                raise
            if not done:
                return new
            new += recorded or []
            self._written(len(chunk))
            written += len(chunk)
        if not self.backlog and self._resuming:
            self._resumed()
        return new

    def _written(self, count: int) -> None:
        self.backlog.pop(count)
        self.late += count
        self._late_in_pause += count

    def _attempt(self, op: Callable[[EventStore], T]) -> tuple[bool, T | None]:
        """(True, ``op(store)``), once more on a new store if the store was damaged; (False,
        None) when paused or pausing now. ``CommitInDoubt`` passes, after pausing."""
        store = self._usable()
        for again in (False, True):
            if store is None:
                break
            try:
                return True, op(store)
            except Exception as exc:
                fault = self.home.fault(exc)
                if fault is Fault.OTHER:
                    raise
                if fault is Fault.DAMAGED and not again:
                    store = self._damaged(exc)
                    continue
                self._pause(f"cannot write to the event store {self.home.where}: {exc}")
                if isinstance(exc, CommitInDoubt):
                    raise
                break
        return False, None

    def read(self, op: Callable[[EventStore], T]) -> T:
        """``op(store)``, once more on a new store if the store was damaged. Raises
        TrackingError while paused; a store's other errors pass."""
        store = self._usable()
        for again in (False, True):
            if store is None:
                break
            try:
                return op(store)
            except Exception as exc:
                if self.home.fault(exc) is not Fault.DAMAGED:
                    raise
                if again:
                    self._pause(f"cannot read the event store {self.home.where}: {exc}")
                    break
                store = self._damaged(exc)
        raise TrackingError(f"tracking is paused: {self._paused}")

    def retry_in(self) -> float | None:
        """Seconds until kept events are tried again (0: now); None when none are kept."""
        if not self.backlog:
            return None
        return max(0.0, self._retry_at - self._clock()) if self._paused is not None else 0.0

    def close(self) -> None:
        """Close the store, after a last try at what is kept (now, whatever the backoff says:
        events kept in memory go with the process)."""
        if self.backlog and self._paused is not None:
            self._retry_at = 0.0
            self._write_backlog()
        if self.store is not None:
            self._close()
        lost = len(self.backlog)
        self.backlog.pop(lost)
        self._drop(lost)  # kept in memory: they go with the process
        if self._paused is not None and self._dropped_in_pause + self.backlog.dropped:
            log.warning(
                "tracking was still paused (%s): %d events were not recorded",
                self._paused,
                self._dropped_in_pause + self.backlog.dropped,
            )

    # -- the states -------------------------------------------------------------------------------

    def _usable(self) -> EventStore | None:
        if self.store is not None:
            if not self.home.replaced():
                return self.store
            log.warning(
                "the event store %s was moved or replaced while in use: opening it anew",
                self.home.where,
            )
            self._close()
            return self._open()
        if self._clock() < self._retry_at:
            return None
        return self._open()

    def _open(self) -> EventStore | None:
        try:
            store = self.home.open()
        except Exception as exc:
            if self.home.fault(exc) is Fault.DAMAGED:
                return self._damaged(exc)
            self._pause(f"cannot open the event store {self.home.where}: {exc}", exc)
            return None
        self._opened(store)
        return store

    def _damaged(self, exc: BaseException) -> EventStore | None:
        """Set the damaged store aside and open a new one (None: paused)."""
        self._close()
        where = self.home.where
        try:
            moved = self.home.set_aside()
        except OSError as err:
            self._pause(
                f"the event store {where} is damaged ({exc}) and cannot be set aside: {err}"
            )
            return None
        if moved is None:
            log.warning("the event store %s was damaged and is set aside already", where)
        else:
            log.error(
                "the event store %s is damaged (%s): set aside as %s; history starts afresh in "
                "a new, empty %s (delivery is not affected)",
                where,
                exc,
                moved,
                where,
            )
        try:
            store = self.home.open()
        except Exception as err:
            self._pause(f"cannot create a new event store {where}: {err}", err)
            return None
        self._opened(store)
        return store

    def _opened(self, store: EventStore) -> None:
        self.store = store
        self.generation += 1
        if self._paused is not None:
            self._resuming = True
        self._paused = None
        self._delay = self.home.retry[0]
        if not self.backlog and self._resuming:
            self._resumed()

    def _resumed(self) -> None:
        """Say once that the store works again and what the pause cost, once what was kept is
        written."""
        _, over = self.backlog.settle()
        dropped = self._dropped_in_pause + over
        log.warning(
            "tracking resumed in %s: %d events kept while it was paused were written late, "
            "%d events were dropped%s",
            self.home.where,
            self._late_in_pause,
            dropped,
            f" ({over} past the most it keeps)" if over else "",
        )
        self._resuming = False
        self._dropped_in_pause = 0
        self._late_in_pause = 0

    def _pause(self, why: str, exc: BaseException | None = None) -> None:
        self._close()
        # A bug (not the store's condition) gets its traceback.
        bug = exc is not None and self.home.fault(exc) is Fault.OTHER
        if self._paused is None and not self._resuming:
            log.error(
                "tracking paused: %s; delivery goes on, %s until the store works again; next "
                "try in %.0fs",
                why,
                f"events are kept (up to {self.backlog.max_events}) and written"
                if self.backlog.max_events
                else "events are dropped (and counted)",
                self._delay,
                exc_info=exc if bug else None,
            )
        else:
            log.info(
                "tracking still paused: %s (%d events kept, %d dropped so far); next try in %.0fs",
                why,
                len(self.backlog),
                self._dropped_in_pause + self.backlog.dropped,
                self._delay,
                exc_info=exc if bug else None,
            )
        self._paused = why
        self._retry_at = self._clock() + self._delay
        self._delay = min(self._delay * 2, self.home.retry[1])

    def _drop(self, events: int) -> None:
        self.dropped += events
        self._dropped_in_pause += events

    def _close(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            try:
                store.close()
            except Exception:  # a damaged store may fail to close too: it is dropped all the same
                log.debug("closing the event store %s failed", self.home.where, exc_info=True)


def _committed(store: EventStore, *, token: object) -> bool | None:
    return store.committed(token)


def _record(store: EventStore, *, records: list[Record]) -> list[Record]:
    return store.record(records)
