"""Hostile input through SMTP submission ([[smtpd]]), the addresses and the headers: a real
daemon in this process listening on 127.0.0.1 (port 0), a raw socket as the client, and the
in-test SMTP sink as the relay's peer. Each case asserts the answer (code and enhanced status
code) and that nothing from a sender that is not allowed reaches the sink: an allowed message
sent last arrives alone.

Address tricks at MAIL FROM, header spoofs at the end of DATA, envelope lines smuggled into
DATA. AUTH, SMTP smuggling and the limits: tests/test_hostile_smtp_session.py. The spool path's
hostile input is tests/test_hostile_input.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from corehelpers import make_message
from smtpserver import SMTPPeer
from smtpwire import Wire, canary, smtpd_configs
from sourcerun import running, sink_holds_only

from mqd.config.schema import Config
from mqd.plugins.host import PluginHost


@pytest.fixture
def make_config(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path, smtp_server: SMTPPeer
) -> Callable[..., Config]:
    """``make(smtpd=..., listen=...)``: see ``smtpwire.smtpd_configs``."""
    return smtpd_configs(write_config, spool, queue_dir, smtp_server)


#: MAIL FROM arguments that name a sender the table does not allow, and the answer each gets.
ADDRESS_TRICKS = [
    ("<@example.com:evil@evil.test>", "550 5.7.1"),  # a source route: the address is evil's
    ('<"app@example.com"@evil.test>', "550 5.7.1"),  # a quoted local part holding an @
    ("<app%example.com@evil.test>", "550 5.7.1"),  # the percent hack
    ("<example.com!app@evil.test>", "550 5.7.1"),  # a bang path
    ("<app@evil.test@example.com>", "553"),  # two @ outside quotes: not an address
    ("<(app@example.com)evil@evil.test>", "550 5.7.1"),  # a comment
    ("<evil@evil.test (app@example.com)>", "550 5.7.1"),
    ("App <app@example.com>", "501"),  # a display name: not an SMTP path
    ("<app@example.com.evil.test>", "550 5.7.1"),
    ("<app@evil.test.>", "553"),
    ("<app@xn--exmple-cua.com>", "550 5.7.1"),  # punycode of a look-alike domain
    ("<app@ex\u0430mple.com> SMTPUTF8", "550 5.7.1"),  # a Cyrillic a in the domain
    ("<\u017fales@shop.example> SMTPUTF8", "550 5.7.1"),  # long s: casefolds to sales
    ("<sales@shop.exampl\u212a> SMTPUTF8", "550 5.7.1"),  # Kelvin sign: lowers to k
    ("<app\x00@example.com>", "550 5.7.1"),
    ("<app\x01@example.com>", "550 5.7.1"),
    ("<app\x7f@example.com>", "550 5.7.1"),  # DEL, a control character
    ("<app\udcff@example.com>", "550 5.7.1"),  # a byte that is not UTF-8 (0xFF)
    ("<app@example.com\u200b> SMTPUTF8", "550 5.7.1"),  # a zero-width space
    ("<>", "550 5.7.1"),  # the null sender: bounces are mqd's own, never a producer's
]


@pytest.mark.parametrize(("sender", "answer"), ADDRESS_TRICKS, ids=repr)
async def test_address_tricks_are_refused_at_mail_from(
    make_config: Callable[..., Config],
    host: PluginHost,
    smtp_server: SMTPPeer,
    sender: str,
    answer: str,
) -> None:
    async with running(make_config(), host) as mqd:
        wire = await Wire.open(mqd.port)
        got = await wire.send(
            sender.encode("utf-8", "surrogateescape"), make_message(sender="app@example.com")
        )
        assert got.startswith(answer), got
        await wire.close()
        await canary(mqd)
        await sink_holds_only(mqd, smtp_server, {"app@example.com"}, 1)
        # aiosmtpd answers a syntax error itself; mqd counts the refusals it decided.
        assert mqd.source.status().refused == (1 if answer.startswith("550") else 0)


@pytest.mark.parametrize(
    ("sender", "relayed_as"),
    [
        ("<APP@Example.COM>", "APP@Example.COM"),  # case: the same mailbox
        ("<app@example.com.>", None),  # a root dot: aiosmtpd refuses the syntax (553)
        ("<SALES@SHOP.EXAMPLE>", "SALES@SHOP.EXAMPLE"),
        ('<"app"@example.com>', "app@example.com"),  # needless quotes come off
        ('<"evil@evil.test"@example.com>', '"evil@evil.test"@example.com'),
        ("<evil%evil.test@example.com>", "evil%evil.test@example.com"),
    ],
    ids=repr,
)
async def test_what_an_allowed_domain_may_hold_stays_at_that_domain(
    make_config: Callable[..., Config],
    host: PluginHost,
    smtp_server: SMTPPeer,
    sender: str,
    relayed_as: str | None,
) -> None:
    """``*@example.com`` allows any mailbox of example.com, whatever its local part says (a
    quoted @, a percent hack: routing inside example.com is example.com's); the sink sees
    the domain the table allowed, or nothing."""
    async with running(make_config(), host) as mqd:
        wire = await Wire.open(mqd.port)
        got = await wire.send(sender.encode(), make_message(sender="app@example.com"))
        await wire.close()
        if relayed_as is None:
            assert got.startswith("553"), got
            await canary(mqd)
            await sink_holds_only(mqd, smtp_server, {"app@example.com"}, 1)
            return
        assert got.startswith("250 2.0.0"), got
        [received] = await asyncio.to_thread(smtp_server.wait_for, 1)
        assert received.mail_from == relayed_as
        assert received.mail_from.rpartition("@")[2].lower() in ("example.com", "shop.example")


#: (envelope sender, the message) pairs whose headers a recipient would read as another
#: sender's, and the answer to DATA (or to MAIL).
HEADER_SPOOFS = [
    ("<app@example.com>", make_message(sender="ceo@evil.test"), "550 5.7.1"),
    ("<evil@evil.test>", make_message(sender="app@example.com"), "550 5.7.1"),  # at MAIL
    (
        "<app@example.com>",
        make_message(sender="app@example.com", extra_headers=("From: ceo@evil.test",)),
        "550 5.7.1",
    ),  # two From fields
    ("<app@example.com>", make_message(sender="app@example.com, ceo@evil.test"), "550 5.7.1"),
    ("<app@example.com>", make_message(sender='"app@example.com" <ceo@evil.test>'), "550 5.7.1"),
    ("<app@example.com>", make_message(sender="ceo@evil.test (app@example.com)"), "550 5.7.1"),
    ("<app@example.com>", make_message(sender="app@example.com <ceo@evil.test>"), "550 5.7.1"),
    ("<app@example.com>", make_message(sender="<app@example.com> <ceo@evil.test>"), "550 5.7.1"),
    ("<app@example.com>", make_message(sender="=?utf-8?q?a?= <ceo@evil.test>"), "550 5.7.1"),
    ("<app@example.com>", make_message(sender="\u017fales@shop.example"), "550 5.7.1"),
    # Sender: what mail programs show as "on behalf of"
    ("<app@example.com>", make_message(extra_headers=("Sender: ceo@evil.test",)), "550 5.7.1"),
    (
        "<app@example.com>",
        make_message(extra_headers=("Sender: app@example.com", "Sender: ceo@evil.test")),
        "550 5.7.1",
    ),
]


@pytest.mark.parametrize(("sender", "data", "answer"), HEADER_SPOOFS)
async def test_a_from_header_not_allowed_is_refused_whatever_the_envelope(
    make_config: Callable[..., Config],
    host: PluginHost,
    smtp_server: SMTPPeer,
    sender: str,
    data: bytes,
    answer: str,
) -> None:
    async with running(make_config(), host) as mqd:
        wire = await Wire.open(mqd.port)
        got = await wire.send(sender.encode(), data)
        assert got.startswith(answer), got
        await wire.close()
        await canary(mqd)
        await sink_holds_only(mqd, smtp_server, {"app@example.com"}, 1)


ENVELOPE_SMUGGLING = [
    b"X-Sender: evil@evil.test\nX-Receiver: victim@evil.test\n",  # leading: stripped
    b"X-Sender : evil@evil.test\nX-Receiver : victim@evil.test\n",  # obsolete syntax
    b"x-sender:evil@evil.test\nx-receiver:victim@evil.test\n",
    b"Subject: x\nX-Sender: evil@evil.test\nX-Receiver: victim@evil.test\n",  # not leading
    b"X-Receiver: victim@evil.test\n\tvictim2@evil.test\n",  # folded
]


@pytest.mark.parametrize("lines", ENVELOPE_SMUGGLING, ids=repr)
async def test_envelope_lines_in_data_never_change_the_envelope(
    make_config: Callable[..., Config], host: PluginHost, smtp_server: SMTPPeer, lines: bytes
) -> None:
    """The envelope is the one given by MAIL FROM and RCPT TO; X-Sender / X-Receiver lines in
    the message are stripped before relaying, and no one they name gets anything."""
    data = lines + make_message() + b"X-Receiver: victim3@evil.test\n"
    async with running(make_config(), host) as mqd:
        wire = await Wire.open(mqd.port)
        got = await wire.send(b"<app@example.com>", data)
        assert got.startswith("250 2.0.0"), got
        await wire.close()
        await sink_holds_only(mqd, smtp_server, {"app@example.com"}, 1)
    [received] = smtp_server.messages
    assert received.rcpt_tos == ["alice@example.net"]
    header = received.data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"x-sender" not in header and b"x-receiver" not in header
    assert received.data.rstrip().endswith(b"X-Receiver: victim3@evil.test")  # body untouched
