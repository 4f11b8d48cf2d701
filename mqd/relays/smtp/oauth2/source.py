"""The token source contract: ``await token()`` hands out an access token, cached, renewed before
it expires, with one renewal at a time shared by every caller (single flight); ``invalidate()``
drops the cached token after the server refused it, so the next ``token()`` gets a new one.

Subclasses say how to get a new token (``_fetch``): ``mqd.relays.smtp.oauth2.command`` and
``mqd.relays.smtp.oauth2.endpoint``. Every failure is a ``TokenError`` whose message says what went
wrong and what to fix; no token or secret ever appears in a message or a log line.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mqd.errors import MQDError

__all__ = ["Token", "TokenError", "TokenSource", "one_line"]


class TokenError(MQDError):
    """No access token could be had; the message says why and what to fix."""


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    #: Clock time from which the token is renewed instead of reused.
    renew_at: float


class TokenSource(abc.ABC):
    """Hands out access tokens; subclasses say how to get a new one (``_fetch``)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cached: Token | None = None
        self._renewal: asyncio.Task[Token] | None = None

    async def token(self) -> str:
        """A current access token. Raises TokenError when none can be had."""
        cached = self._cached
        if cached is not None and self._clock() < cached.renew_at:
            return cached.value
        if self._renewal is None:
            renewal = asyncio.get_running_loop().create_task(self._renew())
            renewal.add_done_callback(self._renewed)
            self._renewal = renewal
        # Shielded: a caller that gives up does not cancel the renewal the others wait for.
        return (await asyncio.shield(self._renewal)).value

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (only if it is ``token``, when given): the server refused it."""
        if self._cached is not None and (token is None or self._cached.value == token):
            self._cached = None

    async def aclose(self) -> None:
        """Stop a renewal in progress."""
        renewal = self._renewal
        if renewal is not None and not renewal.done():
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renewal

    @abc.abstractmethod
    def describe(self) -> str:
        """Where tokens come from, for logs (no secrets)."""

    @abc.abstractmethod
    async def _fetch(self) -> Token:
        """Get a new token; raise TokenError."""

    async def _renew(self) -> Token:
        token = await self._fetch()
        self._cached = token
        return token

    def _renewed(self, renewal: asyncio.Task[Token]) -> None:
        if self._renewal is renewal:
            self._renewal = None
        if not renewal.cancelled():
            renewal.exception()  # retrieved: every caller that still waits gets it too


def one_line(text: str, limit: int = 300) -> str:
    """``text`` flattened to one line of at most ``limit`` characters, for an error message."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
