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

    def exhausted(self, attempts: int) -> bool:
        """True when ``attempts`` attempts use up the retry budget by count (``max_attempts``)."""
        limit = self.policy.max_attempts
        return limit is not None and attempts >= limit

    def give_up_reason(self, attempts: int, created_at: float, now: float) -> str | None:
        """Why a message whose last attempt deferred is given up on now, or None to retry.

        Whichever limit comes first wins: the lifetime or the count (python-slimta's "too many
        4xx"); both end the same way, a 4.4.7 failure and a bounce."""
        if self.expired(created_at, now):
            hours = self.policy.lifetime / 3600
            return f"retries exhausted after {attempts} attempts over {hours:g}h"
        if self.exhausted(attempts):
            return f"retries exhausted after {attempts} attempts (retry.max_attempts)"
        return None
