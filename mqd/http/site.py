"""What the HTTP server sees of the daemon: its config, its relays (for their webhooks), the event
store, the queue's administration and the running intake sources (the submit API's). Nothing
else of the daemon is reachable from here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from mqd.admin.service import QueueAdmin
from mqd.config.schema import Config
from mqd.intake.source import Source
from mqd.relays.base import Relay

if TYPE_CHECKING:
    from mqd.tracking.tracker import Tracker

__all__ = ["Site"]


class Site(Protocol):
    @property
    def config(self) -> Config: ...
    @property
    def relays(self) -> Mapping[str, Relay]: ...
    @property
    def tracker(self) -> Tracker | None: ...
    @property
    def admin(self) -> QueueAdmin: ...
    def intake_sources(self) -> Sequence[Source]:
        """The running intake sources ([[submit]] is served here: ``mqd.http.submit``)."""
        ...
