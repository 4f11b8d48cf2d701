"""The Prometheus endpoint (``[metrics]``). Stub: being written."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .events import Event

if TYPE_CHECKING:
    from .daemon import Daemon

__all__ = ["MetricsServer"]


class MetricsServer:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.port = 0

    def start(self) -> None:
        """Listen on ``[metrics] host:port`` (port 0: any free port, then ``self.port``)."""

    def observe(self, event: Event) -> None:
        """Count one event (called on the event loop for every event the daemon emits)."""

    def stop(self) -> None:
        """Stop listening."""
