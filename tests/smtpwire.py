"""What the SMTP submission hostile-input suites share (tests/test_hostile_smtpd.py,
tests/test_hostile_smtp_session.py): their config, a raw SMTP client that writes exact bytes,
and the allowed message sent last."""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

from corehelpers import make_message
from smtpserver import SMTPPeer
from sourcerun import Running

from mqd.config.load import load_config
from mqd.config.schema import Config

__all__ = ["Wire", "canary", "crlf", "smtpd_configs"]


def crlf(data: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def smtpd_configs(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path, smtp_server: SMTPPeer
) -> Callable[..., Config]:
    """A config relaying to the sink with one [[smtpd]] table allowing ``*@example.com`` and
    the one address ``sales@shop.example``; ``smtpd`` adds lines to the table."""

    def make(smtpd: str = "", listen: str = "127.0.0.1:0") -> Config:
        text = f"""
            [queue]
            dir = "{queue_dir}"
            [[spool]]
            path = "{spool}"
            allowed_senders = ["*@example.com"]
            [relays.sink]
            plugin = "smtp"
            host = "127.0.0.1"
            port = {smtp_server.port}
            security = "none"
            [[smtpd]]
            listen = ["{listen}"]
            relay = "sink"
            allowed_senders = ["*@example.com", "sales@shop.example"]
        """
        return load_config(write_config(textwrap.dedent(text) + textwrap.dedent(smtpd)))

    return make


class Wire:
    """A raw SMTP client: exact bytes out, each reply's last line back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Wire:
        wire = cls(*await asyncio.open_connection("127.0.0.1", port))
        assert (await wire.reply()).startswith("220")
        assert (await wire.command(b"EHLO app.test")).startswith("250")
        return wire

    async def reply(self) -> str:
        line = await asyncio.wait_for(self.reader.readline(), 10)
        while line[3:4] == b"-":
            line = await asyncio.wait_for(self.reader.readline(), 10)
        return line.decode("utf-8", "replace").rstrip()

    async def command(self, line: bytes) -> str:
        self.writer.write(line + b"\r\n")
        return await self.reply()

    async def send(self, sender: bytes, data: bytes, rcpt: bytes = b"alice@example.net") -> str:
        """One transaction: the answer to MAIL when it is not 250, else the answer to DATA."""
        answer = await self.command(b"MAIL FROM:" + sender)
        if not answer.startswith("250"):
            return answer
        assert (await self.command(b"RCPT TO:<" + rcpt + b">")).startswith("250")
        assert (await self.command(b"DATA")).startswith("354")
        self.writer.write(crlf(data) + b".\r\n")
        return await self.reply()

    async def close(self) -> None:
        self.writer.write(b"QUIT\r\n")
        self.writer.close()
        await self.writer.wait_closed()


async def canary(mqd: Running, sender: str = "app@example.com") -> None:
    """An allowed message, sent last: once it arrives, what came before had its chance."""
    wire = await Wire.open(mqd.port)
    answer = await wire.send(f"<{sender}>".encode(), make_message(sender=sender, subject="ok"))
    assert answer.startswith("250 2.0.0"), answer
    await wire.close()
