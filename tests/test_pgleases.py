"""The PostgreSQL store's lease holder on a real server: bodies come with the lease (no read of
their own) and are let go of when the lease ends; concurrent dispatching marks and completions
go to the database together (one statement), each caller getting its own outcome; a grouped
write whose transaction fails fails each of its callers and writes nothing.

Nodes are stores in one process with one ManualClock (as in ``test_pgstore.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import psycopg
import pytest
from pgfixtures import PgSchema
from queue_stores import body_for, new_entry

from mqd.clock import ManualClock
from mqd.errors import QueueError
from mqd.queue.entry import RcptStatus
from mqd.queue.postgresql import leases
from mqd.queue.postgresql.connect import Database
from mqd.queue.postgresql.store import LEASE_TIME, PostgresStore
from mqd.queue.store import EntryState, Incoming, Lease, LeaseLost


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def nodes(schema: PgSchema, clock: ManualClock) -> AsyncIterator[list[PostgresStore]]:
    stores = [
        PostgresStore(Database(schema.dsn), node=name, clock=clock, pool_size=3)
        for name in ("node-a", "node-b")
    ]
    for store in stores:
        await store.open()
    yield stores
    for store in stores:
        await store.close()


async def accept(store: PostgresStore, clock: ManualClock, count: int) -> dict[str, bytes]:
    entries = [new_entry(clock) for _ in range(count)]
    await store.accept([Incoming(e, body_for(e)) for e in entries])
    return {e.id: body_for(e) for e in entries}


def sql(schema: PgSchema, statement: str) -> list[tuple[object, ...]]:
    with psycopg.connect(schema.dsn, autocommit=True) as conn:
        cursor = conn.execute(statement.encode())
        return cursor.fetchall() if cursor.description else []


async def test_bodies_come_with_the_lease_and_go_when_it_ends(nodes, clock, schema):
    a, _ = nodes
    bodies = await accept(a, clock, 3)
    leases = await a.lease(10)
    assert a.holder.kept_bodies == 3
    sql(schema, "DELETE FROM mqd_body")  # a read of its own now would find nothing
    first, second, third = leases
    assert await a.body(first.entry) == bodies[first.entry.id]
    assert a.holder.kept_bodies == 2  # read once: the delivery keeps it from there
    await a.release(second)  # a lease that ends unread lets go of its body
    await a.complete(third, third.entry)
    assert a.holder.kept_bodies == 0
    with pytest.raises(QueueError, match="missing from the queue database"):
        await a.body(second.entry)  # not kept any more: read, and missing


async def write_each(calls: list[Awaitable[None]]) -> list[BaseException | None]:
    """Run ``calls`` at once; each one's error, or None."""
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def test_grouped_writes_give_each_caller_its_own_outcome(nodes, clock, schema):
    a, b = nodes
    await accept(a, clock, 4)
    kept0, deleted, kept2, taken = await a.lease(10)
    await b.delete([deleted.entry.id])  # an administrator revokes one lease

    marks = await write_each([a.dispatching(lease) for lease in (kept0, deleted, kept2, taken)])
    assert [type(m) for m in marks] == [type(None), LeaseLost, type(None), type(None)]
    assert (a.holder.steps.batches, a.holder.steps.items) == (1, 4)  # one statement for four

    # a keeps two leases alive; the fourth expires and node b takes it over
    clock.advance(LEASE_TIME * 0.8)
    await a.renew([kept0, kept2])
    clock.advance(LEASE_TIME * 0.3)
    [taken_by_b] = await b.lease(10)
    assert taken_by_b.entry.id == taken.entry.id
    late = taken.entry
    late.recipients[0].status = RcptStatus.DELIVERED  # a's relay took alice meanwhile
    late.recipients[0].reply = "250 2.0.0 OK"

    done = await write_each([a.complete(lease, lease.entry) for lease in (kept0, kept2, taken)])
    assert [type(d) for d in done] == [type(None), type(None), LeaseLost]
    assert (a.holder.steps.batches, a.holder.steps.items) == (2, 7)
    assert sorted(r[0] for r in sql(schema, "SELECT id FROM mqd_entry")) == [taken.entry.id]
    assert sql(schema, "SELECT count(*) FROM mqd_body") == [(1,)]  # the completed ones' went

    await b.release(taken_by_b)  # whoever holds it next never sends to alice again
    [again] = await b.lease(10)
    assert [r.status for r in again.entry.recipients] == [RcptStatus.DELIVERED, RcptStatus.PENDING]


