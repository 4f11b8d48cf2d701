"""Tracking: every message's timeline in an event store, fed by mqd's own events and by the
providers' webhooks, queried by ``mqd history``, the JSON API and the web view."""

from __future__ import annotations

from mqd.tracking.vocabulary import RANK, ProviderEvent, Status

__all__ = ["RANK", "ProviderEvent", "Status"]
