"""The PostgreSQL store beyond the contract: several nodes on one queue (leases that expire and
are taken over, fencing, the dispatching mark, delivered recipients kept past a lost lease),
the wake-up, the schema's versions, and the database out of reach.

Each test has a schema of its own (tests/pgfixtures.py); nodes are stores in one process with
one ManualClock, so a lease expires when the test moves the clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import psycopg
import pytest
from pgfixtures import PgSchema
from queue_stores import body_for, new_entry

from mqd.clock import ManualClock
from mqd.errors import QueueUnavailableError
from mqd.queue.entry import RcptStatus
from mqd.queue.failed import FailureRecord
from mqd.queue.postgresql.connect import Database, redacted
from mqd.queue.postgresql.failed import PgFailedFolder
from mqd.queue.postgresql.schema import MIGRATIONS, SCHEMA_VERSION, SchemaError, script, upgrade
from mqd.queue.postgresql.store import LEASE_TIME, PostgresStore
from mqd.queue.store import (
    Bounce,
    EntryState,
    Handed,
    HandoverKey,
    Incoming,
    LeaseLost,
    QueueStore,
    Refused,
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def nodes(schema: PgSchema, clock: ManualClock) -> AsyncIterator[list[PostgresStore]]:
    """Two nodes on the same queue."""
    stores = [
        PostgresStore(Database(schema.dsn), node=name, clock=clock, pool_size=3)
        for name in ("node-a", "node-b")
    ]
    for store in stores:
        await store.open()
    yield stores
    for store in stores:
        await store.close()


async def accept(store: QueueStore, clock: ManualClock, count: int = 1) -> list[str]:
    entries = [new_entry(clock) for _ in range(count)]
    await store.accept([Incoming(e, body_for(e)) for e in entries])
    return [e.id for e in entries]


async def test_a_dead_nodes_lease_expires_and_another_node_takes_the_entry(nodes, clock):
    a, b = nodes
    [entry_id] = await accept(a, clock)
    [lease] = await a.lease(10)
    await a.dispatching(lease)  # node a dies while sending
    assert await b.lease(10) == []  # its lease is live: not given twice
    listed = await b.get(entry_id)
    assert listed.state is EntryState.ACTIVE and listed.node == "node-a"

    clock.advance(LEASE_TIME + 1)
    [taken] = await b.lease(10)
    assert taken.entry.id == entry_id and taken.token > lease.token
    assert b.redispatched == 1 and (await b.counts()).redispatched == 1
    with pytest.raises(LeaseLost):  # node a comes back: fenced out
        await a.save(lease, lease.entry)
    with pytest.raises(LeaseLost):
        await a.dispatching(lease)
    await b.complete(taken, taken.entry)
    assert await a.entries() == []


async def test_renewed_leases_do_not_expire(nodes, clock):
    a, b = nodes
    await accept(a, clock, 3)
    leases = await a.lease(10)
    for _ in range(3):
        clock.advance(LEASE_TIME * 0.8)
        await a.renew(leases)
        assert await b.lease(10) == []
    clock.advance(LEASE_TIME + 1)
    assert len(await b.lease(10)) == 3


async def test_recipients_delivered_by_a_holder_that_lost_its_lease_are_never_sent_again(
    nodes, clock
):
    a, b = nodes
    [entry_id] = await accept(a, clock)
    [lease] = await a.lease(10)
    await a.dispatching(lease)
    clock.advance(LEASE_TIME + 1)
    [taken] = await b.lease(10)  # node a was slow, not dead: b took it over
    await b.release(taken)
    entry = lease.entry
    entry.recipients[0].status = RcptStatus.DELIVERED  # a's relay took alice, then a saves
    entry.recipients[0].reply = "250 2.0.0 OK"
    with pytest.raises(LeaseLost):
        await a.save(lease, entry)
    [again] = await b.lease(10)
    assert again.entry.id == entry_id
    assert [r.address for r in again.entry.pending] == ["bob@example.net"]
    assert again.entry.recipients[0].reply == "250 2.0.0 OK"


async def test_two_nodes_leasing_at_once_never_share_an_entry(nodes, clock):
    a, b = nodes
    ids = await accept(a, clock, 40)
    taken: list[str] = []
    while True:
        got = await asyncio.gather(a.lease(7), b.lease(7))
        batch = [lease.entry.id for leases in got for lease in leases]
        if not batch:
            break
        taken += batch
    assert sorted(taken) == sorted(ids)  # each once


async def test_an_administrators_hold_on_another_nodes_lease_applies_at_its_save(nodes, clock):
    a, b = nodes
    [entry_id] = await accept(a, clock)
    [lease] = await a.lease(10)
    assert await b.hold([entry_id]) == [entry_id]
    lease.entry.attempts += 1
    lease.entry.next_attempt_at = clock.time() + 60
    await a.save(lease, lease.entry)
    assert (await b.get(entry_id)).state is EntryState.HELD
    clock.advance(120)
    assert await a.lease(10) == [] and await b.lease(10) == []


async def test_a_delete_on_another_node_revokes_the_lease(nodes, clock):
    a, b = nodes
    [entry_id] = await accept(a, clock)
    [lease] = await a.lease(10)
    [gone] = await b.delete([entry_id])
    assert gone.id == entry_id
    with pytest.raises(LeaseLost):
        await a.dispatching(lease)


async def test_accepting_again_after_delivery_sends_nothing_twice(nodes, clock):
    a, _ = nodes
    entry = new_entry(clock)
    await a.accept([Incoming(entry, body_for(entry))])
    [lease] = await a.lease(10)
    await a.complete(lease, lease.entry)
    # A crash after the commit, before intake removed the claimed file: it is accepted again.
    await a.accept([Incoming(entry, body_for(entry))])
    assert await a.entries() == [] and await a.lease(10) == []


async def test_a_bounce_is_queued_once_whatever_saves_it_again(nodes, clock):
    a, _ = nodes
    [entry_id] = await accept(a, clock)
    dsn = new_entry(clock)
    dsn.id = f"{entry_id}b0"
    for _ in range(2):
        [lease] = await a.lease_ids([entry_id])
        await a.save(lease, lease.entry, bounce=Bounce(dsn, b"Subject: bounce\r\n\r\nx\r\n"))
    assert sorted(item.entry.id for item in await a.entries()) == sorted([entry_id, dsn.id])


async def test_a_batch_accepted_on_one_node_wakes_the_other(nodes, clock):
    a, b = nodes
    woken = asyncio.Event()
    b.subscribe(woken.set)
    await b._stop_poller()  # no polling: only the NOTIFY can wake it
    woken.clear()
    await accept(a, clock)
    await asyncio.wait_for(woken.wait(), 2.0)


async def test_polling_alone_wakes_a_node_that_cannot_listen(nodes, clock):
    a, b = nodes
    await b.session.close()  # as through PgBouncer in transaction mode: no LISTEN
    woken = asyncio.Event()
    b.subscribe(woken.set)
    await accept(a, clock)
    await asyncio.wait_for(woken.wait(), 2.0)
    assert len(await b.lease(10)) == 1


async def test_fail_moves_the_message_to_a_failed_folder_every_node_sees(nodes, clock, schema):
    a, b = nodes
    [entry_id] = await accept(a, clock)
    [lease] = await a.lease(10)
    await a.fail(lease, lease.entry, FailureRecord("delivery", "550 no"))
    folder = PgFailedFolder(Database(schema.dsn))  # a command with no store open
    [message] = await folder.find([entry_id[:14]])
    assert message.reason == "550 no" and await folder.count() == 1
    assert await folder.read(message) == body_for(lease.entry)
    async with folder.changing():
        await folder.remove(message)
    assert await b.failed.messages() == []
    await a.refuse([Refused("old", FailureRecord("policy", "no"), b"x")])
    clock.advance(60)
    await a.refuse([Refused("new", FailureRecord("policy", "no"), b"x")])
    assert await folder.prune(clock.time() - 30) == ["old"]
    assert [m.id for m in await folder.messages()] == ["new"]


# -- the schema and the database ------------------------------------------------------------------


async def test_a_node_refuses_a_database_without_the_schema_or_with_a_newer_one(clock):
    bare = PgSchema(upgraded=False)
    try:
        store = PostgresStore(Database(bare.dsn), node="n", clock=clock)
        with pytest.raises(SchemaError, match="mqd db upgrade"):
            await store.open()
        conn = await psycopg.AsyncConnection.connect(bare.dsn)
        assert await upgrade(conn) == (0, SCHEMA_VERSION)
        assert await upgrade(conn) == (SCHEMA_VERSION, SCHEMA_VERSION)  # nothing to do
        await conn.execute("UPDATE mqd_meta SET value = '99' WHERE key = 'schema_version'")
        await conn.commit()
        await conn.close()
        with pytest.raises(SchemaError, match="newer than this mqd"):
            await store.open()
    finally:
        bare.drop()


async def test_the_upgrade_to_4_carries_the_nodes_idempotency_keys_over_to_the_fleet(clock):
    """Schema 4 keeps hand-over keys in ``mqd_handover``; the submit API's keys that nodes kept
    in their small state (``submit-keys.<scope>.<shard>``) are carried over, then dropped."""
    bare = PgSchema(upgraded=False)
    try:
        with psycopg.connect(bare.dsn, autocommit=True) as conn:
            for migration in MIGRATIONS[:3]:
                conn.execute(migration.encode())
            conn.execute(b"INSERT INTO mqd_meta VALUES ('schema_version', '3')")
            record = [clock.time() + 600, "fp", "first-id", "<m@x>"]
            blobs = [
                ("node-a", "submit-keys.abc.3", json.dumps({"k1": record}).encode()),
                ("node-b", "submit-keys.abc.f", b"{damaged"),  # left out, with a notice
                ("node-a", "quota", b"{}"),
            ]
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO mqd_state VALUES (%s, %s, %s)", blobs)
            conn.execute(script(3).encode())
            assert conn.execute("SELECT name FROM mqd_state").fetchall() == [("quota",)]
        store = PostgresStore(Database(bare.dsn), node="node-c", clock=clock)
        await store.open()
        try:
            entry = new_entry(clock)
            key = HandoverKey("submit.abc", "k1", clock.time() + 60)
            repeats = await store.accept([Incoming(entry, body_for(entry), key=key)])
            assert repeats == {entry.id: Handed("first-id", "fp <m@x>", replayed=True)}
        finally:
            await store.close()
    finally:
        bare.drop()


def test_the_printed_script_makes_the_same_schema():
    bare = PgSchema(upgraded=False)
    try:
        with psycopg.connect(bare.dsn, autocommit=True) as conn:
            conn.execute(script().encode())
            row = conn.execute("SELECT value FROM mqd_meta").fetchone()
            assert row == (str(SCHEMA_VERSION),)
            options = conn.execute(
                "SELECT reloptions FROM pg_class WHERE relname = 'mqd_entry' "
                "AND relnamespace = current_schema()::regnamespace"
            ).fetchone()
            assert options is not None
            assert "autovacuum_vacuum_scale_factor=0.01" in options[0]
    finally:
        bare.drop()


async def test_an_unreachable_database_is_named_with_its_password_hidden(clock):
    store = PostgresStore(
        Database("postgresql://mqd:s3cret@127.0.0.1:1/mqd"), node="n", clock=clock
    )
    with pytest.raises(QueueUnavailableError) as caught:
        await store.open()
    assert "postgresql://mqd:****@127.0.0.1:1/mqd" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_redacted_hides_passwords_in_every_form():
    assert redacted("postgresql://u:pw@h/db") == "postgresql://u:****@h/db"
    assert redacted("postgresql://h/db?password=pw&x=1") == "postgresql://h/db?password=****&x=1"
    assert "pw" not in redacted("host=h password=pw dbname=d")
    assert redacted("postgresql://u@h/db") == "postgresql://u@h/db"
