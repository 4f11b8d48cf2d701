"""mqd: a mail queue daemon. The public API for plugins and embedding is what ``__all__`` lists.

Applications drop RFC 5322 messages into a spool directory; mqd claims each file atomically,
checks its sender, queues it durably and delivers it through a relay plugin, retrying
transient failures and bouncing permanent ones.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .envelope import Envelope
from .errors import (
    ConfigError,
    MessageParseError,
    MQDError,
    PermanentRelayError,
    PluginError,
    PolicyError,
    QueueError,
    QueueLockedError,
    RelayError,
    SpoolError,
    TransientRelayError,
)
from .hookspecs import hookimpl
from .options import Options, Secret
from .relays.base import DeliveryResult, Outcome, Relay, Reply
from .tracking.vocabulary import ProviderEvent, Status
from .webhooks import Webhook, WebhookRejected, WebhookReply, WebhookRequest

__all__ = [
    "ConfigError",
    "DeliveryResult",
    "Envelope",
    "MQDError",
    "MessageParseError",
    "Options",
    "Outcome",
    "PermanentRelayError",
    "PluginError",
    "PolicyError",
    "ProviderEvent",
    "QueueError",
    "QueueLockedError",
    "Relay",
    "RelayError",
    "Reply",
    "Secret",
    "SpoolError",
    "Status",
    "TransientRelayError",
    "Webhook",
    "WebhookRejected",
    "WebhookReply",
    "WebhookRequest",
    "__version__",
    "hookimpl",
]
