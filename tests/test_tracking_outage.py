"""Tracking on PostgreSQL across an outage: events emitted while the database cannot be reached
are kept, and written once each, in order, when it is back, where every reader of the feed
finds them after its position; past the bound they are dropped and counted; a batch whose
commit may have gone through is asked about, never written twice.

The database "goes away" for the tracker only: its DSN points at a TCP proxy in the test that
is cut (connections ended, new ones closed at once) and restored, while the shared server runs
on for everyone else. Retries are timed by an injected clock; the tests wait on conditions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from pgfixtures import BASE_DSN, PgSchema
from tcpproxy import TcpProxy

from mqd.config.load import parse_config
from mqd.config.schema import Config
from mqd.errors import TrackingError
from mqd.events import Claimed, Delivered, Queued
from mqd.queue.postgresql.connect import Database
from mqd.testing import wait_until_sync
from mqd.tracking.answers import FeedEvent
from mqd.tracking.backlog import Backlog
from mqd.tracking.eventstore import CommitInDoubt
from mqd.tracking.keeper import StoreKeeper
from mqd.tracking.pause import TrackingPause
from mqd.tracking.pghome import PostgresHome
from mqd.tracking.postgresql import PostgresEventStore
from mqd.tracking.records import Record
from mqd.tracking.tracker import Tracker
from mqd.tracking.vocabulary import ProviderEvent, Status

LOG = "mqd.tracking.tracker"


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    server = urlsplit(BASE_DSN)
    made = TcpProxy((server.hostname or "127.0.0.1", server.port or 5432))
    try:
        yield made
    finally:
        made.close()


def config_for(tmp_path: Path, dsn: str, **tracking: object) -> Config:
    return parse_config(
        {
            "queue": {"dir": str(tmp_path / "q"), "store": "postgresql", "dsn": dsn, "node": "n1"},
            "relays": {"mem": {"plugin": "memory"}},
            "spool": [{"path": str(tmp_path / "spool"), "relay": "mem"}],
            "tracking": tracking,
        },
        None,
    )


def sent(tracker: Tracker, mid: str) -> None:
    """A message's three events: claimed, queued, delivered."""
    now = time.time()
    tracker.observe(Claimed(message_id=mid, time=now, file=f"{mid}.eml", spool="/s"))
    tracker.observe(
        Queued(
            message_id=mid,
            time=now,
            sender="app@example.com",
            recipients=("bob@example.net",),
            relay="mem",
            route=("mem",),
            message_id_header=f"<{mid}@example.com>",
            subject="Hello",
        )
    )
    tracker.observe(
        Delivered(
            message_id=mid,
            time=now,
            recipient="bob@example.net",
            reply="250",
            relay="mem",
            provider_id=None,
            elapsed=0.1,
            age=0.1,
        )
    )


def mid(n: int) -> str:
    return f"0190000000000000000{n:03d}"


STATUSES = ["accepted", "queued", "dispatched"]


def feed(dsn: str, after: int, want: int) -> list[FeedEvent]:
    """The events after ``after`` as a reader on the real server sees them, once ``want`` are
    readable (other tests' transactions on the shared server hold the horizon back too)."""
    store = PostgresEventStore.connect(Database(dsn))
    try:

        def enough() -> list[FeedEvent] | None:
            batch = store.events_after(after, 1000)
            return batch if len(batch) >= want else None

        return wait_until_sync(enough, f"{want} readable events")
    finally:
        store.close()


def timeline(events: Sequence[FeedEvent]) -> list[tuple[str, str]]:
    return [(event.message, event.status) for event in events]


def expected(numbers: Sequence[int]) -> list[tuple[str, str]]:
    return [(mid(n), status) for n in numbers for status in STATUSES]