async def test_marks_and_completions_that_meet_go_in_one_statement(nodes, clock, schema):
    a, b = nodes
    await accept(a, clock, 4)
    sent, marked, revoked, other = await a.lease(10)
    assert await write_each([a.dispatching(lease) for lease in (sent, other)]) == [None, None]
    await b.delete([revoked.entry.id])  # an administrator revokes one lease meanwhile
    before = a.holder.steps.batches

    outcomes = await write_each(
        [
            a.complete(sent, sent.entry),
            a.dispatching(marked),
            a.dispatching(revoked),
            a.complete(other, other.entry),
        ]
    )
    assert [type(o) for o in outcomes] == [type(None), type(None), LeaseLost, type(None)]
    assert a.holder.steps.batches == before + 1  # the four in one transaction
    assert sql(schema, "SELECT id, dispatching FROM mqd_entry") == [(marked.entry.id, True)]
    assert sql(schema, "SELECT id FROM mqd_body") == [(marked.entry.id,)]  # the others' went


async def test_an_entry_held_while_its_lease_waits_is_not_marked_and_given_back(
    nodes, clock, schema
):
    """A lease kept ahead (taken, not yet marked) of an entry an administrator then holds: its
    mark fails (not sent) and gives the lease back; the others' marks in the statement hold."""
    a, b = nodes
    await accept(a, clock, 3)
    first, kept, other = await a.lease(10)
    assert await b.hold([kept.entry.id]) == [kept.entry.id]  # from any node

    outcomes = await write_each([a.dispatching(lease) for lease in (first, kept, other)])
    assert [type(o) for o in outcomes] == [type(None), LeaseLost, type(None)]
    rows = sql(schema, "SELECT id, held, owner, dispatching FROM mqd_entry ORDER BY id")
    assert {row[0]: row[1:] for row in rows} == {
        first.entry.id: (False, "node-a", True),
        kept.entry.id: (True, None, False),  # given back, held
        other.entry.id: (False, "node-a", True),
    }
    assert await a.lease(10) == []  # held: not due
    assert await b.unhold([kept.entry.id]) == [kept.entry.id]
    [again] = await b.lease(10)  # due again at once, for any node (no lease to expire)
    assert again.entry.id == kept.entry.id


def inject_failure(schema: PgSchema, when: str) -> None:
    """A trigger that makes any transaction doing ``when`` to mqd_entry fail."""
    sql(
        schema,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$",
    )
    sql(
        schema,
        f"CREATE TRIGGER refuse BEFORE {when} ON mqd_entry FOR EACH ROW EXECUTE FUNCTION refuse()",
    )


def heal(schema: PgSchema) -> None:
    sql(schema, "DROP TRIGGER refuse ON mqd_entry")
    sql(schema, "DROP FUNCTION refuse()")


async def test_a_grouped_write_whose_transaction_fails_fails_each_caller(nodes, clock, schema):
    a, b = nodes
    await accept(a, clock, 3)
    leases: list[Lease] = await a.lease(10)

    inject_failure(schema, "UPDATE")
    marks = await write_each([a.dispatching(lease) for lease in leases])
    assert all(isinstance(m, QueueError) and not isinstance(m, LeaseLost) for m in marks), marks
    assert "injected failure" in str(marks[0])
    assert a.holder.steps.batches == 1
    assert sql(schema, "SELECT count(*) FROM mqd_entry WHERE dispatching") == [(0,)]
    heal(schema)
    assert await write_each([a.dispatching(lease) for lease in leases]) == [None] * 3

    inject_failure(schema, "DELETE")
    done = await write_each([a.complete(lease, lease.entry) for lease in leases])
    assert all(isinstance(d, QueueError) and not isinstance(d, LeaseLost) for d in done), done
    assert sql(schema, "SELECT count(*) FROM mqd_entry") == [(3,)]  # nothing left the queue
    assert sql(schema, "SELECT count(*) FROM mqd_body") == [(3,)]
    heal(schema)
    await a.give_back(leases)  # as the scheduler does with outcomes it could not write
    assert a.redispatched == 3  # they were marked: they may have gone out
    assert len(await b.lease(10)) == 3


