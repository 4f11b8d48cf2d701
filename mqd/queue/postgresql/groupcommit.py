"""Group commit: concurrent writes of one kind go to the database together, as one statement.

Natural batching, with no timer: the first call starts a write at once; the calls that arrive
while it is in flight wait and go together in the next one. An idle node so writes each call
as it comes, and a busy one writes as many calls per transaction as came in during the last.

Each caller gets its own outcome (the write returns one result per item); a write that raises
fails every caller of its batch with that error, as a write of its own would have. A caller
cancelled before its batch's write began is left out of it (nothing is written for it); one
cancelled later does not stop the write, which the others share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Calls of ``submit`` written together by ``write`` (items in, one result per item out,
    in order)."""

    def __init__(self, write: Callable[[Sequence[T]], Awaitable[Sequence[R]]]) -> None:
        self._write = write
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None
        #: Batches written and items in them (for tests and benchmarks).
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        """Write ``item`` with whatever else is waiting; its result, or the batch's error."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain(), name="mqd-group-commit")
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = [(item, f) for item, f in self._waiting if not f.done()]
                self._waiting = []
                if batch:
                    await self._run(batch)
        finally:
            self._writer = None

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            results = await self._write([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # each caller gets it, as a write of its own would raise it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        if len(results) != len(batch):  # a bug in ``write``: said to each caller, not lost
            error = RuntimeError(f"a group write gave {len(results)} results for {len(batch)}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Wait for the write in flight, if any (its callers get their outcomes)."""
        writer = self._writer
        if writer is not None:
            await asyncio.wait([writer])

    def abandon(self) -> None:
        """Stop writing (a crash, for tests): the callers waiting are cancelled."""
        if self._writer is not None:
            self._writer.cancel()
        for _, future in self._waiting:
            future.cancel()
        self._waiting = []
