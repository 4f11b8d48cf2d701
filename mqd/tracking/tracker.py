"""The tracker: turns the daemon's events into records, writes them in batches off the event
loop, takes providers' webhook events, and answers the queries of the API and the web view.

Writing never holds up delivery: events are buffered and written by one worker thread every
``FLUSH_DELAY``. The store is kept usable by a ``StoreKeeper``: a damaged store is set aside
and history starts afresh; a store that cannot be opened or written pauses tracking (events
kept, bounded, and written in order when it is back; retried with backoff). The queue, not
this store, is what keeps the mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from mqd.errors import TrackingError
from mqd.events import (
    Bounced,
    Claimed,
    Deferred,
    Delivered,
    Event,
    EventKind,
    Queued,
    RecipientEvent,
    Rejected,
)
from mqd.tracking.answers import FeedEvent, MessageHistory, MessageSummary
from mqd.tracking.backlog import Backlog
from mqd.tracking.eventstore import EventStore
from mqd.tracking.keeper import StoreKeeper
from mqd.tracking.queries import failures, history, message, recent, recipient
from mqd.tracking.records import Record
from mqd.tracking.vocabulary import ProviderEvent, Status

if TYPE_CHECKING:
    from mqd.config.schema import Config
    from mqd.tracking.keeper import StoreHome

__all__ = ["Tracker", "home_of", "records_for"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long events gather before a batch is written.
FLUSH_DELAY = 0.1
PRUNE_EVERY = 3600.0

_STATUS_OF: dict[EventKind, Status] = {
    EventKind.CLAIMED: Status.ACCEPTED,
    EventKind.REJECTED: Status.REJECTED,
    EventKind.QUEUED: Status.QUEUED,
    EventKind.DELIVERED: Status.DISPATCHED,
    EventKind.DEFERRED: Status.DEFERRED,
    EventKind.BOUNCED: Status.BOUNCED,
    EventKind.FAILED: Status.FAILED,
    EventKind.DELETED: Status.DELETED,
    EventKind.SUPPRESSED: Status.SUPPRESSED,
}


def records_for(event: Event) -> list[Record]:
    """The store records for one of the daemon's events (none for ``Completed``: the
    recipients' own statuses already say it)."""
    status = _STATUS_OF.get(event.kind)
    if status is None:
        return []
    common: dict[str, Any] = {"message": event.message_id, "status": status, "at": event.time}
    match event:
        case Claimed():
            return [Record(**common, detail={"file": event.file, "spool": event.spool})]
        case Rejected():
            detail = {"stage": event.stage, "file": event.file}
            return [
                Record(
                    **common,
                    reply=event.reason,
                    sender=event.sender,
                    detail=detail,
                    subject=event.subject,
                    not_a_message=event.reason if event.sender is None else None,
                )
            ]
        case Queued():
            return [
                Record(
                    **common,
                    relay=event.relay,
                    sender=event.sender,
                    message_id=event.message_id_header,
                    recipients=event.recipients,
                    subject=event.subject,
                    account=event.account,
                    detail=_queued_detail(event),
                )
            ]
        case RecipientEvent():
            return [
                Record(
                    **common,
                    recipient=event.recipient,
                    relay=event.relay,
                    provider_id=event.provider_id if isinstance(event, Delivered) else None,
                    reply=event.reply,
                    detail=_recipient_detail(event),
                )
            ]
    return [Record(**common)]  # Failed, Deleted: the message's final status


def home_of(config: Config) -> StoreHome:
    """Where ``config``'s event store is: the queue's PostgreSQL database, or a SQLite file."""
    from mqd.config.tracking import tracking_database

    database = tracking_database(config)
    if database is not None:
        from mqd.queue.postgresql.connect import Database
        from mqd.tracking.pghome import PostgresHome

        password = database.password.reveal() if database.password else None
        return PostgresHome(Database(database.dsn, password))
    from mqd.tracking.sqlitefile import SQLiteHome

    return SQLiteHome(config.tracking_path)


def _nothing() -> None:
    """A call on the writer thread that returns once every call queued before it has."""