async def test_a_grouped_write_that_deadlocked_is_written_again(nodes, clock, schema):
    a, _ = nodes
    await accept(a, clock, 2)
    leases = await a.lease(10)
    # The first try fails as a deadlock with an administrator's locks would (the sequence is
    # not rolled back with it); the whole group is written again.
    sql(schema, "CREATE SEQUENCE tries")
    sql(
        schema,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF nextval('tries') = 1 THEN RAISE EXCEPTION 'deadlock' USING ERRCODE = '40P01'; "
        "END IF; RETURN NEW; END $$",
    )
    sql(
        schema,
        "CREATE TRIGGER refuse BEFORE UPDATE ON mqd_entry FOR EACH ROW EXECUTE FUNCTION refuse()",
    )
    assert await write_each([a.dispatching(lease) for lease in leases]) == [None, None]
    assert a.holder.steps.batches == 1
    assert sql(schema, "SELECT count(*) FROM mqd_entry WHERE dispatching") == [(2,)]
    assert sql(schema, "SELECT last_value FROM tries") == [(3,)]  # one failed try, then 2 rows


async def test_grouped_saves_apply_holds_and_retries_and_fence_each_lease(nodes, clock, schema):
    a, b = nodes
    await accept(a, clock, 3)
    retried, held, deleted = await a.lease(10)
    await b.retry([retried.entry.id])  # asked while a holds them: applied at the save
    await b.hold([held.entry.id])
    await b.delete([deleted.entry.id])
    for lease in (retried, held, deleted):
        lease.entry.attempts = 1
        lease.entry.next_attempt_at = clock.time() + 600
    saved = await write_each([a.save(lease, lease.entry) for lease in (retried, held, deleted)])
    assert [type(s) for s in saved] == [type(None), type(None), LeaseLost]
    assert (a.holder.saves.batches, a.holder.saves.items) == (1, 3)
    [again] = await b.lease(10)  # the retried one is due now, the held one is held
    assert again.entry.id == retried.entry.id and again.entry.attempts == 1
    listed = await b.get(held.entry.id)
    assert listed.state is EntryState.HELD and listed.entry.attempts == 1
    assert listed.entry.next_attempt_at == clock.time() + 600


async def test_bodies_never_read_are_let_go_of_past_a_bound(nodes, clock, monkeypatch):
    monkeypatch.setattr(leases, "MAX_KEPT", 1)
    a, _ = nodes
    bodies = await accept(a, clock, 4)
    taken = [lease for _ in range(4) for lease in await a.lease(1)]  # none of them read
    assert a.holder.kept_bodies == 2  # twice a batch of one: the oldest went
    for lease in taken:  # read from the database, those let go of
        assert await a.body(lease.entry) == bodies[lease.entry.id]


async def test_the_next_due_counts_other_nodes_leases_from_their_expiry(nodes, clock, schema):
    a, b = nodes
    await accept(a, clock, 1)
    await a.lease(10)
    start = clock.time()
    assert await b.next_due() == start + LEASE_TIME  # a's lease, once it expires
    assert await a.next_due() is None  # its own lease is not due for a
    free = new_entry(clock)
    free.next_attempt_at = start + 2 * LEASE_TIME
    await b.accept([Incoming(free, body_for(free))])
    assert await b.next_due() == start + LEASE_TIME  # the lease expires before the free one
    assert await a.next_due() == start + 2 * LEASE_TIME
    sql(schema, f"UPDATE mqd_entry SET next_attempt_at = {start + 10} WHERE id = '{free.id}'")
    assert await b.next_due() == start + 10  # the free one is due before the lease expires
