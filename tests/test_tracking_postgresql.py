"""The event store in PostgreSQL, shared by a fleet: readers of the feed never skip or repeat an
event when nodes commit out of ``seq`` order, one node at a time sends the notifications, any
node reads every node's history (a second tracker, ``mqd history``, ``mqd events``), and a node
refuses a schema it does not know."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from pgfixtures import PgSchema

from mqd.config.load import parse_config
from mqd.config.schema import Config
from mqd.errors import QueueSchemaError
from mqd.events import Claimed, Delivered, Queued
from mqd.queue.postgresql.connect import Database
from mqd.testing import wait_until_sync
from mqd.tracking.answers import FeedEvent
from mqd.tracking.pgfeed import split
from mqd.tracking.pgwrite import insert_rows
from mqd.tracking.postgresql import PostgresEventStore
from mqd.tracking.records import Record
from mqd.tracking.tracker import Tracker
from mqd.tracking.vocabulary import ProviderEvent, Status

MID = "0190000000aabbccddeeff"


def record(n: int) -> Record:
    """A message's first event (a message each: two nodes never write one message's row at
    once, as lease holders; a writer waiting on the other's row would wait for the test)."""
    return Record(f"m{n}", Status.ACCEPTED, 1_000_000.0 + n, detail={"n": n})


def writer(schema: PgSchema) -> tuple[psycopg.Connection[tuple[object, ...]], PostgresEventStore]:
    """A node's store on a connection whose transaction the test commits (``conn.commit()``):
    ``record`` runs in a savepoint of it."""
    conn = psycopg.connect(schema.dsn)
    conn.execute("SELECT 1")  # the transaction is open: record()'s block is a savepoint in it
    return conn, PostgresEventStore(conn)


def numbers(batch: list[FeedEvent]) -> list[int]:
    return [event.detail["n"] for event in batch]


def read(store: PostgresEventStore, position: int, want: int) -> list[FeedEvent]:
    """The events after ``position``, looked at again until ``want`` of them are readable:
    other tests' transactions on the shared server hold the horizon back too."""

    def enough() -> list[FeedEvent] | None:
        batch = store.events_after(position, 100)
        return batch if len(batch) >= want else None

    if want == 0:
        return store.events_after(position, 100)
    return wait_until_sync(enough, f"{want} readable events")


@pytest.mark.parametrize("b_takes_its_xid_first", [False, True])
def test_events_committed_out_of_order_are_read_once_each_in_a_stable_order(
    schema: PgSchema, b_takes_its_xid_first: bool
) -> None:
    """Two nodes: A takes the lower seq, B the higher; B commits first. A reader that kept the
    last seq would read B's, then never A's. (With B's transaction id the older one, B's event
    is readable at once; otherwise only with A's.)"""
    reader = PostgresEventStore.connect(Database(schema.dsn))
    conn_a, node_a = writer(schema)
    conn_b, node_b = writer(schema)
    try:
        if b_takes_its_xid_first:
            conn_b.execute("SELECT pg_current_xact_id()")
        node_a.record([record(1)])
        node_b.record([record(2)])
        assert reader.events_after(0, 100) == []  # neither committed
        conn_b.commit()
        # B's event is readable now only if no transaction older than B's still runs.
        batch = read(reader, 0, 1 if b_takes_its_xid_first else 0)
        assert numbers(batch) == ([2] if b_takes_its_xid_first else [])
        seen = numbers(batch)
        position = batch[-1].position if batch else 0
        conn_a.commit()
        batch = read(reader, position, 2 - len(seen))
        seen += numbers(batch)
        assert sorted(seen) == [1, 2] and len(seen) == 2  # both, once
        position = batch[-1].position
        assert reader.events_after(position, 100) == []
        # A stable order: read again from the start, the same.
        assert numbers(reader.events_after(0, 100)) == seen
        by_seq = {event.detail["n"]: event.seq for event in reader.events_after(0, 100)}
        assert by_seq[1] < by_seq[2]  # A did take the lower seq
    finally:
        for conn in (conn_a, conn_b):
            conn.close()
        reader.close()


