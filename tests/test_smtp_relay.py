"""mqd.relays.smtp.relay against real aiosmtpd servers: TLS, AUTH, replies, failures, the pool."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from corehelpers import USERS, make_message
from smtp_variants import VariantPeer
from smtpserver import SMTPPeer

from mqd.config.options import Options
from mqd.errors import ConfigError, PermanentRelayError, TransientRelayError
from mqd.message.envelope import Envelope
from mqd.relays.smtp.relay import SMTPRelay
from mqd.testing import wait_until

USER, PASSWORD = next(iter(USERS.items()))

# SMTPPeer with implicit TLS requires AUTH without "requiring TLS" (it is TLS from the start).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def relay_for(peer: SMTPPeer | int, **options: Any) -> SMTPRelay:
    port = peer if isinstance(peer, int) else peer.port
    table = {
        "host": "127.0.0.1",
        "port": port,
        "connect_timeout": "5s",
        "command_timeout": "5s",
        "data_timeout": "5s",
        **options,
    }
    opts = Options(table, section="relays.x", path=None)
    relay = SMTPRelay.from_options("x", opts)
    opts.finish()
    return relay


def plain(peer: SMTPPeer | int, **options: Any) -> SMTPRelay:
    return relay_for(peer, security="none", **options)


def envelope(
    sender: str = "app@example.com", *recipients: str, message: bytes | None = None
) -> Envelope:
    rcpts = recipients or ("alice@example.net",)
    return Envelope(sender, tuple(rcpts), message or make_message(sender, rcpts), id="q1")


@pytest.fixture
def implicit_tls_server(server_tls_context: ssl.SSLContext) -> Iterator[SMTPPeer]:
    peer = SMTPPeer(tls_context=server_tls_context, implicit_tls=True, users=USERS).start()
    yield peer
    peer.stop()


@pytest.fixture
def variant():
    """Start VariantPeers with the given options; all are stopped at the end."""
    started: list[VariantPeer] = []

    def start(**kwargs: Any) -> VariantPeer:
        peer = VariantPeer(**kwargs).start()
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


# -- TLS and AUTH --------------------------------------------------------------------------------


async def test_starttls_and_auth_deliver(smtp_tls_server: SMTPPeer, ca_file: Path) -> None:
    relay = relay_for(
        smtp_tls_server,
        security="starttls",
        username=USER,
        password=PASSWORD,
        tls_ca_file=str(ca_file),
    )
    try:
        result = await relay.deliver(envelope("app@example.com", "alice@example.net"))
    finally:
        await relay.aclose()
    assert result.replies["alice@example.net"].code == 250
    assert result.remote == "127.0.0.1"
    [received] = smtp_tls_server.wait_for(1)
    assert received.tls is True
    assert received.authenticated is True
    assert received.mail_from == "app@example.com"
    assert received.rcpt_tos == ["alice@example.net"]


async def test_implicit_tls_and_auth_deliver(implicit_tls_server: SMTPPeer, ca_file: Path) -> None:
    relay = relay_for(
        implicit_tls_server,
        security="tls",
        username=USER,
        password=PASSWORD,
        tls_ca_file=str(ca_file),
    )
    try:
        result = await relay.deliver(envelope())
    finally:
        await relay.aclose()
    assert result.replies["alice@example.net"].code == 250
    [received] = implicit_tls_server.wait_for(1)
    assert received.tls is True
    assert received.authenticated is True


async def test_untrusted_certificate_is_transient_and_names_the_certificate(
    smtp_tls_server: SMTPPeer,
) -> None:
    relay = relay_for(smtp_tls_server, security="starttls", username=USER, password=PASSWORD)
    try:
        with pytest.raises(TransientRelayError, match="certificate") as info:
            await relay.deliver(envelope())
    finally:
        await relay.aclose()
    assert "tls_ca_file" in str(info.value)
    assert info.value.reply is not None and info.value.reply.code // 100 == 4
    assert smtp_tls_server.messages == []


async def test_untrusted_certificate_with_implicit_tls(implicit_tls_server: SMTPPeer) -> None:
    relay = relay_for(implicit_tls_server, security="tls", username=USER, password=PASSWORD)
    try:
        with pytest.raises(TransientRelayError, match="certificate"):
            await relay.deliver(envelope())
    finally:
        await relay.aclose()
    assert implicit_tls_server.messages == []


async def test_starttls_not_offered_fails_without_sending_anything(variant, ca_file: Path) -> None:
    # No TLS at all, but AUTH offered in clear text: a client that fell back would log in.
    peer = variant(users=USERS, auth_over_plaintext=True)
    relay = relay_for(
        peer, security="starttls", username=USER, password=PASSWORD, tls_ca_file=str(ca_file)
    )
    try:
        with pytest.raises(TransientRelayError, match="STARTTLS") as info:
            await relay.deliver(envelope())
    finally:
        await relay.aclose()
    assert not isinstance(info.value, PermanentRelayError)
    assert peer.auth_attempts == []  # the password never crossed the plaintext connection
    assert peer.data_started == 0
    assert peer.messages == []


async def test_wrong_password_is_transient_and_mentions_the_login(
    smtp_tls_server: SMTPPeer, ca_file: Path
) -> None:
    relay = relay_for(
        smtp_tls_server,
        security="starttls",
        username=USER,
        password="not-the-password",
        tls_ca_file=str(ca_file),
    )
    try:
        with pytest.raises(TransientRelayError, match="login") as info:
            await relay.deliver(envelope())
    finally:
        await relay.aclose()
    assert not isinstance(info.value, PermanentRelayError)
    assert USER in str(info.value)
    assert "not-the-password" not in str(info.value)
    # 4.7.8/5.7.8 semantics (credentials invalid), kept as the transient 454 4.7.8 with the
    # server's 535 inside: the mail waits while the password is fixed.
    reply = info.value.reply
    assert reply is not None and (reply.code, reply.enhanced) == (454, "4.7.8")
    assert f"refused the login for '{USER}' (535 " in reply.message
    assert "credentials invalid" in str(info.value)
    assert smtp_tls_server.messages == []


def test_credentials_over_plaintext_are_a_config_error() -> None:
    opts = Options(
        {"host": "127.0.0.1", "security": "none", "username": USER, "password": PASSWORD},
        section="relays.x",
        path=None,
    )
    with pytest.raises(ConfigError, match="clear text") as info:
        SMTPRelay.from_options("x", opts)
    assert info.value.key == "relays.x.security"


# -- replies -------------------------------------------------------------------------------------


async def test_4xx_on_rcpt_is_per_recipient(smtp_server: SMTPPeer) -> None:
    relay = plain(smtp_server)
    try:
        result = await relay.deliver(
            envelope("app@example.com", "alice@example.net", "temp-bob@example.net")
        )
    finally:
        await relay.aclose()
    assert result.replies["alice@example.net"].code == 250
    bob = result.replies["temp-bob@example.net"]
    assert bob.code == 451
    assert bob.enhanced == "4.2.0"
    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == ["alice@example.net"]


async def test_5xx_on_rcpt_is_per_recipient(smtp_server: SMTPPeer) -> None:
    relay = plain(smtp_server)
    try:
        result = await relay.deliver(
            envelope("app@example.com", "perm-bob@example.net", "alice@example.net")
        )
    finally:
        await relay.aclose()
    assert result.replies["perm-bob@example.net"].code == 550
    assert result.replies["perm-bob@example.net"].enhanced == "5.1.1"
    assert result.replies["alice@example.net"].code == 250
    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == ["alice@example.net"]


async def test_all_recipients_refused_sends_no_data(smtp_server: SMTPPeer) -> None:
    relay = plain(smtp_server)
    try:
        result = await relay.deliver(
            envelope("app@example.com", "perm-a@example.net", "temp-b@example.net")
        )
        # The connection was reset and stays usable.
        again = await relay.deliver(envelope())
    finally:
        await relay.aclose()
    assert result.replies["perm-a@example.net"].code == 550
    assert result.replies["temp-b@example.net"].code == 451
    assert again.replies["alice@example.net"].code == 250
    assert smtp_server.data_started == 1
    assert smtp_server.connections == 1


async def test_5xx_on_mail_applies_to_every_recipient(smtp_server: SMTPPeer) -> None:
    smtp_server.mail_reply = "550 5.7.1 sender not allowed"
    relay = plain(smtp_server)
    rcpts = ("alice@example.net", "bob@example.net", "carol@example.net")
    try:
        result = await relay.deliver(envelope("app@example.com", *rcpts))
    finally:
        await relay.aclose()
    assert set(result.replies) == set(rcpts)
    for rcpt in rcpts:
        assert result.replies[rcpt].code == 550
        assert result.replies[rcpt].enhanced == "5.7.1"
    assert smtp_server.data_started == 0


async def test_5xx_at_end_of_data(smtp_server: SMTPPeer) -> None:
    smtp_server.data_reply = "554 5.6.0 message content rejected"
    relay = plain(smtp_server)
    try:
        result = await relay.deliver(
            envelope("app@example.com", "alice@example.net", "perm-x@example.net")
        )
    finally:
        await relay.aclose()
    assert result.replies["alice@example.net"].code == 554
    assert result.replies["alice@example.net"].enhanced == "5.6.0"
    assert result.replies["perm-x@example.net"].code == 550  # its own RCPT reply is kept
    assert smtp_server.data_started == 1
    assert smtp_server.messages == []


async def test_4xx_at_end_of_data(smtp_server: SMTPPeer) -> None:
    smtp_server.data_reply = "451 4.3.0 try again later"
    relay = plain(smtp_server)
    try:
        result = await relay.deliver(envelope())
    finally:
        await relay.aclose()
    assert result.replies["alice@example.net"].code == 451


# -- broken connections --------------------------------------------------------------------------


async def test_connection_dropped_during_data_is_transient(smtp_server: SMTPPeer) -> None:
    smtp_server.drop_in_data = True
    relay = plain(smtp_server)
    try:
        with pytest.raises(TransientRelayError) as info:
            await relay.deliver(envelope())
    finally:
        await relay.aclose()
    assert info.value.reply is not None and info.value.reply.code // 100 == 4
    assert smtp_server.data_started >= 1
    assert smtp_server.messages == []


async def test_server_too_slow_at_data_is_transient(smtp_server: SMTPPeer) -> None:
    smtp_server.data_delay = 3.0
    relay = plain(smtp_server, data_timeout="0.5s")
    try:
        with pytest.raises(TransientRelayError, match="in time") as info:
            await asyncio.wait_for(relay.deliver(envelope()), timeout=30)  # safety net only
    finally:
        await relay.aclose()
    assert info.value.reply is not None and info.value.reply.code // 100 == 4


async def test_connection_refused_is_transient_and_its_reply_names_host_and_cause() -> None:
    """The reply is what `mqd queue list`, the web view and a bounce show: like Postfix's
    "connect to host:25: Connection refused", not a bare "cannot connect"."""
    port = closed_port()
    relay = plain(port)
    try:
        with pytest.raises(TransientRelayError, match="connect") as info:
            await relay.deliver(envelope())
    finally:
        await relay.aclose()
    assert info.value.reply is not None
    assert str(info.value.reply) == (
        f"451 4.4.1 cannot connect to 127.0.0.1:{port}: Connection refused"
    )


# -- the connection pool -------------------------------------------------------------------------


async def test_connections_are_reused(smtp_server: SMTPPeer) -> None:
    relay = plain(smtp_server)
    try:
        for i in range(10):
            result = await relay.deliver(envelope("app@example.com", f"r{i}@example.net"))
            assert result.replies[f"r{i}@example.net"].code == 250
    finally:
        await relay.aclose()
    assert len(smtp_server.wait_for(10)) == 10
    assert smtp_server.connections == 1


async def test_a_new_connection_after_messages_per_connection(smtp_server: SMTPPeer) -> None:
    relay = plain(smtp_server, messages_per_connection=3)
    try:
        for i in range(10):
            await relay.deliver(envelope("app@example.com", f"r{i}@example.net"))
    finally:
        await relay.aclose()
    assert len(smtp_server.wait_for(10)) == 10
    assert smtp_server.connections == 4  # 3 + 3 + 3 + 1


async def test_max_connections_bounds_concurrent_deliveries(variant) -> None:
    peer = variant()
    peer.data_delay = 0.1  # keep deliveries overlapping
    relay = plain(peer, max_connections=2)
    rcpts = [f"r{i}@example.net" for i in range(10)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(relay.deliver(envelope("app@example.com", r)) for r in rcpts)),
            timeout=60,
        )
    finally:
        await relay.aclose()
    assert [res.replies[r].code for res, r in zip(results, rcpts, strict=True)] == [250] * 10
    assert sorted(peer.recipients()) == sorted(rcpts)
    assert peer.connections <= 2
    assert peer.max_open <= 2
    assert peer.max_open == 2  # and the two were really used at once


async def test_reused_connection_closed_by_the_client_is_replaced(smtp_server: SMTPPeer) -> None:
    relay = plain(smtp_server)
    try:
        await relay.deliver(envelope("app@example.com", "one@example.net"))
        [idle] = relay._pool._idle
        idle.client.close()  # the connection died while idle
        result = await relay.deliver(envelope("app@example.com", "two@example.net"))
    finally:
        await relay.aclose()
    assert result.replies["two@example.net"].code == 250
    assert smtp_server.recipients() == ["one@example.net", "two@example.net"]
    assert smtp_server.connections == 2


def spy_transactions(relay: SMTPRelay, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, for each SMTP transaction the relay starts, whether its connection was reused."""
    reused_flags: list[bool] = []
    original = relay._transaction

    async def transaction(conn, env, addresses, reused):
        reused_flags.append(reused)
        return await original(conn, env, addresses, reused)

    monkeypatch.setattr(relay, "_transaction", transaction)
    return reused_flags


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "stepwise"])
async def test_reused_connection_dropped_by_the_server_is_replaced(
    variant, monkeypatch: pytest.MonkeyPatch, pipelining: bool
) -> None:
    """The server dropped the idle connection and the client has not noticed yet: MAIL finds
    it dead, and the message goes out on a fresh connection within the same deliver()."""
    peer = variant(pipelining=pipelining)
    relay = plain(peer)
    reused = spy_transactions(relay, monkeypatch)
    try:
        await relay.deliver(envelope("app@example.com", "one@example.net"))
        [idle] = relay._pool._idle
        peer.drop_all()  # blocks this thread: the client's loop cannot see the EOF yet
        assert idle.client.is_connected  # the client still believes in it
        result = await relay.deliver(envelope("app@example.com", "two@example.net"))
    finally:
        await relay.aclose()
    assert result.replies["two@example.net"].code == 250
    assert peer.recipients() == ["one@example.net", "two@example.net"]
    assert peer.connections == 2
    assert reused == [False, True, False]  # fresh; stale reuse; fresh again


