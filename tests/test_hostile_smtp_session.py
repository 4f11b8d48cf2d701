"""Hostile SMTP sessions ([[smtpd]]): AUTH as another login, SMTP smuggling with pipelined
commands after it, the size, recipient and line limits. A real daemon in this process (on
127.0.0.1, or on 0.0.0.0 where AUTH and STARTTLS are required), a raw socket as the client, the
in-test SMTP sink as the relay's peer; each case ends with an allowed message arriving alone.
Addresses and headers: tests/test_hostile_smtpd.py.
"""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from corehelpers import make_message
from smtpserver import SMTPPeer
from smtpwire import Wire, canary, crlf, smtpd_configs
from sourcerun import running, sink_holds_only

from mqd.config.schema import Config
from mqd.intake.smtpd.session import bare_line_ending
from mqd.intake.smtpd.users import hash_password
from mqd.plugins.host import PluginHost


@pytest.fixture
def make_config(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path, smtp_server: SMTPPeer
) -> Callable[..., Config]:
    """``make(smtpd=..., listen=...)``: see ``smtpwire.smtpd_configs``."""
    return smtpd_configs(write_config, spool, queue_dir, smtp_server)


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
