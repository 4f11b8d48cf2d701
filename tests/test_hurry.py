"""A second stop request cancels the deliveries in flight, even one that lost its first
cancellation (Python 3.11's ``wait_for`` drops a cancellation that lands as its inner await
completes; aiosmtplib awaits through it)."""

from __future__ import annotations

import asyncio
from typing import Any

from queue_stores import body_for, new_entry

from mqd.clock import ManualClock
from mqd.daemon.scheduler import Scheduler
from mqd.queue.memory import MemoryStore
from mqd.queue.store import Incoming
from mqd.testing import wait_until


class LosesItsFirstCancel:
    """A deliverer whose attempt swallows the first cancellation, then waits as for a slow
    server that never answers."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancels = 0

    async def attempt(self, lease: Any) -> None:
        self.started.set()
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancels += 1
                if self.cancels == 1:
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    continue  # lost, as in wait_for's race
                raise


async def test_a_delivery_that_lost_its_cancellation_is_cancelled_again() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    await store.open()
    entry = new_entry(clock)
    await store.accept([Incoming(entry, body_for(entry))])
    deliverer = LosesItsFirstCancel()
    scheduler = Scheduler(store, deliverer, concurrency=1, clock=clock)  # type: ignore[arg-type]
    running = asyncio.create_task(scheduler.run())
    await asyncio.wait_for(deliverer.started.wait(), 10)
    [task] = scheduler.tasks()
    scheduler.stop()
    scheduler.hurry()
    await wait_until(task.done, "the delivery to end", 10)
    assert deliverer.cancels == 2, "cancelled again after losing the first"
    await asyncio.wait_for(running, 10)
    await store.close()