async def test_reused_connection_seen_closed_is_not_used(
    variant, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = variant()
    relay = plain(peer)
    reused = spy_transactions(relay, monkeypatch)
    try:
        await relay.deliver(envelope("app@example.com", "one@example.net"))
        [idle] = relay._pool._idle
        peer.drop_all()
        await wait_until(lambda: not idle.client.is_connected, "the client to see the EOF", 5)
        result = await relay.deliver(envelope("app@example.com", "two@example.net"))
    finally:
        await relay.aclose()
    assert result.replies["two@example.net"].code == 250
    assert peer.recipients() == ["one@example.net", "two@example.net"]
    assert reused == [False, False]


async def test_4xx_on_mail_on_a_reused_connection_is_a_reply_not_a_retry(
    smtp_server: SMTPPeer,
) -> None:
    relay = plain(smtp_server)
    try:
        await relay.deliver(envelope("app@example.com", "one@example.net"))
        smtp_server.mail_reply = "421 4.3.2 shutting down"
        result = await relay.deliver(envelope("app@example.com", "two@example.net", "x@y.example"))
    finally:
        await relay.aclose()
    assert {r: reply.code for r, reply in result.replies.items()} == {
        "two@example.net": 421,
        "x@y.example": 421,
    }
    assert smtp_server.recipients() == ["one@example.net"]


# -- MAIL FROM details ---------------------------------------------------------------------------


async def test_message_larger_than_the_advertised_size_is_permanent_552(variant) -> None:
    peer = variant(size_limit=500)
    relay = plain(peer)
    message = make_message(body="x" * 2000 + "\r\n")
    try:
        with pytest.raises(PermanentRelayError) as info:
            await relay.deliver(envelope("app@example.com", message=message))
    finally:
        await relay.aclose()
    assert info.value.reply is not None
    assert info.value.reply.code == 552
    assert info.value.reply.status == "5.3.4"
    assert "500" in str(info.value)
    assert peer.data_started == 0
    assert peer.messages == []


async def test_size_limit_is_checked_after_starttls_too(
    variant, server_tls_context: ssl.SSLContext, ca_file: Path
) -> None:
    peer = variant(
        size_limit=500, tls_context=server_tls_context, require_starttls=True, users=USERS
    )
    relay = relay_for(
        peer, security="starttls", username=USER, password=PASSWORD, tls_ca_file=str(ca_file)
    )
    message = make_message(body="x" * 2000 + "\r\n")
    try:
        with pytest.raises(PermanentRelayError) as info:
            await relay.deliver(envelope("app@example.com", message=message))
    finally:
        await relay.aclose()
    assert info.value.reply is not None and info.value.reply.code == 552
    assert peer.data_started == 0


async def test_size_is_declared_when_advertised(variant) -> None:
    peer = variant(size_limit=1_000_000)
    relay = plain(peer)
    message = make_message()
    try:
        await relay.deliver(envelope("app@example.com", message=message))
    finally:
        await relay.aclose()
    [received] = peer.wait_for(1)
    sizes = [opt for opt in received.mail_options if opt.upper().startswith("SIZE=")]
    assert len(sizes) == 1
    assert int(sizes[0].split("=", 1)[1]) >= len(message)


async def test_null_sender_is_sent_as_empty_path(smtp_server: SMTPPeer) -> None:
    relay = plain(smtp_server)
    try:
        result = await relay.deliver(envelope("", "app@example.com"))
    finally:
        await relay.aclose()
    assert result.replies["app@example.com"].code == 250
    [received] = smtp_server.wait_for(1)
    assert received.mail_from == "<>"  # aiosmtpd's spelling of MAIL FROM:<>
    assert received.rcpt_tos == ["app@example.com"]


async def test_message_bytes_arrive_unchanged(smtp_server: SMTPPeer) -> None:
    message = make_message(body="line one\r\n.leading dot\r\n\r\nend\r\n")
    relay = plain(smtp_server)
    try:
        await relay.deliver(envelope("app@example.com", message=message))
    finally:
        await relay.aclose()
    [received] = smtp_server.wait_for(1)
    assert received.data.replace(b"\r\n", b"\n").rstrip(b"\n") == message.replace(
        b"\r\n", b"\n"
    ).rstrip(b"\n")


async def test_non_ascii_recipient_uses_smtputf8(smtp_server: SMTPPeer) -> None:
    """aiosmtpd offers SMTPUTF8, so a non-ASCII address must go through, not bounce."""
    rcpt = "j\u00fcrgen@example.net"
    message = make_message(to=("juergen@example.net",))
    relay = plain(smtp_server)
    try:
        result = await relay.deliver(Envelope("app@example.com", (rcpt,), message, id="q1"))
    finally:
        await relay.aclose()
    assert result.replies[rcpt].code == 250
    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == [rcpt]
    assert "SMTPUTF8" in [opt.upper() for opt in received.mail_options]
