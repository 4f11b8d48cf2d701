"""A store whose leases cost per call (``leases_in_batches``) is asked for larger batches while
the queue has a backlog, and at once for new mail when it has none."""

from __future__ import annotations

import asyncio

from queue_stores import body_for, new_entry

from mqd.clock import ManualClock
from mqd.daemon.scheduler import Scheduler
from mqd.queue.memory import MemoryStore
from mqd.queue.store import Incoming, Lease
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

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.waiting: dict[str, asyncio.Event] = {}

    async def attempt(self, lease: Lease) -> None:
        done = self.waiting[lease.entry.id] = asyncio.Event()
        await done.wait()
        await self.store.complete(lease, lease.entry)

    def end(self, count: int) -> None:
        for entry_id in list(self.waiting)[:count]:
            self.waiting.pop(entry_id).set()


async def _queue(store: MemoryStore, clock: ManualClock, count: int) -> None:
    entries = [new_entry(clock) for _ in range(count)]
    await store.accept([Incoming(entry, body_for(entry)) for entry in entries])


async def test_a_backlog_is_leased_in_batches_and_new_mail_at_once() -> None:
    clock = ManualClock()
    store = CountedLeases(clock)
    await store.open()
    deliveries = HeldDeliveries(store)
    scheduler = Scheduler(store, deliveries, concurrency=8, clock=clock)  # type: ignore[arg-type]
    await _queue(store, clock, 12)
    running = asyncio.create_task(scheduler.run())
    await wait_until(lambda: len(deliveries.waiting) == 8 and scheduler.asleep, "8 leased", 10)
    assert store.asked == [8]

    passes = scheduler.passes
    deliveries.end(1)  # one free slot of 8, a backlog: not worth a call
    await wait_until(lambda: scheduler.passes > passes and scheduler.asleep, "a pass", 10)
    assert store.asked == [8], "a lease for one slot while the queue has a backlog"

    deliveries.end(1)  # two free: a quarter of the slots
    await wait_until(lambda: len(deliveries.waiting) == 8, "two more leased", 10)
    assert store.asked == [8, 2]

    deliveries.end(4)  # four free, two left due: a short lease, the backlog is gone
    await wait_until(lambda: len(deliveries.waiting) == 6 and scheduler.asleep, "the rest", 10)
    assert store.asked == [8, 2, 4]

    for in_flight in (7, 8):  # new mail is leased at once, even for the last free slot
        await _queue(store, clock, 1)
        await wait_until(lambda n=in_flight: len(deliveries.waiting) == n, "new mail leased", 10)
    assert store.asked == [8, 2, 4, 2, 1]

    scheduler.stop()
    deliveries.end(8)
    await asyncio.wait_for(running, 10)
    await store.close()
