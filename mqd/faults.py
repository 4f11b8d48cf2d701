"""A resource that fails (a full disk, an unwritable folder, a database that is down): what needs
it pauses, says so once, retries with backoff and resumes on its own when it works again.

``Fault`` keeps that state for one resource: ``failed(why)`` logs an ERROR the first time (and
when the reason changes, not at every retry) and sets when to try again, doubling the wait up to
a ceiling; ``cleared()`` logs once that it works again. ``mqd status`` shows the active ones.
"""

from __future__ import annotations

import logging
from typing import Protocol

from mqd.clock import SYSTEM_CLOCK, Clock

__all__ = ["Fault", "Paused"]


class Paused(Protocol):
    """What ``mqd status`` shows of a resource that failed: a ``Fault``, or the tracker's
    event store (``mqd.tracking.keeper.TrackingPause``), which keeps its own backoff."""

    @property
    def what(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def active(self) -> bool: ...
    def retry_in(self) -> float: ...


class Fault:
    def __init__(
        self,
        what: str,
        log: logging.Logger,
        *,
        clock: Clock = SYSTEM_CLOCK,
        first: float = 1.0,
        most: float = 60.0,
        verb: str = "paused",
    ) -> None:
        #: What is paused, for the log and ``mqd status`` ("intake from the spools").
        self.what = what
        self.log = log
        self.clock = clock
        self.first = first
        self.most = most
        #: How the log says it: "intake paused: ..." or "delivery is failing: ...".
        self.verb = verb
        #: Why it is paused, while it is.
        self.reason: str | None = None
        self._delay = first
        self._retry_at = 0.0
        #: Failed tries since it was last working.
        self.failures = 0
        self._kind: str | None = None

    @property
    def active(self) -> bool:
        return self.reason is not None

    def retry_in(self) -> float:
        """Seconds until the next try (0: now)."""
        if self.reason is None:
            return 0.0
        return max(0.0, self._retry_at - self.clock.monotonic())

    def failed(self, why: str, *, progress: bool = False, kind: str | None = None) -> None:
        """Another failed try: log it once per reason, and wait longer before the next
        (``progress``: it partly worked, as a queue with room for half a batch: the next try
        comes soon again rather than ever later). ``kind`` names the trouble when its wording
        changes from try to try (a database that is down: refused, then timed out): logged once
        per kind then."""
        self.failures += 1
        key = kind or why
        logged, self._kind = self._kind, key
        if key != logged:
            self.log.error(
                "%s %s: %s; retrying by itself (first in %gs, then less often)",
                self.what,
                self.verb,
                why,
                self._delay if self.reason is None else self.first,
            )
            if self.reason is None:
                self._delay = self.first
        elif progress:
            self._delay = self.first
        else:
            self._delay = min(self._delay * 2, self.most)
        self.reason = why
        self._retry_at = self.clock.monotonic() + self._delay

    def cleared(self) -> None:
        """It worked: resume, and say so if it had been paused."""
        if self.reason is not None:
            self.log.warning(
                "%s resumed after %d failed tr%s (%s)",
                self.what,
                self.failures,
                "y" if self.failures == 1 else "ies",
                self.reason,
            )
        self.reason = None
        self._kind = None
        self.failures = 0
        self._delay = self.first

    def describe(self) -> str | None:
        """``why; retrying in 12s`` while paused, else None (for ``mqd status``)."""
        if self.reason is None:
            return None
        return f"{self.reason}; retrying in {self.retry_in():.0f}s"
