"""``StoreKeeper``: keeps the tracker's event store usable, so that history is a record and never a
precondition of delivery.

- A store found damaged, at opening or by any call, is set aside (its home renames it, see
  ``mqd.tracking.sqlitefile``), one ERROR names both places and says history starts afresh, and
  a new, empty store takes its place; the call is made again there.
- A store that cannot be opened or written for now (a directory that cannot be written, a full
  disk, a lock held too long) pauses tracking: one ERROR, then writes are dropped and counted
  without a word each, and the next call after a backoff (``FIRST_RETRY`` doubling to
  ``MAX_RETRY``) tries again; the resumption is logged with the count of events dropped.
- A store moved or replaced under it (another worker set it aside) is opened anew.

Nothing here raises into the writer but reads while paused (``TrackingError``) and what the
home classifies as ``Fault.OTHER`` (bugs). Every method runs on the tracker's writer thread,
one call at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from mqd.errors import TrackingError
from mqd.tracking.eventstore import EventStore, Fault

__all__ = ["FIRST_RETRY", "MAX_RETRY", "StoreHome", "StoreKeeper"]

# The tracker's logger: operators key on its name.
log = logging.getLogger("mqd.tracking.tracker")

T = TypeVar("T")

#: Seconds from a failure to open or write the store to the next try, doubling up to MAX_RETRY.
FIRST_RETRY = 30.0
MAX_RETRY = 600.0


class StoreHome(Protocol):
    """Where a store lives, and what its failures mean (``sqlitefile.SQLiteHome``)."""

    @property
    def where(self) -> str:
        """The store's place for the logs (a file's path)."""

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
    """The store of ``home``, kept usable. ``clock`` (monotonic seconds) times the retries."""

    def __init__(self, home: StoreHome, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.home = home
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
        self._delay = FIRST_RETRY
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
        store = self._usable()
        for again in (False, True):
            if store is None:
                break
            try:
                return op(store)
            except Exception as exc:
                fault = self.home.fault(exc)
                if fault is Fault.OTHER:
                    raise
                if fault is Fault.DAMAGED and not again:
                    store = self._damaged(exc)
                    continue
                self._pause(f"cannot write to the event store {self.home.where}: {exc}")
                break
        self._drop(events)
        return otherwise

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

    def close(self) -> None:
        if self.store is not None:
            self._close()
        if self._paused is not None and self._dropped_in_pause:
            log.warning(
                "tracking was still paused (%s): %d events were not recorded",
                self._paused,
                self._dropped_in_pause,
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
            log.warning(
                "tracking resumed in %s: %d events were dropped while it was paused",
                self.home.where,
                self._dropped_in_pause,
            )
        self._paused = None
        self._dropped_in_pause = 0
        self._delay = FIRST_RETRY

    def _pause(self, why: str, exc: BaseException | None = None) -> None:
        self._close()
        # A bug (not the store's condition) gets its traceback.
        bug = exc is not None and self.home.fault(exc) is Fault.OTHER
        if self._paused is None:
            log.error(
                "tracking paused: %s; delivery goes on, events are dropped (and counted) until "
                "the store works again; next try in %.0fs",
                why,
                self._delay,
                exc_info=exc if bug else None,
            )
        else:
            log.warning(
                "tracking still paused: %s (%d events dropped so far); next try in %.0fs",
                why,
                self._dropped_in_pause,
                self._delay,
                exc_info=exc if bug else None,
            )
        self._paused = why
        self._retry_at = self._clock() + self._delay
        self._delay = min(self._delay * 2, MAX_RETRY)

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
