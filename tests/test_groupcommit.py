"""Group commit (``mqd.queue.postgresql.groupcommit``) alone: calls that arrive while a write is
in flight go together in the next one, each caller gets its own result or its batch's error, and
a caller cancelled before its write began is left out of it. The store's use of it, on a real
server, is in ``test_pgleases.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from mqd.queue.postgresql.groupcommit import GroupCommit
from mqd.testing import wait_until


class Writer:
    """A write that records its batches, waits for ``go`` before it answers, and raises for a
    batch holding ``poison``."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.go = asyncio.Event()
        self.go.set()
        self.poison: int | None = None

    async def __call__(self, items: Sequence[int]) -> list[str]:
        self.batches.append(list(items))
        await self.go.wait()
        if self.poison in items:
            raise OSError(f"batch with {self.poison} failed")
        return [f"done {i}" for i in items]


async def test_an_idle_call_is_written_at_once_alone():
    writer = Writer()
    group = GroupCommit(writer)
    assert await group.submit(1) == "done 1"
    assert await group.submit(2) == "done 2"
    assert writer.batches == [[1], [2]]


async def test_calls_that_arrive_during_a_write_go_together_in_the_next():
    writer = Writer()
    writer.go.clear()
    group = GroupCommit(writer)
    first = asyncio.create_task(group.submit(1))
    await wait_until(lambda: writer.batches == [[1]], "the first write")
    later = [asyncio.create_task(group.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)  # they are queued behind the write in flight
    writer.go.set()
    assert await first == "done 1"
    assert await asyncio.gather(*later) == ["done 2", "done 3", "done 4"]
    assert writer.batches == [[1], [2, 3, 4]]
    assert (group.batches, group.items) == (2, 4)


async def test_a_failed_write_fails_each_caller_of_its_batch_and_no_other():
    writer = Writer()
    writer.go.clear()
    writer.poison = 3
    group = GroupCommit(writer)
    first = asyncio.create_task(group.submit(1))
    await wait_until(lambda: len(writer.batches) == 1, "the first write")
    doomed = [asyncio.create_task(group.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0)
    writer.go.set()
    assert await first == "done 1"
    for task in doomed:
        with pytest.raises(OSError, match="batch with 3 failed"):
            await task
    assert await group.submit(5) == "done 5"  # the next batch is written as usual
    assert writer.batches == [[1], [2, 3], [5]]


async def test_a_caller_cancelled_before_its_write_began_is_left_out():
    writer = Writer()
    writer.go.clear()
    group = GroupCommit(writer)
    first = asyncio.create_task(group.submit(1))
    await wait_until(lambda: writer.batches == [[1]], "the first write")
    cancelled = asyncio.create_task(group.submit(2))
    kept = asyncio.create_task(group.submit(3))
    await asyncio.sleep(0)
    cancelled.cancel()
    writer.go.set()
    assert await first == "done 1" and await kept == "done 3"
    assert cancelled.cancelled()
    assert writer.batches == [[1], [3]]


async def test_close_waits_for_the_write_in_flight():
    writer = Writer()
    writer.go.clear()
    group = GroupCommit(writer)
    call = asyncio.create_task(group.submit(1))
    await wait_until(lambda: writer.batches == [[1]], "the first write")
    closing = asyncio.create_task(group.close())
    await asyncio.sleep(0)
    assert not closing.done()
    writer.go.set()
    await closing
    assert call.done() and call.result() == "done 1"
