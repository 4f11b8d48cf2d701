"""Time, injected: the daemon, intake, delivery, the queue stores and admin ask a ``Clock``.

``Clock`` reads the wall clock (``time()``, persisted in queue state) and a monotonic one
(``monotonic()``, for intervals), and waits (``sleep``, ``wait``). ``SystemClock`` is the real one;
``ManualClock`` stands still until a test moves it, and wakes the waits whose deadline it passes,
so that a test of a retry schedule or a timeout runs in no time and never depends on the
machine's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]


class Clock:
    """The real clock (the base class is it: subclasses replace what they fake)."""

    def time(self) -> float:
        """Seconds since the epoch (the wall clock: it may jump)."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never go back (for intervals and deadlines)."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until ``event`` is set (True) or ``timeout`` seconds have passed (False)."""
        if event.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, timeout))
            return True
        return False


class SystemClock(Clock):
    """The machine's clocks."""


#: The one real clock, the default everywhere.
SYSTEM_CLOCK: Clock = SystemClock()


class ManualClock(Clock):
    """A clock that moves only when ``advance`` (or ``set``) is called; waits and sleeps end when
    the clock passes their deadline. Both readings move together."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now
        self._start = now
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - self._start

    def advance(self, seconds: float) -> None:
        """Move both clocks forward and wake every wait whose deadline has come."""
        self.set(self.now + seconds)

    def set(self, now: float) -> None:
        """Set the wall clock (backwards too: a jump); the monotonic clock only moves forward."""
        if now >= self.now:
            self.now = now
        else:  # a jump back of the wall clock: the monotonic reading stays where it was
            self._start -= self.now - now
            self.now = now
        while self._sleepers and self._sleepers[0][0] <= self.monotonic():
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.monotonic() + seconds, next(self._order), future))
        await future

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:  # noqa: ASYNC109
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        sleeper = asyncio.ensure_future(self.sleep(timeout))
        try:
            await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, sleeper):
                task.cancel()
        return event.is_set()

    @property
    def waiting(self) -> int:
        """How many sleeps and waits are pending (a test waits for the daemon to be idle)."""
        return sum(1 for *_, future in self._sleepers if not future.done())
