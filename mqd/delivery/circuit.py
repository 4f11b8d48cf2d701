"""A circuit breaker per relay, so that a dead relay is not hammered.

Closed: every message may use the relay. After ``failures`` whole-message failures in a row
(connection refused, timeouts, 5xx from an API: the relay raised instead of answering per
recipient) it opens: the relay is skipped (a failover route moves on to its next relay, a
single-relay route waits) for ``cooldown`` seconds. Then one message is let through as a trial
(half-open): success closes the circuit, failure opens it again for twice as long, up to
``max_cooldown``. A far end that says when to come back (``retry_after``: HTTP 429's
Retry-After, a provider's "sending paused") opens it until then at once, whatever the count.

State lives in memory: after a restart every relay starts closed, which costs at most one
failure per relay before it is skipped again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum

from mqd.config.schema import CircuitConfig

__all__ = ["Circuit", "CircuitState"]

log = logging.getLogger("mqd.circuit")

#: While a half-open trial is in flight, other messages look again after this many seconds.
TRIAL_WAIT = 5.0


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Circuit:
    def __init__(
        self, relay: str, config: CircuitConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.relay = relay
        self.config = config
        self._clock = clock
        self.failures = 0
        #: Every whole-message failure since start (for metrics).
        self.total_failures = 0
        self._open_until = 0.0
        self._cooldown = config.cooldown
        self._trial = False
        self._opened = False
        #: Why it opened (the last error), for logs and ``mqd status``.
        self.reason = ""

    @property
    def state(self) -> CircuitState:
        if not self._opened:
            return CircuitState.CLOSED
        if self._clock() < self._open_until:
            return CircuitState.OPEN
        return CircuitState.HALF_OPEN

    def admit(self) -> float | None:
        """None when a message may use the relay now; otherwise seconds until it may ask again.

        In the half-open state the first caller gets the trial; it must then report
        ``success()``, ``failure()`` or ``release()``.
        """
        if not self._opened:
            return None
        now = self._clock()
        if now < self._open_until:
            return self._open_until - now
        if self._trial:
            return TRIAL_WAIT
        self._trial = True
        return None

    def success(self) -> None:
        if self._opened:
            log.warning("relay %s answers again: using it for every message", self.relay)
        self._close()

    def failure(self, reason: str, retry_after: float | None = None) -> None:
        """A whole-message failure. ``retry_after``: the far end asked for a pause this long."""
        self.failures += 1
        self.total_failures += 1
        was_trial, self._trial = self._trial, False
        self.reason = reason
        now = self._clock()
        if retry_after is not None and retry_after > 0:
            until = now + retry_after
            if until > self._open_until or not self._opened:
                log.warning(
                    "relay %s asked to pause for %.0fs (%s): not using it until then",
                    self.relay,
                    retry_after,
                    reason,
                )
            self._opened = True
            self._open_until = max(self._open_until, until)
            return
        if self._opened and not was_trial:
            # A message already under way when the circuit opened: no news about the relay,
            # and no reason to lengthen (or cut short) the pause already decided.
            return
        if not (was_trial or self.failures >= self.config.failures):
            return
        self._opened = True
        self._open_until = now + self._cooldown
        log.warning(
            "relay %s is unhealthy (%d failure(s) in a row, last: %s): skipping it for %.0fs",
            self.relay,
            self.failures,
            reason,
            self._cooldown,
        )
        self._cooldown = min(self._cooldown * 2, self.config.max_cooldown)

    def reset(self) -> None:
        """Closed again, on the administrator's word (``mqd queue flush``)."""
        if self._opened:
            log.warning("relay %s: circuit reset by the administrator", self.relay)
        self._close()

    def _close(self) -> None:
        self.failures = 0
        self._opened = False
        self._trial = False
        self._open_until = 0.0
        self._cooldown = self.config.cooldown
        self.reason = ""

    def release(self) -> None:
        """The trial ended without an answer (shutdown): let the next message try."""
        self._trial = False