async def test_events_emitted_while_the_database_is_away_are_written_once_in_order(
    tmp_path: Path, schema: PgSchema, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOG)
    now = [0.0]
    tracker = await Tracker.open(config_for(tmp_path, proxy.dsn(schema.dsn)), clock=lambda: now[0])
    try:
        sent(tracker, mid(1))
        await tracker.flush()
        [*_, before] = feed(schema.dsn, 0, 3)  # a reader's position before the outage

        proxy.cut()
        for n in range(2, 6):
            sent(tracker, mid(n))
            await tracker.flush()
        keeper = tracker.keeper
        assert keeper.paused is not None and len(keeper.backlog) == 12 and keeper.dropped == 0
        assert keeper.retry_in() == pytest.approx(1.0)  # a database: 1 s first
        shown = TrackingPause(keeper)  # what mqd status lists among its faults
        assert shown.active and shown.retry_in() == pytest.approx(1.0)
        assert shown.reason is not None and "(12 event(s) kept to write when" in shown.reason
        now[0] += 1.0
        refused = proxy.refused
        await tracker.flush()  # tried again, refused again: twice as long
        assert proxy.refused > refused and keeper.retry_in() == pytest.approx(2.0)

        proxy.restore()
        sent(tracker, mid(6))
        await tracker.flush()  # not due yet: kept behind the others
        assert len(keeper.backlog) == 15
        now[0] += 2.0
        await tracker.flush()
        assert not keeper.backlog and keeper.paused is None and keeper.late == 15
        assert not shown.active and shown.reason is None
        # Every event once, in the order emitted; a reader after its position finds the late
        # ones, whatever their seq.
        assert timeline(feed(schema.dsn, 0, 18)) == expected(range(1, 7))
        assert timeline(feed(schema.dsn, before.position, 15)) == expected(range(2, 7))
        found = await tracker.message(mid(3))
        assert found is not None and [e.status for e in found.events] == STATUSES
    finally:
        await tracker.close()
    errors = [r for r in caplog.records if r.name == LOG and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "tracking paused" in errors[0].getMessage()
    [resumed] = [r.getMessage() for r in caplog.records if "tracking resumed" in r.getMessage()]
    assert "15 events kept while it was paused were written late, 0 events were dropped" in resumed


async def test_past_the_bound_events_are_dropped_and_counted(
    tmp_path: Path, schema: PgSchema, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    config = config_for(tmp_path, proxy.dsn(schema.dsn), keep_while_paused=7)
    tracker = await Tracker.open(config, clock=lambda: now[0])
    try:
        proxy.cut()
        for n in range(1, 5):
            sent(tracker, mid(n))
            await tracker.flush()
        assert len(tracker.keeper.backlog) == 7 and tracker.keeper.backlog.dropped == 5
        proxy.restore()
        now[0] += 1.0
        await tracker.flush()
        assert not tracker.keeper.backlog
        # The oldest seven, in order: what was kept is a prefix of what happened.
        assert timeline(feed(schema.dsn, 0, 7)) == expected(range(1, 5))[:7]
    finally:
        await tracker.close()
    said = [r.getMessage() for r in caplog.records if r.name == LOG]
    assert sum("further events are dropped" in line for line in said) == 1  # said once
    [resumed] = [line for line in said if "tracking resumed" in line]
    assert "7 events kept while it was paused were written late" in resumed
    assert "5 events were dropped (5 past the most it keeps)" in resumed


async def test_provider_events_while_paused_are_refused_for_the_provider_to_send_again(
    tmp_path: Path, schema: PgSchema, proxy: TcpProxy
) -> None:
    now = [0.0]
    tracker = await Tracker.open(config_for(tmp_path, proxy.dsn(schema.dsn)), clock=lambda: now[0])
    event = ProviderEvent(Status.BOUNCED, time.time(), "e1", recipient="bob@example.net")
    try:
        sent(tracker, mid(1))
        await tracker.flush()
        proxy.cut()
        sent(tracker, mid(2))
        await tracker.flush()  # paused now
        with pytest.raises(TrackingError, match="tracking is paused"):
            await tracker.ingest("sendgrid", [replace(event, mqd_id=mid(1))])
        assert tracker.keeper.dropped == 0  # refused (the webhook answers 503), not dropped
        proxy.restore()
        now[0] += 1.0
        assert await tracker.ingest("sendgrid", [replace(event, mqd_id=mid(1))]) == 1
    finally:
        await tracker.close()


# -- a commit in doubt -------------------------------------------------------------------------


def record(n: int) -> Record:
    return Record(mid(n), Status.ACCEPTED, 1_000_000.0 + n, detail={"n": n})


def test_the_store_says_whether_a_transaction_committed(schema: PgSchema) -> None:
    store = PostgresEventStore.connect(Database(schema.dsn))
    try:
        with psycopg.connect(schema.dsn) as conn:
            running = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
            assert running is not None
            assert store.committed(running[0]) is None  # not known yet
            conn.rollback()
            assert store.committed(running[0]) is False
            done = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
            assert done is not None
            conn.commit()
            assert store.committed(done[0]) is True
    finally:
        store.close()


class LostAck(PostgresEventStore):
    """A store whose next batch's COMMIT is lost on the way back: it ``commits`` (or rolls back)
    and raises ``CommitInDoubt``, as a connection cut during COMMIT would."""

    commits: bool | None = None

    def record(self, records: Sequence[Record]) -> list[Record]:
        commits, LostAck.commits = LostAck.commits, None
        if commits is None:
            return super().record(records)
        with self._conn.transaction(force_rollback=not commits):
            row = self._conn.execute("SELECT pg_current_xact_id()::text").fetchone()
            assert row is not None
            self._record(records)
        raise CommitInDoubt(row[0], "server closed the connection unexpectedly")


class LostAckHome(PostgresHome):
    def open(self) -> PostgresEventStore:
        plain = super().open()
        store = LostAck(plain._conn, where=plain.where, reopen=plain._reopen)
        return store


@pytest.mark.parametrize("commits", [True, False])
def test_a_batch_in_doubt_is_written_once(schema: PgSchema, commits: bool) -> None:
    now = [0.0]
    keeper = StoreKeeper(LostAckHome(Database(schema.dsn)), clock=lambda: now[0])
    keeper.start()
    try:
        keeper.record([record(1)])
        LostAck.commits = commits
        assert keeper.record([record(2), record(3)]) == []
        assert keeper.paused is not None and keeper.backlog.doubt is not None
        keeper.record([record(4)])  # kept behind the batch in doubt
        now[0] += 1.0
        keeper.record([])
        assert not keeper.backlog and keeper.paused is None
        events: list[Any] = feed(schema.dsn, 0, 4)
        assert [e.detail["n"] for e in events] == [1, 2, 3, 4]  # once each, in order
    finally:
        keeper.close()


def test_keep_while_paused_0_keeps_nothing(tmp_path: Path) -> None:
    from mqd.errors import ConfigError

    config = config_for(tmp_path, "postgresql://mqd@db/mqd", keep_while_paused=0)
    assert config.tracking.keep_while_paused == 0
    backlog = Backlog(max_events=config.tracking.keep_while_paused)
    backlog.add([record(1), record(2)])
    assert len(backlog) == 0 and backlog.dropped == 2 and backlog.bytes == 0
    with pytest.raises(ConfigError, match="keep_while_paused"):
        config_for(tmp_path, "postgresql://mqd@db/mqd", keep_while_paused=-1)


#: At commit, a batch holding the message ``slow`` waits for an advisory lock the test holds: the
#: test cuts the connection while the server is in the middle of that COMMIT.
SLOW_COMMIT = """
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.message = 'slow' THEN PERFORM pg_advisory_xact_lock(%(key)s); END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON mqd_track_event
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""


def test_a_connection_lost_during_commit_leaves_the_batch_written_once(
    schema: PgSchema, proxy: TcpProxy
) -> None:
    """The real thing: the server commits after the client lost the connection; the keeper
    asks, finds it committed, and does not write the batch again."""
    import secrets
    from concurrent.futures import ThreadPoolExecutor

    key = secrets.randbelow(2**31)
    with psycopg.connect(schema.dsn, autocommit=True) as admin:
        admin.execute(SLOW_COMMIT.replace("%(key)s", str(key)).encode())
    now = [0.0]
    keeper = StoreKeeper(PostgresHome(Database(proxy.dsn(schema.dsn))), clock=lambda: now[0])
    keeper.start()
    holder = psycopg.connect(schema.dsn, autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        slow = Record("slow", Status.ACCEPTED, 1_000_000.0, detail={"n": 1})
        with ThreadPoolExecutor(1) as pool:
            writing = pool.submit(keeper.record, [slow])

            def committing() -> bool:
                row = holder.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND objid = %s",
                    (key,),
                ).fetchone()
                return bool(row and row[0])

            wait_until_sync(committing, "the batch's COMMIT to wait for the lock")
            proxy.cut()
            assert writing.result(30) == []
        assert keeper.paused is not None and keeper.backlog.doubt is not None
        holder.execute("SELECT pg_advisory_unlock(%s)", (key,))  # the server commits it now
        proxy.restore()
        now[0] += 1.0

        def written() -> bool:
            keeper.record([])  # asks; "in progress" while the commit finishes: asked again
            return not keeper.backlog

        wait_until_sync(written, "the batch in doubt to be settled")
        keeper.record([record(2)])
        events = feed(schema.dsn, 0, 2)
        assert [(e.message, e.detail["n"]) for e in events] == [("slow", 1), (mid(2), 2)]
    finally:
        holder.close()
        keeper.close()
