"""The relay contract: what a relay plugin implements and what it returns.

A relay is an object with ``async deliver(envelope) -> DeliveryResult``. It returns one
``Reply`` per recipient when the far end answered per recipient, and raises
``TransientRelayError`` / ``PermanentRelayError`` when the whole message failed. It never
decides about retries or bounces: the queue does, from the reply codes (``mqd.message.classify``).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Self

if TYPE_CHECKING:
    from mqd.config.options import Options
    from mqd.message.envelope import Envelope
    from mqd.plugins.webhooks import Webhook

from mqd.message.reply import Reply

__all__ = ["DeliveryResult", "Relay"]


@dataclass(frozen=True)
class DeliveryResult:
    """A relay's answer for one message: a reply for each recipient it was given."""

    replies: Mapping[str, Reply]
    #: The host that answered, for logs and the Remote-MTA field of bounces.
    remote: str | None = None
    #: The provider's id for the message, when it has one (for tracking).
    provider_id: str | None = None

    @classmethod
    def all(
        cls, recipients: tuple[str, ...], reply: Reply, *, remote: str | None = None
    ) -> DeliveryResult:
        """The same reply for every recipient."""
        return cls(dict.fromkeys(recipients, reply), remote=remote)


class Relay(abc.ABC):
    """Base class of every relay. Subclass it and register the class with a plugin."""

    #: True when the relay sends mail off this machine; its spools must then list allowed
    #: senders (mqd is never an open relay).
    network: ClassVar[bool] = True

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    @abc.abstractmethod
    def from_options(cls, name: str, options: Options) -> Self:
        """Build the relay from its config table. Read every key through ``options``;
        raise ``options.error(key, why)`` for a bad value. Do not connect here."""

    @abc.abstractmethod
    async def deliver(self, envelope: Envelope) -> DeliveryResult:
        """Deliver ``envelope``. Return a reply per recipient, or raise
        TransientRelayError / PermanentRelayError for a failure of the whole message."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release connections; called once when the daemon stops."""

    def describe(self) -> str:
        """A short human description for logs ("smtp.example.com:587 starttls")."""
        return type(self).__name__

    def webhook(self) -> Webhook | None:
        """The provider's status webhook for this relay, served at ``/webhooks/<name>`` when
        the daemon's ``[http]`` server is on; None (the default) when it has none or it is not
        configured. See mqd/webhooks.py."""
        return None