def test_a_cursor_survives_out_of_order_commits(schema: PgSchema) -> None:
    """The cursor kept in the database is a position: set after reading B's event, A's (lower
    seq, committed later) still comes after it."""
    reader = PostgresEventStore.connect(Database(schema.dsn))
    conn_a, node_a = writer(schema)
    conn_b, node_b = writer(schema)
    try:
        conn_b.execute("SELECT pg_current_xact_id()")
        node_a.record([record(1)])
        node_b.record([record(2)])
        conn_b.commit()
        batch = read(reader, max(reader.cursor("app"), 0), 1)
        assert numbers(batch) == [2]
        reader.set_cursor("app", batch[-1].position)
        conn_a.commit()
        other = PostgresEventStore.connect(Database(schema.dsn))  # another node resumes
        try:
            assert other.cursor("app") == batch[-1].position
            assert numbers(read(other, other.cursor("app"), 1)) == [1]
        finally:
            other.close()
    finally:
        for conn in (conn_a, conn_b):
            conn.close()
        reader.close()


def test_a_running_transaction_holds_the_feed_back_not_a_finished_one(schema: PgSchema) -> None:
    store = PostgresEventStore.connect(Database(schema.dsn))
    try:
        store.record([record(1)])
        assert numbers(read(store, 0, 1)) == [1]
        assert store.last_position() == store.events_after(0, 10)[-1].position
        with psycopg.connect(schema.dsn) as idle:
            idle.execute("SELECT pg_current_xact_id()")  # a transaction holding an id, open
            store.record([record(2)])
            # Not before the older transaction ends, whatever else runs on the server.
            assert numbers(store.events_after(0, 10)) == [1]
            idle.rollback()
        assert numbers(read(store, 0, 2)) == [1, 2]
        assert split(store.last_position())[1] == store.events_after(0, 10)[-1].seq
        assert store.last_position(1) == store.events_after(0, 10)[0].position
        assert store.last_position(2) == 0
    finally:
        store.close()


def test_one_node_at_a_time_leads_a_cursor(schema: PgSchema) -> None:
    one = PostgresEventStore.connect(Database(schema.dsn))
    two = PostgresEventStore.connect(Database(schema.dsn))
    try:
        assert one.lead("notify") and one.lead("notify")
        assert not two.lead("notify")
        assert two.lead("other")
        one.close()  # the leader stops (or loses the database): the other takes over
        wait_until_sync(lambda: two.lead("notify"), "the lock to go with the session")
    finally:
        two.close()


def node_config(tmp_path: Path, dsn: str, node: str) -> Config:
    return parse_config(
        {
            "queue": {"dir": str(tmp_path / node), "store": "postgresql", "dsn": dsn, "node": node},
            "relays": {"mem": {"plugin": "memory"}},
            "spool": [{"path": str(tmp_path / "spool"), "relay": "mem"}],
        },
        None,
    )


def dispatched(tracker: Tracker, mid: str = MID) -> None:
    now = time.time()
    tracker.observe(Claimed(message_id=mid, time=now, file="a.eml", spool="/s"))
    tracker.observe(
        Queued(
            message_id=mid,
            time=now,
            sender="app@example.com",
            recipients=("bob@example.net",),
            relay="mem",
            route=("mem",),
            message_id_header="<p1@example.com>",
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
            provider_id="P-1",
            elapsed=0.1,
            age=0.1,
        )
    )


async def test_another_node_reads_the_first_nodes_history(tmp_path: Path, schema: PgSchema) -> None:
    one = await Tracker.open(node_config(tmp_path, schema.dsn, "node-1"))
    two = await Tracker.open(node_config(tmp_path, schema.dsn, "node-2"))
    try:
        assert one.keeper.paused is None and two.keeper.paused is None
        dispatched(one)
        await one.flush()
        found = await two.message(MID)
        assert found is not None and found.status == "dispatched"
        assert [e.status for e in found.events] == ["accepted", "queued", "dispatched"]
        assert [m.id for m in await two.recent()] == [MID]
        assert [m.id for m in await two.recipient("BOB@example.net")] == [MID]
        assert [h.id for h in await two.history("<p1@example.com>")] == [MID]
        # A provider's webhook reaching the second node matches the first node's message.
        event = ProviderEvent(
            Status.BOUNCED, time.time(), "e1", recipient="bob@example.net", provider_id="P-1"
        )
        assert await two.ingest("sendgrid", [event]) == 1
        assert await one.ingest("sendgrid", [event]) == 0  # the same event: recorded once
        assert [m.id for m in await one.failures()] == [MID]
        feed = await two.events_after(0)
        assert [e.status for e in feed] == ["accepted", "queued", "dispatched", "bounced"]
    finally:
        await one.close()
        await two.close()


