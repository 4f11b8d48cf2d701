"""The relay contract: what a relay plugin implements and what it returns.

A relay is an object with ``async deliver(envelope) -> DeliveryResult``. It returns one
``Reply`` per recipient when the far end answered per recipient, and raises
``TransientRelayError`` / ``PermanentRelayError`` when the whole message failed. It never
decides about retries or bounces: the queue does, from the reply codes (``mqd.classify``).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar, Self

if TYPE_CHECKING:
    from ..envelope import Envelope
    from ..options import Options
    from ..webhooks import Webhook

__all__ = ["DeliveryResult", "Outcome", "Relay", "Reply"]

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


class Outcome(StrEnum):
    """What happened to one recipient."""

    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Reply:
    """An SMTP-style reply: a code, the text, and the enhanced status code (RFC 3463) if any.

    HTTP relays answer in the same terms (e.g. 250 for accepted, 554 for a rejected message).
    """

    code: int
    message: str = ""
    enhanced: str | None = None

    @classmethod
    def parse(cls, code: int, message: str) -> Reply:
        """A Reply whose enhanced status code is read from the start of ``message``."""
        text = " ".join(message.split())
        match = _ENHANCED.match(text)
        if match:
            return cls(code, text[match.end() :].strip(), match.group(0))
        return cls(code, text)

    @property
    def status(self) -> str:
        """The enhanced status code, or one derived from the basic code class (RFC 3463).

        When the enhanced code's class disagrees with the basic code, the class is corrected
        to match the code (which decides the outcome), keeping the detail: 550 + 4.2.2 -> 5.2.2.
        """
        klass = {2: "2", 4: "4", 5: "5"}.get(self.code // 100, "4")
        if self.enhanced:
            return klass + self.enhanced[1:]
        return f"{klass}.0.0"

    def __str__(self) -> str:
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        if self.message:
            parts.append(self.message)
        return " ".join(parts)


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
