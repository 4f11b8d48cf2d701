"""What the event store answers about traffic over time: messages per time bucket by outcome, per
relay and per sender, and the delivery latency, for the web view's charts.

``Window`` is the span asked about, cut into equal buckets; ``Activity`` the answer. Outcomes:

- ``delivered``: a relay took the message (mqd's ``dispatched`` event);
- ``deferred``: a transient failure, to be retried (mqd's or a provider's ``deferred``);
- ``failed``: bounced, dropped by a provider, failed, or rejected at intake.

Each bucket counts messages, not events: a message with three recipients dispatched in one
minute counts once in that minute. Latency is from ``accepted`` (claimed from the spool) to
each recipient's ``dispatched``, kept as a histogram over ``LATENCY_BOUNDS`` per bucket, from
which ``quantile`` estimates p50 and p95 (within a bin, linearly, as Prometheus does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["LATENCY_BOUNDS", "OUTCOMES", "Activity", "Window", "joined", "quantile"]

OUTCOMES = ("delivered", "deferred", "failed")
#: The statuses of each outcome (the event store's vocabulary).
OUTCOME_STATUSES = {
    "delivered": ("dispatched",),
    "deferred": ("deferred",),
    "failed": ("bounced", "dropped", "failed", "rejected"),
}
#: Upper bounds (seconds) of the latency histogram's bins; one more bin holds the rest.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    4 * 3600,
)


@dataclass(frozen=True)
class Window:
    """``count`` buckets of ``step`` seconds from ``start`` (seconds since the epoch)."""

    start: float
    step: float
    count: int

    @property
    def end(self) -> float:
        return self.start + self.step * self.count

    @classmethod
    def last(cls, now: float, *, span: float, step: float) -> Window:
        """The buckets covering the ``span`` seconds up to ``now``, aligned to ``step`` (the
        last one holds ``now``)."""
        count = max(1, round(span / step))
        end = (math.floor(now / step) + 1) * step
        return cls(start=end - count * step, step=step, count=count)

    def bucket_start(self, index: int) -> float:
        return self.start + index * self.step


@dataclass(frozen=True)
class Activity:
    """Traffic in ``window``: every list has one number per bucket."""

    window: Window
    #: Messages per bucket for each of ``OUTCOMES`` (all three always present).
    outcomes: dict[str, list[int]]
    #: Messages delivered (dispatched) per bucket through each relay that handled any.
    relays: dict[str, list[int]] = field(default_factory=dict)
    #: Each relay's messages in the whole window, by outcome.
    relay_totals: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Messages delivered per bucket from each envelope sender ("" for mqd's bounces).
    senders: dict[str, list[int]] = field(default_factory=dict)
    #: Each sender's messages in the whole window, by outcome.
    sender_totals: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Messages delivered per bucket for each ``[[account]]`` (mail no account claims: none).
    accounts: dict[str, list[int]] = field(default_factory=dict)
    #: Each account's messages in the whole window, by outcome.
    account_totals: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Per bucket, recipients dispatched in each latency bin (``len(LATENCY_BOUNDS) + 1``).
    latency: list[list[int]] = field(default_factory=list)

    @classmethod
    def empty(cls, window: Window) -> Activity:
        return cls(
            window=window,
            outcomes={outcome: [0] * window.count for outcome in OUTCOMES},
            latency=[[0] * (len(LATENCY_BOUNDS) + 1) for _ in range(window.count)],
        )

    def latency_histogram(self) -> list[int]:
        """The whole window's latency histogram."""
        return [sum(column) for column in zip(*self.latency, strict=True)] if self.latency else []

    def latency_quantiles(self, q: float) -> list[float | None]:
        """The estimated ``q`` quantile of each bucket's latency (None: nothing dispatched)."""
        return [quantile(bins, q) for bins in self.latency]


def joined(first: Activity, second: Activity) -> Activity:
    """``first``'s buckets, then ``second``'s: the activity of both windows, which must be
    adjacent (``second`` starting where ``first`` ends) and of the same step."""
    a, b = first.window, second.window
    if a.step != b.step or a.end != b.start:
        raise ValueError(f"windows {a} and {b} are not adjacent")

    def series(one: dict[str, list[int]], two: dict[str, list[int]]) -> dict[str, list[int]]:
        return {
            key: one.get(key, [0] * a.count) + two.get(key, [0] * b.count)
            for key in dict.fromkeys([*one, *two])
        }

    def totals(
        one: dict[str, dict[str, int]], two: dict[str, dict[str, int]]
    ) -> dict[str, dict[str, int]]:
        both: dict[str, dict[str, int]] = {k: dict(v) for k, v in one.items()}
        for key, counts in two.items():
            mine = both.setdefault(key, {})
            for outcome, n in counts.items():
                mine[outcome] = mine.get(outcome, 0) + n
        return both

    return Activity(
        window=Window(a.start, a.step, a.count + b.count),
        outcomes=series(first.outcomes, second.outcomes),
        relays=series(first.relays, second.relays),
        relay_totals=totals(first.relay_totals, second.relay_totals),
        senders=series(first.senders, second.senders),
        sender_totals=totals(first.sender_totals, second.sender_totals),
        accounts=series(first.accounts, second.accounts),
        account_totals=totals(first.account_totals, second.account_totals),
        latency=first.latency + second.latency,
    )


def quantile(bins: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0-1) of a histogram over ``LATENCY_BOUNDS``, interpolated linearly
    within its bin; the open last bin answers its lower bound. None for an empty histogram."""
    total = sum(bins)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(bins):
        if count and seen + count >= rank:
            low = LATENCY_BOUNDS[index - 1] if index else 0.0
            if index >= len(LATENCY_BOUNDS):
                return low
            high = LATENCY_BOUNDS[index]
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return LATENCY_BOUNDS[-1]
