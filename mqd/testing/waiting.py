"""Waiting on a condition, never on a fixed delay: ``wait_until`` (async) and ``wait_until_sync``.

A test that needs the daemon, a peer or a child process to get somewhere asks for it by name::

    await wait_until(lambda: len(relay.sent) == 2, "both deliveries")
    entry = wait_until_sync(lambda: find_entry(queue), "the entry in the queue")

The condition is polled at once, then after pauses of a tenth of the time waited so far (at
least 2 ms, at most ``MAX_INTERVAL``); its first true value is returned. The timeout only stops
a test that hangs: reaching it is an AssertionError naming ``what``, never a result to assert
on. These two are the only places where the tests sleep (``tests/test_no_fixed_sleeps.py``
holds the tree to that).
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
MAX_INTERVAL = 0.1
#: The shortest one, and the share of the time waited so far that a pause may add: a short wait
#: is seen at once, a long one costs few looks (a condition may list a directory of thousands).
_MIN_INTERVAL = 0.002
_SHARE = 0.1


def _pause(started: float) -> float:
    return min(MAX_INTERVAL, max(_MIN_INTERVAL, _SHARE * (time.monotonic() - started)))


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
    started = time.monotonic()
    deadline = started + timeout
    while True:
        found = condition()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(_pause(started))


def wait_until_sync(condition: Callable[[], T], what: str, timeout: float = DEFAULT_TIMEOUT) -> T:
    """``wait_until`` for code that is not in an event loop (a child process, a thread)."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(_pause(started))
