"""What a store shares between the nodes of a fleet: send counts and the suppression list.

A store whose queue is shared by many nodes (PostgreSQL) hands the delivery guards a
``FleetState`` (``QueueStore.fleet()``): the relays' and accounts' limits are then counted once
for the fleet and the suppression list is one list. A store of one node returns None and the
guards keep their counts in memory and in the store's small state, as before.

Counts are *reserved* in blocks: ``reserve`` takes up to ``want`` sends at once (fewer, or none,
when a window has less room) in one transaction; a node hands out the block without asking
again and gives back what it did not use (``give_back``, with its next reservation or when it
stops). Suppressions travel as plain rows (``SuppressionRow``); the guards keep a cache that
``suppressions_since`` brings up to date.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["FleetState", "Grant", "Returned", "SuppressionRow", "Window"]


@dataclass(frozen=True, slots=True)
class Window:
    """A limit over a rolling window: at most ``limit`` sends in ``seconds`` (60, 3600, 86400)."""

    seconds: float
    limit: int
    #: "per-minute", "per-hour" or "per-day" (what a hold says).
    name: str


@dataclass(frozen=True, slots=True)
class Grant:
    """What ``reserve`` gave: ``n`` sends counted at ``at``; with ``n == 0``, the seconds to wait
    and the window that is full."""

    n: int
    at: float
    wait: float = 0.0
    full: str = ""
    #: The fleet's sends in each window asked about, this one included (for ``mqd status``).
    used: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Returned:
    """Reserved sends that did not go out: ``n`` of ``key``, counted at ``at``."""

    key: str
    at: float
    n: int


@dataclass(frozen=True, slots=True)
class SuppressionRow:
    account: str
    address: str
    kind: str
    reason: str
    since: float
    until: float | None


class FleetState(Protocol):
    async def reserve(
        self,
        key: str,
        windows: Sequence[Window],
        want: int,
        at: float,
        now: float,
        returned: Sequence[Returned] = (),
    ) -> Grant:
        """Count up to ``want`` sends of ``key`` at time ``at`` (>= ``now``), as many as every
        window has room for at ``now``; ``returned`` is given back first, in the same
        transaction."""
        ...

    async def give_back(self, returned: Sequence[Returned]) -> None:
        """Uncount sends reserved but not used."""
        ...

    async def heartbeat(self, now: float) -> int:
        """Say this node is alive; returns how many nodes are (this one included)."""
        ...

    async def leave(self) -> None:
        """This node stops: it no longer counts as alive."""
        ...

    async def suppress(self, rows: Sequence[SuppressionRow], now: float) -> None:
        """Add or lengthen suppressions (an equal or longer one in force is kept)."""
        ...

    async def unsuppress(self, address: str, account: str | None, now: float) -> None:
        """End ``address``'s suppressions (of ``account``; None: of every account)."""
        ...

    async def suppressions_since(self, version: int) -> tuple[list[SuppressionRow], int]:
        """The suppressions changed since ``version`` (0: all), ended ones included (their
        ``until`` passed), and the version to ask from next."""
        ...
