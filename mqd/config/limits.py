"""Sending limits and the platform's settings, as frozen dataclasses: a relay's quota, an
``[[account]]`` (``mqd.config.accounts`` parses it) and ``[suppression]``. A leaf of the config
package: ``mqd.config.schema`` re-exports them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AccountConfig", "QuotaConfig", "SuppressionConfig"]


@dataclass(frozen=True)
class QuotaConfig:
    """A provider's sending limits; None means no limit. Counted in messages."""

    max_per_second: float | None = None
    max_per_hour: int | None = None
    max_per_day: int | None = None
    max_per_minute: int | None = None

    def divided(self, workers: int) -> QuotaConfig:
        """Each worker's share, so that all of them together keep to the limits."""
        if workers == 1:
            return self
        return QuotaConfig(
            max_per_second=None if self.max_per_second is None else self.max_per_second / workers,
            max_per_minute=None
            if self.max_per_minute is None
            else max(1, self.max_per_minute // workers),
            max_per_hour=None
            if self.max_per_hour is None
            else max(1, self.max_per_hour // workers),
            max_per_day=None if self.max_per_day is None else max(1, self.max_per_day // workers),
        )

    @property
    def limited(self) -> bool:
        limits = (self.max_per_second, self.max_per_minute, self.max_per_hour, self.max_per_day)
        return any(v is not None for v in limits)


@dataclass(frozen=True)
class AccountConfig:
    name: str
    #: Sender patterns (an address or ``*@domain``) whose mail is this account's.
    senders: tuple[str, ...]
    #: Its limits, counted in messages (``max_per_second`` unused).
    limits: QuotaConfig
    #: "wait": over a limit, mail waits in the queue (never an attempt, never failed);
    #: "refuse": it is refused at hand-over with the reason.
    over_limit: str = "wait"


@dataclass(frozen=True)
class SuppressionConfig:
    """``[suppression]``: recipients not mailed again after a permanent bounce or a complaint."""

    enabled: bool = True
    #: How long a bounced address stays suppressed (0: for good).
    bounce_for: float = 30 * 86400.0
    #: How long a complaining address stays suppressed (0: for good, the default).
    complaint_for: float = 0.0

    def until(self, kind: str, now: float) -> float | None:
        """When a suppression of ``kind`` made ``now`` ends (None: for good)."""
        period = self.complaint_for if kind == "complaint" else self.bounce_for
        return now + period if period > 0 else None
