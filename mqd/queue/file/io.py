"""Blocking file work for many callers in one worker-thread hop (the file store's hot path).

A thread hop costs the event loop ~80 us, more than reading a small body: ``Grouped`` runs the
operations asked for while one hop is under way together in the next one, and each caller still
returns only once its own operation is done (durably, for a save). Grouping saves CPU and fsyncs,
never a guarantee.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["BodyCache", "Grouped", "each", "read_body", "spread"]

#: Bodies up to this size are kept in memory after intake for their first delivery...
KEEP_BODY_MAX = 64 * 1024
#: ...up to this many bytes in all (the oldest are dropped first).
KEEP_BODIES_BYTES = 4 * 1024 * 1024

T = TypeVar("T")
R = TypeVar("R")
P = TypeVar("P")


class Grouped(Generic[T, R]):
    """Runs a blocking operation for many callers in one worker-thread hop.

    ``await run(item)`` queues ``item``; the first caller schedules a hop, at the end of this
    event-loop turn or ``gather`` seconds later, and callers that come while one is running
    wait for the next. ``work`` gets the items and returns one result or exception per item,
    in order; each caller gets its own. The hops run in ``threads()``' threads, and come back
    by one call to the loop (``run_in_executor``'s pair of chained futures costs the loop
    ~40% more a hop).
    """

    def __init__(
        self,
        work: Callable[[list[T]], list[R | BaseException]],
        threads: Callable[[], Executor],
        gather: float = 0.0,
    ) -> None:
        self._work = work
        self._threads = threads
        self._gather = gather
        self._queued: list[tuple[T, asyncio.Future[R]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = False

    async def run(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests, embedding): nothing of the old one runs
            self._loop, self._queued, self._busy = loop, [], False
        future: asyncio.Future[R] = loop.create_future()
        self._queued.append((item, future))
        if not self._busy:
            self._busy = True
            if self._gather:
                loop.call_later(self._gather, self._start)
            else:
                loop.call_soon(self._start)  # after the other tasks of this turn have queued theirs
        return await future

    def _start(self) -> None:
        group, self._queued = self._queued, []
        loop = self._loop
        if not group or loop is None:
            self._busy = False
            return
        items = [item for item, _ in group]

        def hop() -> None:
            try:
                results = self._work(items)
            except BaseException as exc:  # every caller of the group gets it
                results = [exc] * len(group)
            loop.call_soon_threadsafe(self._finish, loop, group, results)

        try:
            self._threads().submit(hop)
        except RuntimeError as exc:  # the threads shut down (the store closed)
            self._finish(loop, group, [exc] * len(group))

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        group: list[tuple[T, asyncio.Future[R]]],
        results: list[R | BaseException],
    ) -> None:
        if loop is not self._loop:  # (the loop changed meanwhile: its callers are gone)
            return
        for (_, future), result in zip(group, results, strict=True):
            if future.done():  # its caller was cancelled; the operation ran all the same
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        self._start()


async def spread(
    executor: Executor,
    chunks: Sequence[T],
    work: Callable[[T], P],
    finish: Callable[[list[P]], R],
) -> R:
    """``work`` on each of ``chunks`` in ``executor``'s threads at once, then ``finish`` on
    their results (in order) in the thread of the last one done: its result, or the first
    exception raised. The event loop is woken once for all, and ``finish`` starts as soon as the
    chunks are done rather than after a hop back to the loop and another out (each ~80 us of
    the loop's CPU, and the wait for the loop's next turn)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[R] = loop.create_future()
    parts: list[Any] = [None] * len(chunks)
    failures: list[BaseException] = []
    left = [len(chunks)]
    lock = threading.Lock()

    def run(index: int, chunk: T) -> None:
        try:
            parts[index] = work(chunk)
        except BaseException as exc:  # handed to the awaiting task, as run_in_executor does
            failures.append(exc)
        with lock:
            left[0] -= 1
            if left[0]:
                return
        if failures:
            loop.call_soon_threadsafe(_fail, future, failures[0])
            return
        try:
            result = finish(parts)
        except BaseException as exc:
            loop.call_soon_threadsafe(_fail, future, exc)
            return
        loop.call_soon_threadsafe(_succeed, future, result)

    for index, chunk in enumerate(chunks):
        executor.submit(run, index, chunk)
    return await future


def _succeed(future: asyncio.Future[R], result: R) -> None:
    if not future.done():  # (done: its caller was cancelled; the work ran all the same)
        future.set_result(result)


def _fail(future: asyncio.Future[Any], failure: BaseException) -> None:
    if not future.done():
        future.set_exception(failure)


def read_body(item: tuple[Path, int]) -> bytes:
    """The file's bytes, in as few system calls as its expected size allows."""
    path, size = item
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        chunks = [os.read(fd, size + 1)]  # one read, and one more to see the end
        while chunks[-1]:
            chunks.append(os.read(fd, max(size, 1 << 16)))
        return b"".join(chunks)
    finally:
        os.close(fd)


def each(operation: Callable[[T], R], items: list[T]) -> list[R | BaseException]:
    results: list[R | BaseException] = []
    for item in items:
        try:
            results.append(operation(item))
        except Exception as exc:
            results.append(exc)
    return results


class BodyCache:
    """Bodies just accepted, kept for their first delivery (small ones, the oldest dropped
    first): a message delivered right away then costs no second read and no thread hop, which
    is most of the latency of a quiet queue."""

    def __init__(self) -> None:
        self._kept: dict[str, bytes] = {}
        self._bytes = 0

    def keep(self, entry_id: str, body: bytes) -> None:
        if len(body) > KEEP_BODY_MAX:
            return
        self.take(entry_id)
        self._kept[entry_id] = body
        self._bytes += len(body)
        while self._bytes > KEEP_BODIES_BYTES:
            self.take(next(iter(self._kept)))

    def take(self, entry_id: str) -> bytes | None:
        """The body kept for ``entry_id`` (now forgotten), or None."""
        body = self._kept.pop(entry_id, None)
        if body is not None:
            self._bytes -= len(body)
        return body
