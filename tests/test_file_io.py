"""mqd.queue.file.io's thread hops, on real threads: ``spread`` (a batch over several threads,
then one step after all of them, one call back to the loop) gives what running the chunks one
after the other gives; ``Grouped`` answers each caller with its own result or exception."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from mqd.queue.file.io import Grouped, spread


@pytest.fixture
def threads() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(4)
    yield pool
    pool.shutdown(wait=True)


def _square_all(chunk: list[int]) -> list[int]:
    return [n * n for n in chunk]


def _flatten(parts: list[list[int]]) -> list[int]:
    return [n for part in parts for n in part]


@pytest.mark.parametrize("size", [1, 2, 3, 7])
async def test_spread_equals_the_chunks_one_after_the_other(
    threads: ThreadPoolExecutor, size: int
) -> None:
    numbers = list(range(20))
    chunks = [numbers[at : at + size] for at in range(0, len(numbers), size)]
    one_by_one = _flatten([_square_all(chunk) for chunk in chunks])
    assert await spread(threads, chunks, _square_all, _flatten) == one_by_one


async def test_spread_finishes_once_after_every_chunk_in_a_worker_thread(
    threads: ThreadPoolExecutor,
) -> None:
    done: list[int] = []
    finishing: list[tuple[list[int], bool]] = []
    release = threading.Event()

    def work(chunk: int) -> int:
        if chunk == 0:
            release.wait(10)  # the first chunk is the last to end
        done.append(chunk)
        return chunk

    def finish(parts: list[int]) -> str:
        finishing.append((sorted(done), threading.current_thread() is threading.main_thread()))
        return "synced"

    result = asyncio.ensure_future(spread(threads, [0, 1, 2], work, finish))
    await asyncio.sleep(0)
    assert not result.done()
    release.set()
    assert await result == "synced"
    assert finishing == [([0, 1, 2], False)]


async def test_spread_raises_a_chunks_exception_and_skips_the_finish(
    threads: ThreadPoolExecutor,
) -> None:
    finished: list[object] = []

    def work(chunk: int) -> int:
        if chunk == 1:
            raise OSError("disk gone")
        return chunk

    with pytest.raises(OSError, match="disk gone"):
        await spread(threads, [0, 1, 2], work, finished.append)
    assert finished == []


async def test_grouped_answers_each_caller_with_its_own_result(
    threads: ThreadPoolExecutor,
) -> None:
    groups: list[list[int]] = []

    def work(items: list[int]) -> list[int | BaseException]:
        groups.append(items)
        return [ValueError(n) if n < 0 else n * 10 for n in items]

    grouped: Grouped[int, int] = Grouped(work, lambda: threads)
    results = await asyncio.gather(*(grouped.run(n) for n in (1, -2, 3)), return_exceptions=True)
    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], ValueError)
    assert groups == [[1, -2, 3]]  # one hop for the callers of one turn


async def test_grouped_callers_get_the_failure_of_threads_that_are_gone() -> None:
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    grouped: Grouped[int, int] = Grouped(lambda items: list(items), lambda: pool)
    with pytest.raises(RuntimeError):
        await grouped.run(1)
