"""Default plugin: the development relay that writes each message into a local folder.

Like Django's file e-mail backend: nothing leaves the machine, so it needs no allowed senders.
Each delivered message becomes ``<folder>/<queue id>.eml``, starting with ``X-Sender:`` /
``X-Receiver:`` lines that record the envelope (the same format mqd reads from a spool).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Self

from mqd.config.options import Options
from mqd.fsutil import atomic_write, make_dirs
from mqd.message.envelope import Envelope
from mqd.message.reply import Reply
from mqd.plugins.hookspecs import RegisterRelay, hookimpl
from mqd.relays.base import DeliveryResult, Relay

__all__ = ["OutboxRelay"]


class OutboxRelay(Relay):
    network = False

    def __init__(self, name: str, folder: Path) -> None:
        super().__init__(name)
        self.folder = folder

    @classmethod
    def from_options(cls, name: str, options: Options) -> Self:
        return cls(name, options.filepath("path"))

    def describe(self) -> str:
        return f"outbox folder {self.folder} (development: nothing is sent)"

    async def deliver(self, envelope: Envelope) -> DeliveryResult:
        lines = [f"X-Sender: <{envelope.sender}>"]
        lines += [f"X-Receiver: <{rcpt}>" for rcpt in envelope.recipients]
        head = ("\r\n".join(lines) + "\r\n").encode("utf-8")
        target = self.folder / f"{envelope.id or 'message'}.eml"
        await asyncio.to_thread(self._write, target, head + envelope.message)
        return DeliveryResult.all(
            envelope.recipients, Reply(250, f"written to {target}", "2.0.0"), remote="outbox"
        )

    def _write(self, target: Path, data: bytes) -> None:
        make_dirs(self.folder)
        atomic_write(target, data, mode=0o644)


@hookimpl
def mqd_register_relays(register: RegisterRelay) -> None:
    register("outbox", OutboxRelay)
