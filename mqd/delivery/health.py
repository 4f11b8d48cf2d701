"""What a relay's recent attempts say about it, for ``mqd status``, the API and the web view.

The circuit breaker (``mqd.delivery.circuit``) only counts whole-message failures, and only
until it opens; a relay that answers every recipient with ``451`` or ``550`` never opens it,
yet delivers nothing. ``RelayHealth`` keeps each relay's last attempts (one per message sent
through it: delivered when it accepted a recipient, else refused, every recipient refused
permanently, or failed, transiently or as a whole) and ``verdict`` turns them and the
circuit's state into one word:

- ``failing``: its circuit is open or half-open, or none of its recent attempts delivered;
- ``degraded``: it delivers, but its last attempt failed or half of its recent ones did;
- ``healthy``: it delivers (a recipient refused by name is the recipient's problem);
- ``idle``: no attempt in the last ``RECENT`` seconds;
- ``unknown``: no daemon runs, so nobody knows.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "RECENT",
    "Attempt",
    "CircuitWord",
    "Health",
    "RelayHealth",
    "Result",
    "circuit_word",
    "verdict",
]

#: Attempts older than this (seconds) say nothing about the relay now.
RECENT = 3600.0
#: The most attempts kept per relay.
KEPT = 20

Health = Literal["healthy", "degraded", "failing", "idle", "unknown"]
Result = Literal["delivered", "refused", "failed"]
CircuitWord = Literal["closed", "open", "half-open", "unknown"]
_CIRCUIT_WORDS: dict[str, CircuitWord] = {"open": "open", "half-open": "half-open"}


def circuit_word(state: str | None) -> CircuitWord:
    """A circuit's state as the status says it (None: no daemon runs, so "unknown")."""
    return "unknown" if state is None else _CIRCUIT_WORDS.get(state, "closed")


@dataclass(frozen=True, slots=True)
class Attempt:
    at: float
    result: Result
    #: The reply of a recipient not delivered (the first), or the error.
    error: str | None = None


class RelayHealth:
    """One relay's recent attempts (in memory: a restart starts afresh, like the circuits)."""

    def __init__(self) -> None:
        self._attempts: deque[Attempt] = deque(maxlen=KEPT)
        self.last_success_at: float | None = None
        self.last_failure_at: float | None = None

    def record(self, at: float, result: Result, error: str | None = None) -> None:
        self._attempts.append(Attempt(at, result, error))
        if result == "delivered":
            self.last_success_at = at
        else:
            self.last_failure_at = at

    def recent(self, now: float) -> list[Attempt]:
        """The attempts of the last ``RECENT`` seconds, oldest first."""
        return [a for a in self._attempts if now - a.at <= RECENT]

    def last_error(self, now: float) -> str | None:
        """The newest recent attempt's error that did not deliver."""
        for attempt in reversed(self.recent(now)):
            if attempt.result != "delivered" and attempt.error:
                return attempt.error
        return None


def verdict(circuit: str, recent: list[Attempt]) -> Health:
    """The relay's health from its circuit's state and its ``recent`` attempts (module doc)."""
    if circuit == "unknown":
        return "unknown"
    if circuit in ("open", "half-open"):
        return "failing"
    if not recent:
        return "idle"
    if not any(a.result == "delivered" for a in recent):
        return "failing"
    failed = sum(1 for a in recent if a.result == "failed")
    if recent[-1].result == "failed" or failed * 2 >= len(recent):
        return "degraded"
    return "healthy"
