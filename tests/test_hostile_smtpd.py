"""Hostile input through SMTP submission ([[smtpd]]): a real daemon in this process listening on
127.0.0.1 (port 0), a raw socket or aiosmtplib as the client, and the in-test SMTP sink as the
relay's peer. Each case asserts the answer (code and enhanced status code) and that nothing from
a sender that is not allowed reaches the sink: an allowed message sent last arrives alone.

Address tricks, header spoofs and envelope lines smuggled into DATA; AUTH as another login;
SMTP smuggling with pipelined commands after it; the size, recipient and line limits.
The spool path's hostile input is tests/test_hostile_input.py.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from corehelpers import make_message
from smtpserver import SMTPPeer
from sourcerun import Running, running, sink_holds_only

from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.intake.smtpd.session import bare_line_ending
from mqd.intake.smtpd.users import hash_password
from mqd.plugins.host import PluginHost

ALLOWED = {"app@example.com", "sales@shop.example", "shop@example.com", "billing@example.com"}


def crlf(data: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


@pytest.fixture
def make_config(
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
        got = await wire.send(sender.encode(), make_message(sender="app@example.com"))
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


FROM = "alice@example.net"

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


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtpd-users"
    path.write_text(
        f"shop:{hash_password('shop-secret')}:shop@example.com\n"
        f"billing:{hash_password('billing-secret')}:billing@example.com\n"
    )
    return path


@pytest.fixture
def tls_config(
    make_config: Callable[..., Config], ca: trustme.CA, tmp_path: Path, users_file: Path
) -> Config:
    """A table on 0.0.0.0 (not loopback: AUTH required) with STARTTLS."""
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return make_config(
        f'tls = "starttls"\ntls_cert = "{cert_file}"\ntls_key = "{key_file}"\n'
        f'users_file = "{users_file}"\n',
        listen="0.0.0.0:0",
    )


def plain(authzid: str, login: str, password: str) -> bytes:
    blob = f"{authzid}\0{login}\0{password}".encode()
    return b"AUTH PLAIN " + base64.b64encode(blob)


async def starttls(wire: Wire, ca: trustme.CA) -> None:
    assert (await wire.command(b"STARTTLS")).startswith("220")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    await wire.writer.start_tls(context, server_hostname="127.0.0.1")
    assert (await wire.command(b"EHLO app.test")).startswith("250")


async def test_auth_as_another_login_never_sends_as_its_senders(
    tls_config: Config, host: PluginHost, smtp_server: SMTPPeer, ca: trustme.CA
) -> None:
    async with running(tls_config, host) as mqd:
        wire = await Wire.open(mqd.port)
        # Before STARTTLS: no AUTH over plaintext, no mail without it.
        assert (await wire.command(plain("", "shop", "shop-secret"))).startswith("530 5.7.0")
        assert (await wire.command(b"MAIL FROM:<shop@example.com>")).startswith("530 5.7.0")
        await starttls(wire, ca)
        assert (await wire.command(b"MAIL FROM:<shop@example.com>")).startswith("530 5.7.0")
        # billing's name with shop's password, and shop asking to act as billing (the PLAIN
        # authorization identity is not honoured: shop is logged in as shop, or not at all).
        assert (await wire.command(plain("", "billing", "shop-secret"))).startswith("535")
        assert (await wire.command(plain("billing", "shop", "shop-secret"))).startswith("235")
        # A second AUTH in the session cannot change the login.
        assert (await wire.command(plain("", "billing", "billing-secret"))).startswith("503")
        refused = await wire.send(b"<billing@example.com>", make_message("billing@example.com"))
        assert refused.startswith("550 5.7.1") and "login shop" in refused, refused
        # shop's own sender, with billing's address in the From header.
        spoof = make_message(sender="billing@example.com")
        assert (await wire.send(b"<shop@example.com>", spoof)).startswith("550 5.7.1")
        ok = await wire.send(b"<shop@example.com>", make_message(sender="shop@example.com"))
        assert ok.startswith("250 2.0.0"), ok
        await wire.close()
        await sink_holds_only(mqd, smtp_server, {"shop@example.com"}, 1)
        assert [q.login for q in mqd.queued] == ["shop"]


async def test_auth_on_loopback_narrows_and_never_widens(
    make_config: Callable[..., Config],
    host: PluginHost,
    smtp_server: SMTPPeer,
    users_file: Path,
) -> None:
    """On loopback AUTH is optional (no network crossed, so no TLS needed): a login brings its
    own list on top of the table's, never a sender the table does not allow."""
    async with running(make_config(f'users_file = "{users_file}"'), host) as mqd:
        wire = await Wire.open(mqd.port)
        assert (await wire.command(plain("", "shop", "wrong"))).startswith("535")
        assert (await wire.command(plain("", "shop", "shop-secret"))).startswith("235")
        for sender in (b"<app@example.com>", b"<evil@evil.test>", b"<sales@shop.example>"):
            answer = await wire.send(sender, make_message(sender="shop@example.com"))
            assert answer.startswith("550 5.7.1"), (sender, answer)
        await wire.close()
        await canary(mqd)  # anonymous, on the table's list
        await sink_holds_only(mqd, smtp_server, {"app@example.com"}, 1)