def _queued_detail(event: Queued) -> dict[str, Any]:
    detail: dict[str, Any] = {"route": list(event.route)}
    for name in ("source", "login", "peer"):
        if getattr(event, name) is not None:
            detail[name] = getattr(event, name)
    return detail


def _recipient_detail(event: RecipientEvent) -> dict[str, Any]:
    if isinstance(event, Deferred):
        return {"next_attempt_at": event.next_attempt_at}
    if isinstance(event, Bounced):
        return {"status": event.status_code, "dsn_sent": event.dsn_sent}
    return {}


class Tracker:
    """The daemon's tracker; ``Tracker.open`` makes one. Its reads raise ``TrackingError``
    while tracking is paused."""

    def __init__(self, config: Config, keeper: StoreKeeper, writer: ThreadPoolExecutor) -> None:
        self.config = config
        self.keeper = keeper
        self._writer = writer
        self._buffer: list[Record] = []
        self._dirty = asyncio.Event()
        #: Set after each write that recorded something (the notifier waits on it).
        self.changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: Provider events that matched no message (counted for the logs and tests).
        self.unmatched = 0
        #: Pruning passes done, the first at start-up (a test waits for one before it records).
        self.prunes = 0
        self._closed = False

    @classmethod
    async def open(cls, config: Config, *, clock: Callable[[], float] = time.monotonic) -> Tracker:
        """A tracker for ``config.tracking_path`` (or the queue's database, see
        ``mqd.config.tracking``), its store opened. Never raises for the store: a damaged
        one is set aside (a new one opened), one that cannot be opened pauses tracking.
        ``clock`` (monotonic seconds) times the retries of a paused store."""
        writer = ThreadPoolExecutor(1, thread_name_prefix="mqd-tracking")
        backlog = Backlog(max_events=config.tracking.keep_while_paused)
        keeper = StoreKeeper(home_of(config), clock=clock, backlog=backlog)
        path = keeper.home.where
        await asyncio.get_running_loop().run_in_executor(writer, keeper.start)
        tracker = cls(config, keeper, writer)
        tracker._tasks = [
            asyncio.create_task(tracker._flush_loop(), name="mqd-tracking-flush"),
            asyncio.create_task(tracker._prune_loop(), name="mqd-tracking-prune"),
        ]
        if keeper.paused is None:
            log.info("tracking events in %s", path)
        return tracker

    @property
    def store(self) -> EventStore | None:
        """The store in use (None while paused); it changes when a damaged one is set aside."""
        return self.keeper.store

    @property
    def generation(self) -> int:
        """Changes each time another store is opened (positions in the old one mean nothing)."""
        return self.keeper.generation

    # -- writing ----------------------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Buffer ``event`` (called on the event loop for every event: cheap)."""
        records = records_for(event)
        if records:
            self._buffer.extend(records)
            self._dirty.set()

    async def flush(self) -> None:
        """Write what is buffered (the batch is taken now, so writes keep their order), behind
        what was kept while the store could not be written."""
        batch, self._buffer = self._buffer, []
        if not batch and not self.keeper.backlog:
            # The flush loop may have taken the batch a moment ago: once this returns, what was
            # observed before is written (the writer thread runs one call at a time, in order).
            if not self._closed:
                await self.call(_nothing)
            return
        try:
            new = await self.call(self._write, batch)
        except Exception:
            log.exception("tracking: could not record %d events; they are lost", len(batch))
            return
        if new:
            self.changed.set()

    def _write(self, batch: list[Record]) -> list[Record]:
        return self.keeper.record(batch)

    async def ingest(self, source: str, events: Sequence[ProviderEvent]) -> int:
        """Record a provider's verified events; return how many were new (duplicates of an
        event already recorded, by ``event_id``, are skipped). TrackingError while tracking is
        paused: nothing is recorded, and the webhook's 5xx makes the provider send them again
        (they cannot be kept as mqd's own are: matching them needs the store)."""
        await self.flush()  # so that an id dispatched a moment ago matches
        batch = list(events)

        def write() -> int | None:
            return self.keeper.write(
                lambda store: self._ingest(store, source, batch), events=0, otherwise=None
            )

        new = await self.call(write)
        if new is None:
            raise TrackingError(f"tracking is paused: {self.keeper.paused}")
        if new:
            self.changed.set()
        return new

    def _ingest(self, store: EventStore, source: str, events: list[ProviderEvent]) -> int:
        records = []
        for event in events:
            message_key = store.match(source, event)
            if message_key is None and event.mqd_id:
                # Ours (it carries our id) but unknown here: pruned, or sent before tracking.
                message_key = event.mqd_id
            if message_key is None:
                self.unmatched += 1
                log.info(
                    "%s event %s for <%s> matches no message (provider id %s): not recorded",
                    source,
                    event.status.value,
                    event.recipient or "",
                    event.provider_id,
                )
                continue
            records.append(
                Record(
                    message=message_key,
                    status=event.status,
                    at=event.at,
                    source=source,
                    recipient=event.recipient,
                    provider_id=event.provider_id,
                    reply=event.reply,
                    detail=dict(event.detail),
                    event_key=f"{source}:{event.event_id}",
                )
            )
        return len(store.record(records))

    async def prune(self) -> int:
        """Delete what is older than the retention; return how many events went."""
        cutoff = time.time() - self.config.tracking.retention
        return await self.call(
            self.keeper.write, lambda store: store.prune(cutoff), events=0, otherwise=0
        )

    async def set_cursor(self, name: str, position: int, generation: int | None = None) -> None:
        """Set the cursor ``name``; with ``generation``, only in the store of that generation
        (a position read in a store set aside since means nothing in the new one)."""

        def write(store: EventStore) -> None:
            if generation is None or generation == self.keeper.generation:
                store.set_cursor(name, position)

        await self.call(self.keeper.write, write, events=0, otherwise=None)

    async def _flush_loop(self) -> None:
        while True:
            # Events kept while the store could not be written: look again when it is due. (A
            # timer, not wait_for, which on Python 3.11 can swallow the cancellation of close.)
            waiting = self.keeper.retry_in()
            timer = None
            if waiting is not None:
                timer = asyncio.get_running_loop().call_later(
                    max(waiting, FLUSH_DELAY), self._dirty.set
                )
            try:
                await self._dirty.wait()
            finally:
                if timer is not None:
                    timer.cancel()
            await asyncio.sleep(FLUSH_DELAY)
            self._dirty.clear()
            await self.flush()

    async def _prune_loop(self) -> None:
        while True:
            try:
                gone = await self.prune()
                if gone:
                    log.info("tracking: pruned %d events older than the retention", gone)
            except Exception:
                log.exception("tracking: pruning failed")
            self.prunes += 1
            await asyncio.sleep(PRUNE_EVERY)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()
        await self.call(self.keeper.close)
        self._closed = True
        self._writer.shutdown(wait=True)

    # -- reading (on the writer's thread: a read sees every write before it) -----------------

    async def message(self, key: str) -> MessageHistory | None:
        return await self._read(lambda store: message(store, key))

    async def history(self, key: str, *, limit: int = 20) -> list[MessageHistory]:
        return await self._read(lambda store: history(store, key, limit))

    async def recipient(self, address: str, *, limit: int = 50) -> list[MessageSummary]:
        return await self._read(lambda store: recipient(store, address, limit))

    async def recent(
        self, *, limit: int = 50, status: str | None = None, account: str | None = None
    ) -> list[MessageSummary]:
        return await self._read(lambda store: recent(store, limit, status, account))

    async def failures(
        self, *, since: float | None = None, limit: int = 50
    ) -> list[MessageSummary]:
        return await self._read(lambda store: failures(store, since, limit))

    async def events_after(self, position: int, limit: int = 100) -> list[FeedEvent]:
        return await self._read(lambda store: store.events_after(position, limit))

    async def last_position(self) -> int:
        return await self._read(lambda store: store.last_position())

    async def lead(self, name: str) -> bool:
        """Whether this node is (now) the one reader of the cursor ``name``."""
        return await self._read(lambda store: store.lead(name))

    async def cursor(self, name: str) -> int:
        return await self._read(lambda store: store.cursor(name))

    async def _read(self, op: Callable[[EventStore], T]) -> T:
        return await self.call(self.keeper.read, op)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the store's thread (after every write queued before
        it)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._writer, functools.partial(fn, *args, **kwargs)
        )
