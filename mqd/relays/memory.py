"""Default plugin: a relay that keeps messages in memory, for tests (yours and a plugin's).

``plugin = "memory"``. Every instance is also reachable as ``MemoryRelay.instances[name]``;
``sent`` holds the delivered envelopes, and ``replies`` maps a recipient to the Reply to give
it (default 250). ``raise_error`` makes the next deliveries raise that error instead.
"""

from __future__ import annotations

from typing import ClassVar, Self

from mqd.config.options import Options
from mqd.errors import RelayError
from mqd.message.envelope import Envelope
from mqd.message.reply import Reply
from mqd.plugins.hookspecs import RegisterRelay, hookimpl
from mqd.relays.base import DeliveryResult, Relay

__all__ = ["MemoryRelay"]

OK = Reply(250, "OK", "2.0.0")


class MemoryRelay(Relay):
    network = False
    instances: ClassVar[dict[str, MemoryRelay]] = {}

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.sent: list[Envelope] = []
        self.replies: dict[str, Reply] = {}
        self.raise_error: RelayError | None = None
        MemoryRelay.instances[name] = self

    @classmethod
    def from_options(cls, name: str, options: Options) -> Self:
        return cls(name)

    def describe(self) -> str:
        return "memory (tests)"

    async def deliver(self, envelope: Envelope) -> DeliveryResult:
        if self.raise_error is not None:
            raise self.raise_error
        replies = {rcpt: self.replies.get(rcpt, OK) for rcpt in envelope.recipients}
        delivered = tuple(r for r, reply in replies.items() if reply.code // 100 == 2)
        if delivered:
            self.sent.append(Envelope(envelope.sender, delivered, envelope.message, envelope.id))
        return DeliveryResult(replies, remote="memory")


@hookimpl
def mqd_register_relays(register: RegisterRelay) -> None:
    register("memory", MemoryRelay)