def mqd(config: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


async def test_mqd_history_and_events_on_any_node(
    tmp_path: Path,
    schema: PgSchema,
    write_config: Callable[[str], Path],
    env: dict[str, str],
) -> None:
    one = await Tracker.open(node_config(tmp_path, schema.dsn, "node-1"))
    try:
        dispatched(one)
        await one.flush()
    finally:
        await one.close()
    # Another node's config: its own queue directory (no SQLite file anywhere), the same DSN.
    config = write_config(
        f"""
        [queue]
        dir = "{tmp_path / "elsewhere"}"
        store = "postgresql"
        dsn = "{schema.dsn}"
        node = "node-2"
        [[spool]]
        path = "{tmp_path / "spool"}"
        [relays.mem]
        plugin = "memory"
        """
    )
    shown = mqd(config, "history", MID, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "dispatched" in shown.stdout and "bob@example.net" in shown.stdout
    events = mqd(config, "events", "-n", "2", "--json", env=env)
    assert events.returncode == 0, events.stderr
    lines = events.stdout.splitlines()
    assert len(lines) == 2 and '"queued"' in lines[0] and '"dispatched"' in lines[1]
    assert '"position"' not in lines[0]
    assert not (tmp_path / "elsewhere" / "tracking.sqlite3").exists()


async def test_a_node_refuses_a_schema_it_does_not_know(tmp_path: Path, schema: PgSchema) -> None:
    with psycopg.connect(schema.dsn, autocommit=True) as conn:
        conn.execute("UPDATE mqd_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(QueueSchemaError, match="newer than this mqd"):
        PostgresEventStore.connect(Database(schema.dsn))
    tracker = await Tracker.open(node_config(tmp_path, schema.dsn, "node-1"))
    try:
        assert tracker.keeper.paused is not None and "newer" in tracker.keeper.paused
        dispatched(tracker)
        await tracker.flush()
        assert len(tracker.keeper.backlog) == 3  # kept, not written: delivery goes on
    finally:
        await tracker.close()


def test_db_upgrade_brings_the_event_store_tables() -> None:
    bare = PgSchema(upgraded=False)
    try:
        with pytest.raises(QueueSchemaError, match="mqd db upgrade"):
            PostgresEventStore.connect(Database(bare.dsn))
        from mqd.queue.postgresql.schema import script

        with psycopg.connect(bare.dsn, autocommit=True) as conn:
            conn.execute(script(0).encode())
        store = PostgresEventStore.connect(Database(bare.dsn))
        try:
            assert store.record([record(1)]) and store.last_position() > 0
        finally:
            store.close()
    finally:
        bare.drop()


def test_tracking_store_sqlite_keeps_sqlite_with_a_postgresql_queue(tmp_path: Path) -> None:
    from mqd.config.tracking import tracking_database
    from mqd.errors import ConfigError

    base = {
        "relays": {"mem": {"plugin": "memory"}},
        "spool": [{"path": str(tmp_path / "spool"), "relay": "mem"}],
    }
    pg = {"dir": str(tmp_path / "q"), "store": "postgresql", "dsn": "postgresql:///x"}
    assert tracking_database(parse_config({**base, "queue": pg}, None)) is not None
    kept = parse_config({**base, "queue": pg, "tracking": {"store": "sqlite"}}, None)
    assert tracking_database(kept) is None
    with pytest.raises(ConfigError, match="needs the queue there too"):
        parse_config(
            {**base, "queue": {"dir": str(tmp_path / "q")}, "tracking": {"store": "postgresql"}},
            None,
        )


async def test_two_nodes_notify_each_event_once_and_hand_over(
    tmp_path: Path, schema: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both nodes write at once; one sends every notification, once; when it stops, the other
    carries on from the cursor."""
    from test_tracking import App, notifier_caught_up, notifier_started

    from mqd.config.options import Secret
    from mqd.config.schema import NotifyConfig
    from mqd.testing import wait_until
    from mqd.tracking import notify as notify_module
    from mqd.tracking.notify import Notifier

    monkeypatch.setattr(notify_module, "IDLE_POLL", 0.05)
    one = await Tracker.open(node_config(tmp_path, schema.dsn, "node-1"))
    two = await Tracker.open(node_config(tmp_path, schema.dsn, "node-2"))
    async with App() as app:
        notify = NotifyConfig(url=app.url, secret=Secret("k"))
        first, second = Notifier(one, notify), Notifier(two, notify)
        closed = False
        try:
            first.start()
            await notifier_started(one)
            second.start()
            for n in range(10):  # both nodes at once, each its own messages
                dispatched(one, f"0190000000aa{n:010d}")
                dispatched(two, f"0190000000bb{n:010d}")
                await asyncio.gather(one.flush(), two.flush())
            total = 60

            async def readable() -> bool:  # once older transactions on the server ended
                return len(await one.events_after(0, 1000)) == total

            await wait_until(readable, "every event below the horizon")
            await wait_until(lambda: len(app.received) >= total, "every notification")
            await notifier_caught_up(one)
            assert second.sent == 0 and first.sent == total
            await first.stop()
            await one.close()  # node-1 goes: its session, and its lead, with it
            closed = True
            for n in range(5):
                dispatched(two, f"0190000000cc{n:010d}")
            await two.flush()
            await wait_until(lambda: len(app.received) >= total + 15, "the rest, from node-2")
            await notifier_caught_up(two)
        finally:
            await first.stop()
            await second.stop()
            if not closed:
                await one.close()
            await two.close()
    seqs = [document["seq"] for document in app.documents()]
    assert len(seqs) == len(set(seqs)) == total + 15  # each once
    assert second.sent == 15


@pytest.mark.parametrize("seed", range(6))
def test_a_batch_writes_what_the_sqlite_store_writes(
    tmp_path: Path, schema: PgSchema, seed: int
) -> None:
    """The same story, in the tracker's batches, leaves the same rows in both stores."""
    import itertools
    import random

    from test_tracking_batches import batches, story, tables

    from mqd.tracking.sqlite import SQLiteStore

    rng = random.Random(seed)
    records = story(rng)
    lite = SQLiteStore(tmp_path / "t.sqlite3")
    lite.record(records)
    expected = tables(lite)
    lite.close()
    store = PostgresEventStore.connect(Database(schema.dsn))
    try:
        for batch in batches(records, rng):
            for _, run in itertools.groupby(batch, key=lambda r: r.event_key is None):
                store.record(list(run))
        with psycopg.connect(schema.dsn) as conn:
            found = {
                "messages": conn.execute("SELECT * FROM mqd_track_message ORDER BY id").fetchall(),
                "recipients": conn.execute(
                    "SELECT * FROM mqd_track_recipient ORDER BY message, address"
                ).fetchall(),
                "events": [
                    (row[0], *row[2:])
                    for row in conn.execute("SELECT * FROM mqd_track_event ORDER BY seq")
                ],
            }
    finally:
        store.close()
    assert found["messages"] == expected["messages"]
    assert found["recipients"] == expected["recipients"]
    assert [row[1:] for row in found["events"]] == [row[1:] for row in expected["events"]]


def test_a_lost_connection_is_replaced(schema: PgSchema) -> None:
    """The server ends the store's session (a restart, a failover): the next calls work on a
    new one, and the cursor's lead, which went with the old session, is taken anew."""
    store = PostgresEventStore.connect(Database(schema.dsn))
    rival = PostgresEventStore.connect(Database(schema.dsn))

    def cut() -> None:
        with psycopg.connect(schema.dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (store._conn.info.backend_pid,))

    try:
        assert store.lead("notify")
        store.record([record(1)])
        cut()
        assert numbers(read(store, 0, 1)) == [1]  # a read: tried again on a new session
        cut()
        assert store.record([record(2)])  # a batch that never reached the server: the same
        assert numbers(read(store, 0, 2)) == [1, 2]
        assert rival.lead("notify")  # the lock went with the first session
        assert not store.lead("notify")
    finally:
        store.close()
        rival.close()


def test_rows_go_to_the_server_as_they_are(schema: PgSchema) -> None:
    """``insert_rows``'s arrays carry any text (quotes, backslashes, braces, commas, other
    scripts), None and a float's every digit unchanged."""
    texts = ['"quoted", {braced}', "back\\slash\\", "ünïcødé ✉ 郵便", "", "NULL", "a\nb\tc"]
    rows = [(text, 1_765_000_000.123456 + i / 7, i, None) for i, text in enumerate(texts)]
    with psycopg.connect(schema.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE odd (reply text, at float8, rank int4, relay text)")
        columns = ("reply", "at", "rank", "relay")
        assert insert_rows(conn, "odd", "o", columns, "", rows) == len(rows)
        found = conn.execute("SELECT reply, at, rank, relay FROM odd ORDER BY rank").fetchall()
    assert found == rows
