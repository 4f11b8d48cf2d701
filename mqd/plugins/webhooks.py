"""Provider status webhooks: what a relay plugin implements to take its provider's signed events.

A relay whose provider reports delivery, opens, bounces ... returns a :class:`Webhook` from
``Relay.webhook()``. The daemon's HTTP server (``[http]``) then serves it at
``/webhooks/<relay name>``, hands it each request (body already size-limited), and records the
events it returns in the event store, matched to messages and de-duplicated by ``event_id``.

The webhook owns authenticity: it checks the provider's signature, timestamp and whatever else
proves the request genuine, and raises :class:`WebhookRejected` otherwise, before anything is
recorded. It is framework-neutral (no HTTP library's types), so it is tested with plain objects.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mqd.tracking.vocabulary import ProviderEvent

__all__ = ["Webhook", "WebhookRejected", "WebhookReply", "WebhookRequest"]


@dataclass(frozen=True)
class WebhookRequest:
    method: str
    #: Header names are lower-case.
    headers: Mapping[str, str]
    body: bytes
    #: The peer's address (the proxy's, behind a reverse proxy).
    remote: str
    #: When the daemon received it (seconds since the epoch): compare timestamps against this.
    received_at: float
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WebhookReply:
    """What to record and what to answer. ``events`` are recorded before the answer is sent."""

    events: Sequence[ProviderEvent] = ()
    status: int = 200
    body: str = "ok"


class WebhookRejected(Exception):
    """The request is not genuine (bad signature, stale timestamp, wrong topic ...) or not
    understood: answered with ``status`` and nothing is recorded. The message is logged (never
    echoed to the caller), so say precisely what failed."""

    def __init__(self, message: str, *, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class Webhook(abc.ABC):
    #: The name events are recorded under as their source ("sendgrid", "ses").
    source: str = "provider"

    @abc.abstractmethod
    async def handle(self, request: WebhookRequest) -> WebhookReply:
        """Verify ``request`` and return its events; raise WebhookRejected if it is not genuine.

        Called on the daemon's event loop: do blocking work (a certificate fetch) without
        blocking it, and keep it short (providers time out after some seconds)."""
