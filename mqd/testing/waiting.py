"""Waiting on a condition, never on a fixed delay: ``wait_until`` (async) and ``wait_until_sync``.

A test that needs the daemon, a peer or a child process to get somewhere asks for it by name::

    await wait_until(lambda: len(relay.sent) == 2, "both deliveries")
    entry = wait_until_sync(lambda: find_entry(queue), "the entry in the queue")

The condition is polled, first often, then every ``MAX_INTERVAL`` seconds; its first true value
is returned. The timeout only stops a test that hangs: reaching it is an AssertionError naming
``what``, never a result to assert on. These two are the only places where the tests sleep
(``tests/test_no_fixed_sleeps.py`` holds the tree to that).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

__all__ = ["DEFAULT_TIMEOUT", "MAX_INTERVAL", "wait_until", "wait_until_sync"]

T = TypeVar("T")

#: Seconds before a wait gives up (a hung test, not a slow machine: keep it generous).
DEFAULT_TIMEOUT = 30.0
#: The longest pause between two looks at the condition.
MAX_INTERVAL = 0.05
_FIRST_INTERVAL = 0.002


def _intervals() -> Callable[[], float]:
    interval = _FIRST_INTERVAL

    def step() -> float:
        nonlocal interval
        now, interval = interval, min(MAX_INTERVAL, interval * 2)
        return now

    return step


@overload
async def wait_until(
    condition: Callable[[], Awaitable[T]],
    what: str,
    timeout: float = ...,  # noqa: ASYNC109 - a safety net, not an asyncio timeout
) -> T: ...


@overload
async def wait_until(
    condition: Callable[[], T],
    what: str,
    timeout: float = ...,  # noqa: ASYNC109 - a safety net, not an asyncio timeout
) -> T: ...


async def wait_until(
    condition: Callable[[], Any],
    what: str,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - a safety net, not an asyncio timeout
) -> Any:
    """Poll ``condition`` (a function, or one returning an awaitable) until its value is true,
    and return that value. Raises AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = _intervals()
    while True:
        found = condition()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(pause())


def wait_until_sync(condition: Callable[[], T], what: str, timeout: float = DEFAULT_TIMEOUT) -> T:
    """``wait_until`` for code that is not in an event loop (a child process, a thread)."""
    deadline = time.monotonic() + timeout
    pause = _intervals()
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(pause())
