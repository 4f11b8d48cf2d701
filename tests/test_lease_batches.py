"""A store whose leases cost per call (``leases_in_batches``) is asked for half as many more
than the free slots; those kept start as the next deliveries end, without asking, and a stop
releases those left. An entry held while its lease is kept is not sent (PostgreSQL)."""

from __future__ import annotations

import asyncio

from pgfixtures import PgSchema
from queue_stores import body_for, new_entry

from mqd.clock import ManualClock
from mqd.daemon.scheduler import Scheduler
from mqd.queue.memory import MemoryStore
from mqd.queue.postgresql.connect import Database
from mqd.queue.postgresql.store import PostgresStore
from mqd.queue.store import EntryState, Incoming, Lease, LeaseLost, QueueStore
from mqd.testing import wait_until


class CountedLeases(MemoryStore):
    leases_in_batches = True

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.asked: list[int] = []

    async def lease(self, limit: int) -> list[Lease]:
        self.asked.append(limit)
        return await super().lease(limit)


class HeldDeliveries:
    """Deliveries that end (completed) when the test lets them."""

    def __init__(self, store: QueueStore) -> None:
        self.store = store
        self.waiting: dict[str, asyncio.Event] = {}

    async def attempt(self, lease: Lease) -> None:
        done = self.waiting[lease.entry.id] = asyncio.Event()
        await done.wait()
        await self.store.complete(lease, lease.entry)

    def end(self, count: int) -> None:
        for entry_id in list(self.waiting)[:count]:
            self.waiting.pop(entry_id).set()


async def _queue(store: QueueStore, clock: ManualClock, count: int) -> None:
    entries = [new_entry(clock) for _ in range(count)]
    await store.accept([Incoming(entry, body_for(entry)) for entry in entries])


async def test_leases_are_taken_ahead_and_released_at_a_stop() -> None:
    clock = ManualClock()
    store = CountedLeases(clock)
    await store.open()
    deliveries = HeldDeliveries(store)
    scheduler = Scheduler(store, deliveries, concurrency=8, clock=clock)  # type: ignore[arg-type]
    await _queue(store, clock, 14)
    running = asyncio.create_task(scheduler.run())
    await wait_until(lambda: len(deliveries.waiting) == 8 and scheduler.asleep, "8 started", 10)
    assert store.asked == [12], "four more than the free slots"

    for _ in range(4):  # the four kept start as deliveries end, without asking
        passes = scheduler.passes
        deliveries.end(1)
        await wait_until(lambda p=passes: scheduler.passes > p and scheduler.asleep, "a pass", 10)
        await wait_until(lambda: len(deliveries.waiting) == 8, "the kept one started", 10)
    assert store.asked == [12]

    deliveries.end(1)  # none kept: asked again, two left due (one started, one kept)
    await wait_until(lambda: len(deliveries.waiting) == 8 and scheduler.asleep, "asked", 10)
    assert store.asked == [12, 5]

    scheduler.stop()
    await asyncio.wait_for(running, 10)
    [kept] = await store.lease(10)  # released at the stop: due again
    assert kept.entry.id not in deliveries.waiting
    deliveries.end(8)
    await store.close()


async def test_new_mail_is_leased_at_once() -> None:
    clock = ManualClock()
    store = CountedLeases(clock)
    await store.open()
    deliveries = HeldDeliveries(store)
    scheduler = Scheduler(store, deliveries, concurrency=8, clock=clock)  # type: ignore[arg-type]
    running = asyncio.create_task(scheduler.run())
    for in_flight in range(1, 9):  # up to the last free slot
        await _queue(store, clock, 1)
        await wait_until(lambda n=in_flight: len(deliveries.waiting) == n, "leased", 10)
    assert store.asked[-1] == 5, "the last free slot and four ahead asked for"
    scheduler.stop()
    deliveries.end(8)
    await asyncio.wait_for(running, 10)
    await store.close()


class MarkedDeliveries(HeldDeliveries):
    """Deliveries that mark their entry dispatching first, as a relay's call would: those whose
    lease is lost there are not sent."""

    def __init__(self, store: QueueStore) -> None:
        super().__init__(store)
        self.sent: list[str] = []
        self.not_sent: list[str] = []

    async def attempt(self, lease: Lease) -> None:
        try:
            await self.store.dispatching(lease)
        except LeaseLost:
            self.not_sent.append(lease.entry.id)
            return
        self.sent.append(lease.entry.id)
        await super().attempt(lease)


async def test_an_entry_held_while_its_lease_is_kept_is_not_sent(schema: PgSchema) -> None:
    clock = ManualClock()
    store = PostgresStore(Database(schema.dsn), node="node-a", clock=clock, pool_size=3)
    await store.open()
    deliveries = MarkedDeliveries(store)
    scheduler = Scheduler(store, deliveries, concurrency=2, clock=clock)  # type: ignore[arg-type]
    await _queue(store, clock, 3)
    running = asyncio.create_task(scheduler.run())
    await wait_until(lambda: len(deliveries.waiting) == 2 and scheduler.asleep, "2 started", 10)
    [kept] = [e.entry.id for e in await store.entries() if e.entry.id not in deliveries.waiting]
    assert await store.hold([kept]) == [kept]  # an administrator, after the lease was taken

    deliveries.end(1)  # the kept lease starts: its mark finds the entry held
    await wait_until(lambda: deliveries.not_sent == [kept], "the kept one tried", 10)
    assert kept not in deliveries.sent
    listed = await store.get(kept)
    assert (listed.state, listed.node) == (EntryState.HELD, None)  # its lease given back

    scheduler.stop()
    deliveries.end(2)
    await asyncio.wait_for(running, 10)
    await store.close()
