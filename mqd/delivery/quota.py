"""Sending quotas per relay (and per account): messages per second, and rolling per-minute,
per-hour and per-day limits.

Providers suspend accounts that exceed their limits, so mqd holds mail back before it gets
there. A message held by a quota is not an attempt: it is not counted, never bounces for it, and
a failover route sends it through its next relay meanwhile.

The per-second rate is a token bucket (bursts up to one second's worth). The minute window keeps
the times of its last sends (at most the limit of them), so it is exact. The hour and day
windows count sends in one-minute buckets by wall-clock time, which the daemon saves in the
queue directory (``quota.json``) every few seconds and at shutdown, so a restart does not reset
them: a crash forgets at most the last few seconds of sends.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mqd.config.schema import QuotaConfig

__all__ = ["Hold", "Quota"]

log = logging.getLogger("mqd.quota")

_MINUTE = 60.0
_HOUR = 3600.0
_DAY = 86400.0


@dataclass(frozen=True)
class Hold:
    """Why a relay cannot take a message now, and for how long."""

    seconds: float
    #: "per-second", "per-minute", "per-hour" or "per-day".
    limit: str


class Quota:
    def __init__(
        self,
        relay: str,
        config: QuotaConfig,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.relay = relay
        self.config = config
        self._clock = clock
        self._monotonic = monotonic
        rate = config.max_per_second
        self._capacity = max(1.0, rate) if rate else 0.0
        self._tokens = self._capacity
        self._refilled = monotonic()
        #: Sends per wall-clock minute (minute number -> count), for the hour and day windows.
        self._minutes: dict[int, int] = {}
        #: The times of the last sends, for the minute window (at most its limit of them).
        self._recent: deque[float] = deque(maxlen=config.max_per_minute or 1)
        self.dirty = False
        #: How many times a message was held back (for metrics and ``mqd status``).
        self.holds = 0

    def take(self) -> Hold | None:
        """Count one message and return None, or return a Hold and count nothing."""
        hold = self._check_rate() or self._check_windows()
        if hold is not None:
            self.holds += 1
            return hold
        if self._capacity:
            self._tokens -= 1.0
        if self.config.max_per_minute:
            self._recent.append(self._clock())
            self.dirty = True
        if self.config.max_per_hour or self.config.max_per_day:
            minute = int(self._clock() // 60)
            self._minutes[minute] = self._minutes.get(minute, 0) + 1
            self.dirty = True
        return None

    def refund(self) -> None:
        """Undo the last ``take`` (what it counted did not go out after all)."""
        if self._capacity:
            self._tokens = min(self._capacity, self._tokens + 1.0)
        if self.config.max_per_minute and self._recent:
            self._recent.pop()
        if self.config.max_per_hour or self.config.max_per_day:
            minute = max(self._minutes, default=None)
            if minute is not None:
                self._minutes[minute] -= 1
                if not self._minutes[minute]:
                    del self._minutes[minute]
        self.dirty = True

    def sent_within(self, seconds: float) -> int:
        """Messages counted in the last ``seconds`` (whole minutes, rounded outwards; the last
        minute exactly, with a per-minute limit)."""
        start = self._clock() - seconds
        if seconds <= _MINUTE and self.config.max_per_minute:
            return sum(1 for sent in self._recent if sent > start)
        return sum(n for m, n in self._minutes.items() if (m + 1) * 60 > start)

    def _check_rate(self) -> Hold | None:
        rate = self.config.max_per_second
        if not rate:
            return None
        now = self._monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1.0:
            return None
        return Hold((1.0 - self._tokens) / rate, "per-second")

    def _check_windows(self) -> Hold | None:
        limit = self.config.max_per_minute
        if limit:
            now = self._clock()
            recent = self._recent
            if len(recent) >= limit and recent[0] > now - _MINUTE:
                return Hold(max(0.01, recent[0] + _MINUTE - now), "per-minute")
        self._forget()
        for limit, window, name in (
            (self.config.max_per_hour, _HOUR, "per-hour"),
            (self.config.max_per_day, _DAY, "per-day"),
        ):
            if limit is None:
                continue
            wait = self._wait_for(limit, window)
            if wait is not None:
                return Hold(wait, name)
        return None

    def _wait_for(self, limit: int, window: float) -> float | None:
        """None while under ``limit``; else seconds until enough old sends leave the window."""
        now = self._clock()
        counted = sorted((m, n) for m, n in self._minutes.items() if (m + 1) * 60 > now - window)
        total = sum(n for _, n in counted)
        for minute, count in counted:
            if total < limit:
                break
            total -= count
            # This minute's sends leave the window when its end is ``window`` seconds ago.
            wait = (minute + 1) * 60 + window - now
            if total < limit:
                return max(1.0, math.ceil(wait))
        return None if total < limit else _DAY

    def _forget(self) -> None:
        horizon = int((self._clock() - _DAY) // 60) - 1
        for minute in [m for m in self._minutes if m < horizon]:
            del self._minutes[minute]

    # -- persistence ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        self._forget()
        data: dict[str, Any] = {"minutes": {str(m): n for m, n in sorted(self._minutes.items())}}
        if self.config.max_per_minute:
            data["recent"] = list(self._recent)
        return data

    def load(self, data: Mapping[str, Any]) -> None:
        """Restore counts saved by ``to_json``; anything malformed is ignored with a warning."""
        try:
            minutes = {int(m): int(n) for m, n in dict(data.get("minutes", {})).items()}
        except (TypeError, ValueError, AttributeError) as exc:
            log.warning("relay %s: ignoring unreadable saved quota counts (%s)", self.relay, exc)
            return
        self._minutes = {m: n for m, n in minutes.items() if n > 0}
        self._forget()
        recent = data.get("recent")
        if isinstance(recent, list):
            cutoff = self._clock() - _MINUTE
            self._recent.extend(
                float(t) for t in recent if isinstance(t, int | float) and t > cutoff
            )


def dump_quotas(quotas: Mapping[str, Quota]) -> bytes:
    """The saved form of every relay's counts (only relays with hour/day windows)."""
    data = {
        name: q.to_json()
        for name, q in quotas.items()
        if q.config.max_per_minute or q.config.max_per_hour or q.config.max_per_day
    }
    return json.dumps({"version": 1, "relays": data}, sort_keys=True).encode()


def load_quotas(quotas: Mapping[str, Quota], raw: bytes) -> None:
    try:
        data = json.loads(raw)
        relays = data["relays"]
        if not isinstance(relays, dict):
            raise TypeError("relays is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the saved quota counts: not valid (%s)", exc)
        return
    for name, quota in quotas.items():
        saved = relays.get(name)
        if isinstance(saved, dict):
            quota.load(saved)
