"""mqd: a mail queue daemon. The public API for plugins and embedding is what ``__all__`` lists.

Applications drop RFC 5322 messages into a spool directory; mqd claims each file atomically,
checks its sender, queues it durably and delivers it through a relay plugin, retrying
transient failures and bouncing permanent ones.

The public names are imported on first use (module ``__getattr__``): ``mqd sendmail`` runs once
per message, and importing the package must not cost it email.policy, pluggy or the daemon.
"""

# Not typing.TYPE_CHECKING: importing typing alone costs the sendmail path a few ms. Type checkers
# treat any name TYPE_CHECKING as true.
TYPE_CHECKING = False

__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ resolves these
    from typing import Any

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

#: Public name -> the module that defines it.
_LAZY = {
    "ConfigError": ".errors",
    "DeliveryResult": ".relays.base",
    "Envelope": ".envelope",
    "MQDError": ".errors",
    "MessageParseError": ".errors",
    "Options": ".options",
    "Outcome": ".relays.base",
    "PermanentRelayError": ".errors",
    "PluginError": ".errors",
    "PolicyError": ".errors",
    "ProviderEvent": ".tracking.vocabulary",
    "QueueError": ".errors",
    "QueueLockedError": ".errors",
    "Relay": ".relays.base",
    "RelayError": ".errors",
    "Reply": ".relays.base",
    "Secret": ".options",
    "SpoolError": ".errors",
    "Status": ".tracking.vocabulary",
    "TransientRelayError": ".errors",
    "Webhook": ".webhooks",
    "WebhookRejected": ".webhooks",
    "WebhookReply": ".webhooks",
    "WebhookRequest": ".webhooks",
    "hookimpl": ".hookspecs",
}

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


if not TYPE_CHECKING:  # hidden from type checkers, so that a misspelt name stays an error

    def __getattr__(name: str) -> "Any":
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'mqd' has no attribute {name!r}")
        from importlib import import_module  # here: importlib costs mqd sendmail an import

        value = getattr(import_module(module, __name__), name)
        globals()[name] = value  # resolved once; later lookups do not come here
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
