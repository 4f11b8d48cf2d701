"""Limits and the suppression list shared by a fleet (a store with ``fleet()``: PostgreSQL).

The relays' minute, hour and day limits and the ``[[account]]`` limits are counted once for
the fleet (``mqd.queue.shared``). A node does not ask the database for every message: it
*reserves* a block of sends (``SharedQuota``) and hands it out until it is used up or
``BLOCK_TTL`` seconds old; what is left then goes back with the next reservation, at the
guards' next save or when the node stops. Blocks start at one send and double while they are
used up in time (to ``MAX_BLOCK``, and at most a twentieth of the smallest limit, so that
nodes share a small limit fairly); a block given back half unused halves the next.

A block is counted at the time it expires (``at``), not when it was taken, so its sends never
leave a window before they really went out: the fleet stays under every limit, and a node
that dies with a block loses at most that block's room until the window moves on.

Per-second rates stay a token bucket in each node, at ``max_per_second`` divided by the number
of nodes that delivered lately (their heartbeats): a per-second window is too short to reserve
ahead, and a round trip per message would cost more than the send.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict

from mqd.clock import Clock
from mqd.config.schema import QuotaConfig
from mqd.delivery.quota import Hold
from mqd.delivery.suppression import Suppression, Suppressions
from mqd.queue.shared import FleetState, Returned, SuppressionRow, Window

__all__ = ["BLOCK_TTL", "MAX_BLOCK", "SharedQuota", "per_node", "sync_suppressions", "windows_of"]

log = logging.getLogger("mqd.delivery")

#: A reserved block is used for at most this many seconds; the rest goes back.
BLOCK_TTL = 5.0
#: The most sends reserved at once.
MAX_BLOCK = 32


def windows_of(config: QuotaConfig) -> tuple[Window, ...]:
    """The windows of ``config`` counted for the fleet (the per-second rate is not one)."""
    return tuple(
        Window(seconds, limit, name)
        for seconds, limit, name in (
            (60.0, config.max_per_minute, "per-minute"),
            (3600.0, config.max_per_hour, "per-hour"),
            (86400.0, config.max_per_day, "per-day"),
        )
        if limit
    )


def per_node(config: QuotaConfig, nodes: int) -> QuotaConfig:
    """What a node counts itself: its share of the per-second rate only."""
    rate = config.max_per_second
    return QuotaConfig(max_per_second=None if rate is None else rate / max(1, nodes))


class SharedQuota:
    """One relay's or account's windows, counted for the fleet in reserved blocks."""

    def __init__(
        self, key: str, windows: tuple[Window, ...], fleet: FleetState, clock: Clock
    ) -> None:
        self.key = key
        self.windows = windows
        self.fleet = fleet
        self.clock = clock
        smallest = min(window.limit for window in windows)
        self.cap = max(1, min(MAX_BLOCK, smallest // 20))
        self.size = 1
        self.left = 0
        #: When the block is counted (its expiry), and until when it may be used.
        self.at = 0.0
        self.expires = 0.0
        self.back: list[Returned] = []
        self.holds = 0
        #: The fleet's sends in each window at the last reservation (for ``mqd status``).
        self.used: dict[str, int] = {}
        #: Reservations made (database transactions), for the tests and the benchmark.
        self.reservations = 0
        self._lock = asyncio.Lock()

    async def take(self) -> Hold | None:
        now = self.clock.time()
        if self.left and now < self.expires:
            self.left -= 1
            return None
        async with self._lock:  # deliveries at once wait for one reservation, not one each
            return await self._reserve()

    async def _reserve(self) -> Hold | None:
        now = self.clock.time()
        if self.left and now < self.expires:  # another delivery's reservation, meanwhile
            self.left -= 1
            return None
        self._retire(now)
        at = now + BLOCK_TTL
        grant = await self.fleet.reserve(self.key, self.windows, self.size, at, now, self.back)
        self.reservations += 1
        self.back = []
        self.used = {w.name: n for w, n in zip(self.windows, grant.used, strict=False)}
        if grant.n == 0:
            self.holds += 1
            return Hold(grant.wait, grant.full)
        self.left, self.at, self.expires = grant.n - 1, at, now + BLOCK_TTL
        return None

    def refund(self) -> None:
        """Undo a ``take``: back into the block while it lasts, else given back later."""
        if self.clock.time() < self.expires:
            self.left += 1
        else:
            self.back.append(Returned(self.key, self.at, 1))

    def _retire(self, now: float) -> None:
        if self.left:
            self.back.append(Returned(self.key, self.at, self.left))
            self.size = max(1, self.size // 2)
        elif self.expires and now < self.expires:
            self.size = min(self.cap, self.size * 2)  # used up in time: take more at once
        self.left, self.expires = 0, 0.0

    def stale(self, *, everything: bool = False) -> list[Returned]:
        """What is to be given back now: the unused part of an expired block (of any block,
        with ``everything``: the node stops), and refunds."""
        if everything or self.clock.time() >= self.expires:
            self._retire(self.clock.time())
        back, self.back = self.back, []
        return back


def _row(item: Suppression) -> SuppressionRow:
    return SuppressionRow(**asdict(item))


async def sync_suppressions(
    fleet: FleetState, suppressions: Suppressions, version: int, now: float
) -> int:
    """Write this node's changes to the fleet's list, then take the fleet's changes since
    ``version`` into the node's cache; returns the version to ask from next."""
    added, removed = suppressions.take_changes()
    try:
        if added:
            await fleet.suppress([_row(item) for item in added], now)
        for address, account in removed:
            await fleet.unsuppress(address, account, now)
        rows, version = await fleet.suppressions_since(version)
    except BaseException:
        suppressions.keep_changes(added, removed)
        raise
    suppressions.merge([Suppression(**asdict(row)) for row in rows], now)
    return version
