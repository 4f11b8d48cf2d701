"""An address the SMTP relay cannot write on the wire (``a"b@example.net``, which aiosmtplib would
send as ``<a>``) fails alone: its recipient gets a permanent 553 5.1.3 and the others are sent in
the same transaction; a message with no writable recipient opens no connection. And an exception
from mqd's own code inside the transaction defers the mail, it never bounces it. Against a real
aiosmtpd server, stepwise and pipelined, and once through the daemon."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from corehelpers import make_message
from smtpserver import SMTPPeer

from mqd.config.options import Options
from mqd.errors import PermanentRelayError, TransientRelayError
from mqd.message.envelope import Envelope
from mqd.plugins.host import PluginHost
from mqd.relays.smtp import transaction
from mqd.relays.smtp.relay import SMTPRelay
from mqd.relays.smtp.wire import wire_address
from mqd.testing import Harness

SENDER = "app@example.com"
BAD = 'a"b@example.net'  # aiosmtplib's parser reads it as <a>
GOOD = "good@example.net"


@pytest.mark.parametrize(
    ("address", "wire"),
    [
        ("bob@example.net", b"<bob@example.net>"),
        ("", b"<>"),  # the null sender
        ('"a b"@example.net', b'<"a b"@example.net>'),
        ("j\u00f6rg@example.de", "<j\u00f6rg@example.de>".encode()),
        (BAD, "would go out as <a>"),
        ("a(b)@example.net", "would go out as <a@example.net>"),
        ("a b@example.net", "not permitted in an SMTP mailbox"),
        ("a\x00b@example.net", "control character"),
        ('"a\x7fb"@example.net', "control character"),
        ("a\udcffb@example.net", "not valid Unicode"),
    ],
)
def test_an_address_is_written_as_itself_or_refused_naming_why(
    address: str, wire: bytes | str
) -> None:
    if isinstance(wire, bytes):
        assert wire_address(address) == wire
    else:
        with pytest.raises(ValueError, match=re.escape(wire)):
            wire_address(address)


@pytest.fixture(params=[True, False], ids=["pipelined", "stepwise"])
def peer(request: pytest.FixtureRequest) -> Iterator[SMTPPeer]:
    server = SMTPPeer(pipelining=request.param).start()
    yield server
    server.stop()


def relay_for(peer: SMTPPeer) -> SMTPRelay:
    table = {"host": "127.0.0.1", "port": peer.port, "security": "none", "command_timeout": "5s"}
    return SMTPRelay.from_options("x", Options(table, section="relays.x", path=None))


def envelope(*recipients: str, sender: str = SENDER) -> Envelope:
    return Envelope(sender, recipients, make_message(sender, (GOOD,)), id="q1")


@pytest.mark.parametrize(
    ("bad", "why"),
    [(BAD, "would go out as <a>"), ("x\x00y@example.net", "holds a control character")],
)
async def test_only_the_unwritable_recipient_fails_the_others_are_sent(
    peer: SMTPPeer, bad: str, why: str
) -> None:
    relay = relay_for(peer)
    try:
        result = await relay.deliver(envelope(bad, GOOD))
        [conn] = relay._pool._idle  # the transaction ended cleanly
        assert (conn.pipeline is not None) is peer.pipelining  # the path under test was taken
    finally:
        await relay.aclose()
    refused, good = result.replies[bad], result.replies[GOOD]
    assert good.code == 250
    assert (refused.code, refused.enhanced) == (553, "5.1.3")
    assert repr(bad) in refused.message and why in refused.message
    assert peer.commands == [("MAIL", SENDER), ("RCPT", GOOD)]  # exactly one RCPT
    [received] = peer.wait_for(1)
    assert received.rcpt_tos == [GOOD]


async def test_a_refused_non_ascii_recipient_does_not_ask_for_smtputf8(peer: SMTPPeer) -> None:
    odd = 'j\u00f6"rg@example.de'
    relay = relay_for(peer)
    try:
        result = await relay.deliver(envelope(odd, GOOD))
    finally:
        await relay.aclose()
    assert result.replies[GOOD].code == 250 and result.replies[odd].code == 553
    [received] = peer.wait_for(1)
    assert "SMTPUTF8" not in received.mail_options


async def test_no_writable_recipient_opens_no_connection(peer: SMTPPeer) -> None:
    relay = relay_for(peer)
    odd = "c(d)@example.net"  # would go out as <c@example.net>
    try:
        result = await relay.deliver(envelope(BAD, odd))
    finally:
        await relay.aclose()
    assert {a: (r.code, r.enhanced) for a, r in result.replies.items()} == {
        BAD: (553, "5.1.3"),
        odd: (553, "5.1.3"),
    }
    assert "<c@example.net>" in result.replies[odd].message
    assert peer.connections == 0 and peer.commands == []


async def test_an_unwritable_sender_fails_the_message_with_5_1_7(peer: SMTPPeer) -> None:
    relay = relay_for(peer)
    try:
        with pytest.raises(PermanentRelayError) as caught:
            await relay.deliver(envelope(GOOD, sender='x"y@example.com'))
    finally:
        await relay.aclose()
    reply = caught.value.reply
    assert reply is not None and (reply.code, reply.enhanced) == (553, "5.1.7")
    assert "would go out as <x>" in reply.message
    assert peer.connections == 0


@pytest.mark.parametrize("error", [ValueError, TypeError, KeyError])
async def test_an_unexpected_exception_in_the_transaction_is_transient(
    peer: SMTPPeer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: type[Exception],
) -> None:
    """A bug (here injected where MAIL's words are made) says nothing about the message: the
    mail is kept and retried, and the traceback is logged."""

    def broken(*args: object) -> tuple[bytes, ...]:
        raise error("injected")

    monkeypatch.setattr(transaction, "mail_words", broken)
    relay = relay_for(peer)
    try:
        with (
            caplog.at_level(logging.ERROR, logger="mqd.relay.smtp"),
            pytest.raises(TransientRelayError) as caught,
        ):
            await relay.deliver(envelope(GOOD))
        assert relay._pool._idle == []  # a connection in an unknown state is not reused
    finally:
        await relay.aclose()
    reply = caught.value.reply
    assert reply is not None and (reply.code, reply.enhanced) == (451, "4.3.0")
    assert f"{error.__name__}" in reply.message and "(a bug?)" in reply.message
    [record] = [r for r in caplog.records if r.name == "mqd.relay.smtp"]
    assert record.exc_info is not None and record.exc_info[0] is error
    assert peer.messages == []


async def test_through_the_daemon_the_good_recipient_is_delivered_once_the_bad_one_bounces(
    mqd_harness: Harness, smtp_server: SMTPPeer, host: PluginHost
) -> None:
    mqd_harness.configure(
        {
            "sink": {
                "plugin": "smtp",
                "host": "127.0.0.1",
                "port": smtp_server.port,
                "security": "none",
            }
        }
    )
    mqd_harness.drop(
        f"X-Sender: {SENDER}\r\nX-Receiver: {BAD}\r\nX-Receiver: {GOOD}\r\n".encode()
        + make_message(SENDER, (GOOD,), subject="mixed")
    )
    await mqd_harness.run_once(host=host)
    await mqd_harness.run_once(host=host)  # nothing is left to send: the good one is not resent

    assert [c for c in smtp_server.commands if c[0] == "RCPT"].count(("RCPT", GOOD)) == 1
    assert ("RCPT", BAD) not in smtp_server.commands
    to_good = [m for m in smtp_server.messages if m.rcpt_tos == [GOOD]]
    assert len(to_good) == 1 and b"Subject: mixed" in to_good[0].data
    [dsn] = [m for m in smtp_server.messages if m.mail_from in ("", "<>")]
    assert dsn.rcpt_tos == [SENDER]
    assert BAD.encode() in dsn.data and b"5.1.3" in dsn.data
    assert mqd_harness.queued() == []
    [failed] = mqd_harness.failed()  # the original and its reason, for the bad recipient
    assert failed["stage"] == "delivery" and BAD in failed["reason"]
    assert "would go out as <a>" in failed["reason"]
    assert [(r["address"], r["status"], r["status_code"]) for r in failed["recipients"]] == [
        (BAD, "failed", "5.1.3"),
        (GOOD, "delivered", "2.0.0"),
    ]
