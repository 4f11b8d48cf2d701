"""The tracker's event store as ``mqd status`` shows a fault (``mqd.faults.Paused``): while it
cannot be written, the history waits (its events kept in memory, see ``mqd.tracking.keeper``)
and the operator should know, as for any resource that paused what needs it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mqd.tracking.keeper import StoreKeeper

__all__ = ["TrackingPause"]


class TrackingPause:
    """``mqd.faults.Paused`` for a ``StoreKeeper`` (read from the event loop: plain attributes
    the writer thread sets)."""

    what = "tracking (the history)"

    def __init__(self, keeper: StoreKeeper) -> None:
        self._keeper = keeper

    @property
    def reason(self) -> str | None:
        why = self._keeper.paused
        if why is None:
            return None
        kept = len(self._keeper.backlog)
        return f"{why} ({kept} event(s) kept to write when it works again)" if kept else why

    @property
    def active(self) -> bool:
        return self._keeper.paused is not None

    def retry_in(self) -> float:
        return self._keeper.retry_in() or 0.0