@pytest.mark.parametrize("mode", ["normalize", "refuse"])
@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"])
async def test_smuggling_with_pipelined_commands_sends_nothing_for_evil(
    make_config: Callable[..., Config],
    host: PluginHost,
    smtp_server: SMTPPeer,
    fake_end: bytes,
    mode: str,
) -> None:
    """A fake end of data, a smuggled transaction, the real end, then a pipelined transaction
    from a sender not allowed, all in one write: one message (or none) for alice, and nothing
    from evil, whether bare line endings are made CRLF or refused."""
    smuggled = (
        b"MAIL FROM:<evil@evil.test>\r\nRCPT TO:<victim@evil.test>\r\nDATA\r\n"
        b"From: evil@evil.test\r\nTo: victim@evil.test\r\n\r\npay\r\n"
    )
    message = crlf(make_message()).rstrip(b"\r\n")
    async with running(make_config(f'bare_line_endings = "{mode}"'), host) as mqd:
        wire = await Wire.open(mqd.port)
        wire.writer.write(
            b"MAIL FROM:<app@example.com>\r\nRCPT TO:<alice@example.net>\r\nDATA\r\n"
            + message
            + fake_end
            + smuggled
            + b".\r\n"
            + smuggled
            + b".\r\nQUIT\r\n"
        )
        replies = (await wire.reader.read()).decode("utf-8", "replace").splitlines()
        wire.writer.close()
        finals = [r for r in replies if re.match(r"^\d{3} ", r)]
        assert finals[:3] == ["250 2.1.0 OK", "250 2.1.5 OK", "354 End data with <CR><LF>.<CR><LF>"]
        assert finals[3].startswith("250 2.0.0" if mode == "normalize" else "554 5.6.0")
        assert finals[4].startswith("550 5.7.1"), finals  # the pipelined MAIL FROM:<evil...>
        assert not [r for r in finals[4:] if r.startswith("250 2.0.0")], finals
        await canary(mqd)
        expected = 2 if mode == "normalize" else 1
        await sink_holds_only(mqd, smtp_server, {"app@example.com"}, expected)
    assert all(m.rcpt_tos == ["alice@example.net"] for m in smtp_server.messages)
    assert not [c for c in smtp_server.commands if "evil" in c[1]]
    assert not any(bare_line_ending(m.data) for m in smtp_server.messages)


async def test_limits_refuse_the_whole_message(
    make_config: Callable[..., Config], host: PluginHost, smtp_server: SMTPPeer
) -> None:
    """Too large (552 5.3.4, at MAIL when SIZE says so, else after DATA), too many recipients
    (452 4.5.3 for each one over), a line too long (500 5.5.2): none of it is relayed."""
    config = make_config('max_message_size = "4KiB"\nmax_recipients = 2\nmax_line_length = 200')
    async with running(config, host) as mqd:
        wire = await Wire.open(mqd.port)
        assert (await wire.command(b"MAIL FROM:<app@example.com> SIZE=999999")).startswith(
            "552 5.3.4"
        )
        big = make_message(body="x" * 70 + "\n" + ("y" * 70 + "\n") * 80)
        assert (await wire.send(b"<app@example.com>", big)).startswith("552 5.3.4")
        assert (await wire.command(b"RSET")).startswith("250")
        long_line = make_message(body="z" * 300 + "\n")
        assert (await wire.send(b"<app@example.com>", long_line)).startswith("500 5.5.2")
        assert (await wire.command(b"RSET")).startswith("250")
        assert (await wire.command(b"MAIL FROM:<app@example.com>")).startswith("250")
        for rcpt in (b"a@example.net", b"b@example.net"):
            assert (await wire.command(b"RCPT TO:<" + rcpt + b">")).startswith("250")
        for rcpt in (b"c@example.net", b"d@example.net"):
            assert (await wire.command(b"RCPT TO:<" + rcpt + b">")).startswith("452 4.5.3")
        assert (await wire.command(b"RSET")).startswith("250")
        await wire.close()
        await canary(mqd)
        await sink_holds_only(mqd, smtp_server, {"app@example.com"}, 1)
    assert smtp_server.messages[0].rcpt_tos == ["alice@example.net"]
