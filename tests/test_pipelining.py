"""SMTP PIPELINING (RFC 2920): with a server that offers it, MAIL, every RCPT and DATA go out
in one write, every reply is paired with its command however the replies arrive, and the
outcome is the same as command by command."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, SMTPProtocol, normalize_message_line_endings
from corehelpers import make_message
from faultsmtp import STALL, FaultSMTP, _Threaded
from hypothesis import given, settings
from hypothesis import strategies as st

from mqd.config.options import Options
from mqd.errors import TransientRelayError
from mqd.message.envelope import Envelope
from mqd.relays.smtp.pipelining import RELIED_ON, wire_data
from mqd.relays.smtp.relay import SMTPRelay

SENDER = "app@example.com"


class PipelineSink(_Threaded):
    """A scripted SMTP server on 127.0.0.1. Offering PIPELINING (``offer``), it reads a whole
    group (up to DATA) before it answers any of it, so a client that waits for the MAIL reply
    times out; it then answers in one write (``mode="together"``), one reply per write
    (``"apart"``) or a byte per write (``"bytes"``). With ``lockstep`` it answers each command
    as it comes and records in ``early`` every command sent before the one before was
    answered."""

    def __init__(
        self,
        *,
        offer: bool = True,
        lockstep: bool = False,
        mode: str = "together",
        replies: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.offer, self.lockstep, self.mode = offer, lockstep, mode
        self.replies = {
            "mail": "250 2.1.0 sender ok",
            "rcpt": "250 2.1.5 recipient ok",
            "data": "354 go ahead",
            "end": "250 2.0.0 queued",
            **(replies or {}),
        }
        self.groups: list[list[str]] = []
        self.bodies: list[bytes] = []
        self.early: list[str] = []
        self.commands: list[str] = []
        self.connections = 0

    def _reply(self, command: str) -> str:
        verb = command.split(" ", 1)[0].split(":", 1)[0].upper()
        if verb == "RCPT":
            address = command.partition("<")[2].partition(">")[0]
            return self.replies.get(f"rcpt:{address}", self.replies["rcpt"])
        return {
            "MAIL": self.replies["mail"],
            "DATA": self.replies["data"],
            "RSET": "250 2.0.0 reset",
            "QUIT": "221 2.0.0 bye",
        }.get(verb, "250 ok")

    def _handler(self):  # type: ignore[no-untyped-def]
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self._session(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        return handle

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink.test ESMTP\r\n")
        await reader.readline()  # EHLO
        offered = b"250-PIPELINING\r\n" if self.offer else b""
        writer.write(b"250-sink.test\r\n" + offered + b"250 8BITMIME\r\n")
        pending: bytes | None = None
        while True:
            line, pending = (pending, None) if pending else (await reader.readline(), None)
            if not line:
                return
            command = line.decode().strip()
            self.commands.append(command)
            if command.upper().startswith("MAIL") and self.offer and not self.lockstep:
                group = [command]
                while not group[-1].upper().startswith(("DATA", "QUIT")):
                    group.append((await reader.readline()).decode().strip())
                self.commands += group[1:]
                self.groups.append(group)
                answers = [self._reply(c) for c in group]
                await self._answer(writer, answers)
                if answers[0].startswith("421"):
                    return
                last = group[-1]
            else:
                if self.lockstep:  # did the client go on without waiting for this reply?
                    try:
                        pending = await asyncio.wait_for(reader.readline(), 0.05)
                    except TimeoutError:
                        pending = None
                    else:
                        self.early.append(pending.decode().strip())
                writer.write(self._reply(command).encode() + b"\r\n")
                last = command
            if last.upper() == "QUIT":
                return
            if last.upper() == "DATA" and self.replies["data"].startswith("354"):
                body = []
                while (chunk := await reader.readline()) not in (b".\r\n", b""):
                    body.append(chunk)
                self.bodies.append(b"".join(body))
                writer.write(self.replies["end"].encode() + b"\r\n")
                if self.replies["end"].startswith("421"):
                    return

    async def _answer(self, writer: asyncio.StreamWriter, replies: list[str]) -> None:
        if replies[0].startswith("421"):  # closing: nothing after it
            replies = replies[:1]
        blob = "".join(r + "\r\n" for r in replies).encode()
        if self.mode == "flood":  # one reply that never ends
            with contextlib.suppress(ConnectionError):
                for _ in range(2000):
                    writer.write(b"250-" + b"x" * 500 + b"\r\n")
                    await writer.drain()
            return
        if self.mode == "together":
            writer.write(blob)
        elif self.mode == "apart":
            for reply in replies:
                writer.write(reply.encode() + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)  # sleep-ok: a fake peer sends its replies apart
        else:
            for i in range(len(blob)):
                writer.write(blob[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.001)  # sleep-ok: a fake peer sends byte by byte
        await writer.drain()
        if replies[0].startswith("421"):
            writer.close()


def relay(port: int, **extra: Any) -> SMTPRelay:
    table = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "command_timeout": "2s",
        **extra,
    }
    return SMTPRelay.from_options("x", Options(table, section="relays.x", path=None))


def envelope(*rcpts: str, body: str = "hello") -> Envelope:
    return Envelope(SENDER, rcpts, make_message(SENDER, rcpts, body=body), id="q1")


@pytest.fixture
def sink_factory():  # type: ignore[no-untyped-def]
    started: list[PipelineSink] = []

    def make(**kwargs: Any) -> PipelineSink:
        sink = PipelineSink(**kwargs).start()
        started.append(sink)
        return sink

    yield make
    for sink in started:
        sink.stop()


async def deliver(sink: PipelineSink, *envelopes: Envelope, **extra: Any) -> list[Any]:
    client = relay(sink.port, **extra)
    try:
        return [await client.deliver(e) for e in envelopes]
    finally:
        await client.aclose()


@pytest.mark.parametrize("mode", ["together", "apart", "bytes"])
async def test_the_envelope_goes_in_one_group_and_every_reply_is_paired(
    sink_factory: Any, mode: str
) -> None:
    sink = sink_factory(mode=mode, replies={"rcpt:gone@example.net": "550 5.1.1 no such user"})
    first, second = await deliver(
        sink,
        envelope("a@example.net", "gone@example.net", "b@example.net"),
        envelope("c@example.net", body=".leading dot\n..two"),
    )
    assert [group[1:] for group in sink.groups] == [
        [
            "RCPT TO:<a@example.net>",
            "RCPT TO:<gone@example.net>",
            "RCPT TO:<b@example.net>",
            "DATA",
        ],
        ["RCPT TO:<c@example.net>", "DATA"],
    ]
    assert [group[0] for group in sink.groups] == ["MAIL FROM:<app@example.com>"] * 2
    assert {r: (x.code, x.enhanced, x.message) for r, x in first.replies.items()} == {
        "a@example.net": (250, "2.0.0", "queued"),
        "gone@example.net": (550, "5.1.1", "no such user"),
        "b@example.net": (250, "2.0.0", "queued"),
    }
    assert second.replies["c@example.net"].code == 250
    assert sink.connections == 1  # the connection is reused after a pipelined transaction
    assert len(sink.bodies) == 2
    assert b"\r\n..leading dot\r\n...two" in sink.bodies[1]  # dot-stuffed on the wire


async def test_a_refused_sender_refuses_every_recipient(sink_factory: Any) -> None:
    sink = sink_factory(
        replies={
            "mail": "553 5.7.1 sender not allowed",
            "rcpt": "503 5.5.1 need MAIL",
            "data": "503 5.5.1 need RCPT",
        }
    )
    (result,) = await deliver(sink, envelope("a@example.net", "b@example.net"))
    assert {r: x.code for r, x in result.replies.items()} == {
        "a@example.net": 553,
        "b@example.net": 553,
    }
    assert sink.bodies == []
    assert sink.commands[-2:] == ["RSET", "QUIT"]


async def test_data_accepted_with_no_recipient_is_ended_empty(sink_factory: Any) -> None:
    # RFC 2920 3.1: the client may not assume DATA is refused when every RCPT was.
    sink = sink_factory(replies={"rcpt": "550 5.1.1 no such user"})
    (result,) = await deliver(sink, envelope("a@example.net"))
    assert result.replies["a@example.net"].code == 550
    assert sink.bodies == [b""]  # a lone dot, not the message
    assert "RSET" in sink.commands


async def test_a_refused_body_is_the_accepted_recipients_reply(sink_factory: Any) -> None:
    sink = sink_factory(
        replies={"end": "554 5.6.0 content rejected", "rcpt:x@example.net": "550 5.1.1 no"}
    )
    (result,) = await deliver(sink, envelope("a@example.net", "x@example.net"))
    assert {r: x.code for r, x in result.replies.items()} == {
        "a@example.net": 554,
        "x@example.net": 550,
    }
    assert "RSET" in sink.commands


async def test_a_closing_server_defers_the_message_and_is_not_reused(
    sink_factory: Any,
) -> None:
    # 421 to MAIL: the server answers nothing more and closes. The recipients get the 421 (a
    # deferral, as command by command), and the next message goes on a new connection.
    sink = sink_factory(replies={"mail": "421 4.3.2 shutting down"})
    first, second = await asyncio.wait_for(
        deliver(sink, envelope("a@example.net", "b@example.net"), envelope("c@example.net")), 10
    )
    assert {x.code for x in first.replies.values()} == {421}
    assert second.replies["c@example.net"].code == 421
    assert sink.connections == 2
    assert sink.bodies == []


async def test_without_the_offer_commands_go_one_at_a_time(sink_factory: Any) -> None:
    sink = sink_factory(offer=False, lockstep=True)
    (result,) = await deliver(sink, envelope("a@example.net", "b@example.net"))
    assert {x.code for x in result.replies.values()} == {250}
    assert sink.early == []
    assert [c.split(" ")[0].split(":")[0] for c in sink.commands[:4]] == [
        "MAIL",
        "RCPT",
        "RCPT",
        "DATA",
    ]


async def test_pipelining_false_turns_it_off_for_a_server_that_offers_it(
    sink_factory: Any,
) -> None:
    sink = sink_factory(offer=True, lockstep=True)
    (result,) = await deliver(sink, envelope("a@example.net"), pipelining=False)
    assert result.replies["a@example.net"].code == 250
    assert sink.early == []
    # the same sink, with pipelining on, sees the RCPT before it answered the MAIL
    (again,) = await deliver(sink, envelope("a@example.net"))
    assert again.replies["a@example.net"].code == 250
    assert sink.early[:2] == ["RCPT TO:<a@example.net>", "DATA"]


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b"x.y"])).map(b"".join))
def test_the_data_on_the_wire_is_what_aiosmtplib_would_send(message: bytes) -> None:
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"
    assert wire_data(message) == expected


@pytest.mark.parametrize("stage", ["rcpt", "data", "end"])
async def test_a_server_that_stops_answering_is_a_timeout_and_the_connection_is_dropped(
    stage: str,
) -> None:
    ehlo = "250-fault.test\r\n250-PIPELINING\r\n250 8BITMIME"
    server = FaultSMTP({"ehlo": ehlo, stage: STALL}).start()
    client = relay(server.port, command_timeout="0.3s", data_timeout="0.3s")
    try:
        with pytest.raises(TransientRelayError) as caught:
            await asyncio.wait_for(client.deliver(envelope("a@example.net")), 10)
        assert client._pool._idle == []  # never pooled: its replies could no longer be paired
    finally:
        await client.aclose()
        server.stop()
    assert caught.value.reply is not None and caught.value.reply.code == 451
    assert "did not answer in time" in str(caught.value)


async def test_the_installed_aiosmtplib_has_what_pipelining_relies_on() -> None:
    # Should a release rename its protocol's private state, connections would silently go one
    # command at a time: this says so instead.
    protocol = SMTPProtocol(loop=asyncio.get_running_loop())
    missing = [name for name in RELIED_ON if not hasattr(protocol, name)]
    assert not missing, f"aiosmtplib's protocol lacks {missing}: see mqd/relays/smtp/pipelining.py"


async def test_a_large_group_is_not_taken_for_an_endless_reply(sink_factory: Any) -> None:
    # 1,500 RCPT replies in one write are ~40 KB: more than aiosmtplib allows for one reply,
    # and all of them legitimate.
    sink = sink_factory(mode="together")
    rcpts = tuple(f"user{i}@example.net" for i in range(1500))
    (result,) = await deliver(sink, envelope(*rcpts))
    assert len(result.replies) == 1500
    assert {x.code for x in result.replies.values()} == {250}
    assert len(sink.groups[0]) == 1502


async def test_a_reply_without_end_drops_the_connection(sink_factory: Any) -> None:
    sink = sink_factory(mode="flood")
    with pytest.raises(TransientRelayError) as caught:
        await asyncio.wait_for(deliver(sink, envelope("a@example.net")), 10)
    assert "Response too long" in str(caught.value)  # bounded, not waited out to a timeout
