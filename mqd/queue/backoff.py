"""When to try again: tenacity's wait strategies applied to persisted attempt counts.

The schedule is durable (absolute timestamps in the entry's state); tenacity only computes the
delay for attempt N, it never runs the retry loop (DESIGN invariant 6).
"""

from __future__ import annotations

import tenacity

from mqd.config.schema import RetryPolicy

__all__ = ["Backoff"]

#: Jitter spreads retries of a burst of failures over this share of the initial delay.
JITTER_SHARE = 0.1


class Backoff:
    """Delay before the next attempt: ``initial * 2**(n-1)``, capped at ``max``, plus jitter."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self._wait = tenacity.wait_exponential(
            multiplier=policy.initial, min=policy.initial, max=policy.max
        ) + tenacity.wait_random(0, policy.initial * JITTER_SHARE)
        self._retrying = tenacity.Retrying()

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1 for the first)."""
        state = tenacity.RetryCallState(self._retrying, fn=None, args=(), kwargs={})
        state.attempt_number = max(1, attempts)
        return float(self._wait(state))

    def expired(self, created_at: float, now: float) -> bool:
        """True when a message created at ``created_at`` has outlived the queue lifetime."""
        return now - created_at >= self.policy.lifetime
