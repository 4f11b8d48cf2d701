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

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ resolves these
    from typing import Any

    from mqd.clock import ManualClock
    from mqd.config.options import Options, Secret
    from mqd.config.schema import Config, SourceConfig, SpoolConfig
    from mqd.errors import (
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
        SubmissionError,
        TransientRelayError,
    )
    from mqd.events import (
        Attempted,
        Bounced,
        Claimed,
        Completed,
        Deferred,
        Deleted,
        Delivered,
        Event,
        EventKind,
        Failed,
        MessageEvent,
        Queued,
        RecipientEvent,
        Rejected,
        RelayCall,
        Suppressed,
    )
    from mqd.intake.source import (
        HandOver,
        Login,
        RegisterSource,
        Source,
        SourceStatus,
        Submission,
    )
    from mqd.message.envelope import Envelope, ParsedMessage
    from mqd.message.reply import Outcome, Reply
    from mqd.plugins.hookspecs import RegisterRelay, hookimpl
    from mqd.plugins.host import PluginHost
    from mqd.plugins.webhooks import Webhook, WebhookRejected, WebhookReply, WebhookRequest
    from mqd.queue.entry import QueueEntry, RcptStatus, RecipientState
    from mqd.queue.keys import Handed
    from mqd.relays.base import DeliveryResult, Relay
    from mqd.tracking.vocabulary import ProviderEvent, Status
    from mqd.version import __version__

#: Public name -> the module that defines it.
_LAZY = {
    "Attempted": "mqd.events",
    "Bounced": "mqd.events",
    "ManualClock": "mqd.clock",
    "Claimed": "mqd.events",
    "Completed": "mqd.events",
    "Config": "mqd.config.schema",
    "ConfigError": "mqd.errors",
    "Deferred": "mqd.events",
    "Deleted": "mqd.events",
    "Delivered": "mqd.events",
    "DeliveryResult": "mqd.relays.base",
    "Envelope": "mqd.message.envelope",
    "Event": "mqd.events",
    "EventKind": "mqd.events",
    "Failed": "mqd.events",
    "HandOver": "mqd.intake.source",
    "Handed": "mqd.queue.keys",
    "Login": "mqd.intake.source",
    "MQDError": "mqd.errors",
    "MessageEvent": "mqd.events",
    "MessageParseError": "mqd.errors",
    "Options": "mqd.config.options",
    "Outcome": "mqd.message.reply",
    "ParsedMessage": "mqd.message.envelope",
    "PermanentRelayError": "mqd.errors",
    "PluginError": "mqd.errors",
    "PluginHost": "mqd.plugins.host",
    "PolicyError": "mqd.errors",
    "ProviderEvent": "mqd.tracking.vocabulary",
    "QueueEntry": "mqd.queue.entry",
    "QueueError": "mqd.errors",
    "QueueLockedError": "mqd.errors",
    "Queued": "mqd.events",
    "RcptStatus": "mqd.queue.entry",
    "RecipientEvent": "mqd.events",
    "Suppressed": "mqd.events",
    "RecipientState": "mqd.queue.entry",
    "RegisterRelay": "mqd.plugins.hookspecs",
    "RegisterSource": "mqd.intake.source",
    "Rejected": "mqd.events",
    "Relay": "mqd.relays.base",
    "RelayCall": "mqd.events",
    "RelayError": "mqd.errors",
    "Reply": "mqd.message.reply",
    "Secret": "mqd.config.options",
    "Source": "mqd.intake.source",
    "SourceConfig": "mqd.config.schema",
    "SourceStatus": "mqd.intake.source",
    "SpoolConfig": "mqd.config.schema",
    "SpoolError": "mqd.errors",
    "Status": "mqd.tracking.vocabulary",
    "Submission": "mqd.intake.source",
    "SubmissionError": "mqd.errors",
    "TransientRelayError": "mqd.errors",
    "Webhook": "mqd.plugins.webhooks",
    "WebhookRejected": "mqd.plugins.webhooks",
    "WebhookReply": "mqd.plugins.webhooks",
    "WebhookRequest": "mqd.plugins.webhooks",
    "__version__": "mqd.version",
    "hookimpl": "mqd.plugins.hookspecs",
}

__all__ = [
    "Attempted",
    "Bounced",
    "Claimed",
    "Completed",
    "Config",
    "ConfigError",
    "Deferred",
    "Deleted",
    "Delivered",
    "DeliveryResult",
    "Envelope",
    "Event",
    "EventKind",
    "Failed",
    "HandOver",
    "Handed",
    "Login",
    "MQDError",
    "ManualClock",
    "MessageEvent",
    "MessageParseError",
    "Options",
    "Outcome",
    "ParsedMessage",
    "PermanentRelayError",
    "PluginError",
    "PluginHost",
    "PolicyError",
    "ProviderEvent",
    "QueueEntry",
    "QueueError",
    "QueueLockedError",
    "Queued",
    "RcptStatus",
    "RecipientEvent",
    "RecipientState",
    "RegisterRelay",
    "RegisterSource",
    "Rejected",
    "Relay",
    "RelayCall",
    "RelayError",
    "Reply",
    "Secret",
    "Source",
    "SourceConfig",
    "SourceStatus",
    "SpoolConfig",
    "SpoolError",
    "Status",
    "Submission",
    "SubmissionError",
    "Suppressed",
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

        value = getattr(import_module(module), name)
        globals()[name] = value  # resolved once; later lookups do not come here
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
