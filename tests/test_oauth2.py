"""OAuth2 (XOAUTH2) for the SMTP relay, against real peers on 127.0.0.1: aiosmtpd with an
XOAUTH2 mechanism that accepts only current tokens, and a token endpoint (stdlib http.server)
with the client-credentials and refresh-token grants."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import ssl
import stat
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from corehelpers import make_message
from smtpserver import SMTPPeer
from test_docs import section, table_rows

from mqd.config.options import Options
from mqd.errors import ConfigError, PermanentRelayError, TransientRelayError
from mqd.message.envelope import Envelope
from mqd.plugins.host import PluginHost
from mqd.relays.smtp.oauth2.build import make_token_source
from mqd.relays.smtp.oauth2.settings import OAuth2Settings
from mqd.relays.smtp.oauth2.source import TokenError
from mqd.relays.smtp.relay import SMTPRelay
from mqd.testing import Harness

MAILBOX = "noreply@example.com"
CLIENT_ID = "mqd-test-app"
CLIENT_SECRET = "client-secret-value-123"
FIRST_REFRESH_TOKEN = "refresh-token-0"
M365_SCOPE = "https://outlook.office365.com/.default"
DOCS = Path(__file__).resolve().parent.parent / "docs"


class Clock:
    """A clock the test moves by hand, shared by the token endpoint and the token source."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TokenEndpoint:
    """An OAuth2 token endpoint on 127.0.0.1 (client credentials and refresh token grants).

    ``requests`` holds every form it received; ``accepts(user, token)`` is the SMTP server's
    check (issued here, not expired, not revoked). ``rotate`` issues a new refresh token with
    every refresh and retires the old one; ``failure = (status, body)`` answers every request so.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, expires_in: Any = 3600
    ) -> None:
        self.clock = clock
        self.expires_in = expires_in
        self.rotate = False
        self.failure: tuple[int, Any] | None = None
        self.refresh_tokens = {FIRST_REFRESH_TOKEN}
        self.requests: list[dict[str, str]] = []
        self.issued: dict[str, float] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/oauth2/v2.0/token"

    def grants(self) -> list[str]:
        return [form.get("grant_type", "") for form in self.requests]

    def accepts(self, user: str, token: str) -> bool:
        with self._lock:
            expiry = self.issued.get(token)
        return user == MAILBOX and expiry is not None and self.clock() < expiry

    def revoke_all(self) -> None:
        with self._lock:
            self.issued.clear()

    def answer(self, form: dict[str, str]) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(form)
            if self.failure is not None:
                return self.failure
            if form.get("client_id") != CLIENT_ID:
                return 400, {"error": "invalid_client", "error_description": "unknown client"}
            grant = form.get("grant_type")
            answer: dict[str, Any] = {"token_type": "Bearer"}
            if grant == "client_credentials":
                if form.get("client_secret") != CLIENT_SECRET:
                    return 401, {"error": "invalid_client", "error_description": "bad secret"}
            elif grant == "refresh_token":
                if form.get("refresh_token") not in self.refresh_tokens:
                    return 400, {"error": "invalid_grant", "error_description": "token revoked"}
                if self.rotate:
                    self.refresh_tokens.discard(form["refresh_token"])
                    answer["refresh_token"] = f"refresh-token-{self._count + 1}"
                    self.refresh_tokens.add(answer["refresh_token"])
            else:
                return 400, {"error": "unsupported_grant_type"}
            self._count += 1
            token = f"access-token-{self._count}"
            self.issued[token] = self.clock() + float(self.expires_in)
            answer |= {"access_token": token, "expires_in": self.expires_in}
            return 200, answer

    def start(self) -> TokenEndpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode()
                form = dict(urllib.parse.parse_qsl(body))
                status, answer = endpoint.answer(form)
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(status)
                kind = "text/plain" if isinstance(answer, str) else "application/json"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    server = TokenEndpoint().start()
    yield server
    server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def clocked_endpoint(clock: Clock) -> Iterator[TokenEndpoint]:
    server = TokenEndpoint(clock=clock).start()
    yield server
    server.stop()


@pytest.fixture
def oauth_peer(server_tls_context: ssl.SSLContext, endpoint: TokenEndpoint) -> Iterator[SMTPPeer]:
    """STARTTLS required, XOAUTH2 required, tokens checked against ``endpoint``."""
    peer = SMTPPeer(
        tls_context=server_tls_context, require_starttls=True, xoauth2=endpoint.accepts
    ).start()
    yield peer
    peer.stop()


@pytest.fixture
def start_peer(server_tls_context: ssl.SSLContext) -> Iterator[Callable[..., SMTPPeer]]:
    started: list[SMTPPeer] = []

    def start(check: Callable[[str, str], bool]) -> SMTPPeer:
        peer = SMTPPeer(tls_context=server_tls_context, require_starttls=True, xoauth2=check)
        started.append(peer.start())
        return peer

    yield start
    for peer in started:
        peer.stop()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "client-secret"
    path.write_text(CLIENT_SECRET + "\n")
    path.chmod(0o600)
    path.chmod(0o600)
    return path


@pytest.fixture
def refresh_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens" / "refresh-token"
    path.parent.mkdir()
    path.write_text(FIRST_REFRESH_TOKEN + "\n")
    path.chmod(0o600)
    path.chmod(0o600)
    return path


def relay_for(
    peer: SMTPPeer | int, ca_file: Path, oauth2: dict[str, Any], **options: Any
) -> SMTPRelay:
    port = peer if isinstance(peer, int) else peer.port
    table = {
        "host": "127.0.0.1",
        "port": port,
        "security": "starttls",
        "tls_ca_file": str(ca_file),
        "username": MAILBOX,
        "connect_timeout": "5s",
        "command_timeout": "5s",
        "data_timeout": "5s",
        "oauth2": oauth2,
        **options,
    }
    opts = Options(table, section="relays.x", path=None)
    relay = SMTPRelay.from_options("x", opts)
    opts.finish()
    return relay


def client_credentials(endpoint: TokenEndpoint, secret_file: Path, **extra: Any) -> dict[str, Any]:
    return {
        "token_url": endpoint.url,
        "client_id": CLIENT_ID,
        "client_secret_file": str(secret_file),
        "scope": M365_SCOPE,
        **extra,
    }


def refresh_flow(endpoint: TokenEndpoint, refresh_file: Path, **extra: Any) -> dict[str, Any]:
    return {
        "token_url": endpoint.url,
        "client_id": CLIENT_ID,
        "refresh_token_file": str(refresh_file),
        **extra,
    }


def envelope(n: int = 1) -> Envelope:
    rcpts = (f"rcpt{n}@example.net",)
    return Envelope("app@example.com", rcpts, make_message("app@example.com", rcpts), id=f"q{n}")


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def token_script(tmp_path: Path, body: str) -> list[str]:
    """A token command: ``[python, script, calls-file]``; each run appends a line to calls-file."""
    script = tmp_path / "get-token.py"
    calls = tmp_path / "calls"
    script.write_text(
        "import sys\nwith open(sys.argv[1], 'a') as f:\n    f.write('run\\n')\n" + body,
        encoding="utf-8",
    )
    return [sys.executable, str(script), str(calls)]


def runs(tmp_path: Path) -> int:
    calls = tmp_path / "calls"
    return len(calls.read_text().splitlines()) if calls.exists() else 0


async def deliver(relay: SMTPRelay, *envelopes: Envelope) -> list[Any]:
    try:
        return [await relay.deliver(e) for e in envelopes]
    finally:
        await relay.aclose()


# -- each token source delivers through STARTTLS + XOAUTH2 -------------------------------------


async def test_client_credentials_flow_delivers(
    endpoint: TokenEndpoint, oauth_peer: SMTPPeer, ca_file: Path, secret_file: Path
) -> None:
    relay = relay_for(oauth_peer, ca_file, client_credentials(endpoint, secret_file))
    [result] = await deliver(relay, envelope())
    assert result.replies["rcpt1@example.net"].code == 250
    [received] = oauth_peer.wait_for(1)
    assert received.tls is True and received.authenticated is True
    assert oauth_peer.auth_log == [(MAILBOX, True)]
    [form] = endpoint.requests
    assert form == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scope": M365_SCOPE,
    }


async def test_refresh_token_flow_delivers(
    endpoint: TokenEndpoint, oauth_peer: SMTPPeer, ca_file: Path, refresh_file: Path
) -> None:
    relay = relay_for(
        oauth_peer, ca_file, refresh_flow(endpoint, refresh_file, scope="https://mail.google.com/")
    )
    [result] = await deliver(relay, envelope())
    assert result.replies["rcpt1@example.net"].code == 250
    assert oauth_peer.wait_for(1)[0].authenticated is True
    [form] = endpoint.requests
    assert form["grant_type"] == "refresh_token"
    assert form["refresh_token"] == FIRST_REFRESH_TOKEN
    assert "client_secret" not in form  # a public client has none
    assert oauth_peer.auth_log == [(MAILBOX, True)]


async def test_token_command_delivers_and_its_token_is_reused(
    start_peer: Callable[..., SMTPPeer], ca_file: Path, tmp_path: Path
) -> None:
    peer = start_peer(lambda user, token: user == MAILBOX and token == "command-token-1")
    command = token_script(tmp_path, "print('command-token-1')\nprint('ignored second line')\n")
    relay = relay_for(peer, ca_file, {"token_command": command}, messages_per_connection=1)
    results = await deliver(relay, envelope(1), envelope(2))
    assert [r.replies[f"rcpt{n}@example.net"].code for n, r in enumerate(results, 1)] == [250, 250]
    assert len(peer.wait_for(2)) == 2
    assert peer.connections == 2  # two sessions, one token (token_lifetime is 50m)
    assert runs(tmp_path) == 1
    assert peer.auth_log == [(MAILBOX, True), (MAILBOX, True)]


async def test_token_command_runs_again_after_token_lifetime(
    start_peer: Callable[..., SMTPPeer], ca_file: Path, tmp_path: Path, clock: Clock
) -> None:
    peer = start_peer(lambda user, token: token == "tok")
    command = token_script(tmp_path, "print('tok')\n")
    built = relay_for(
        peer,
        ca_file,
        {"token_command": command, "token_lifetime": "10m"},
        messages_per_connection=1,
    )
    assert built.settings.oauth2 is not None
    tokens = make_token_source(built.settings.oauth2, clock=clock)
    relay = SMTPRelay("x", built.settings, tokens=tokens)
    try:
        await relay.deliver(envelope(1))
        clock.now += 599
        await relay.deliver(envelope(2))
        assert runs(tmp_path) == 1
        clock.now += 2
        await relay.deliver(envelope(3))
    finally:
        await relay.aclose()
    assert runs(tmp_path) == 2
    assert len(peer.wait_for(3)) == 3


# -- renewal, refusal, single flight ------------------------------------------------------------


async def test_token_is_renewed_before_it_expires_without_a_refused_attempt(
    clocked_endpoint: TokenEndpoint,
    clock: Clock,
    start_peer: Callable[..., SMTPPeer],
    ca_file: Path,
    secret_file: Path,
) -> None:
    peer = start_peer(clocked_endpoint.accepts)
    built = relay_for(
        peer,
        ca_file,
        client_credentials(clocked_endpoint, secret_file),
        messages_per_connection=1,
    )
    assert built.settings.oauth2 is not None
    relay = SMTPRelay(
        "x", built.settings, tokens=make_token_source(built.settings.oauth2, clock=clock)
    )
    try:
        await relay.deliver(envelope(1))  # token 1, valid for 3600s
        clock.now += 3000
        await relay.deliver(envelope(2))  # still well inside its lifetime: reused
        assert len(clocked_endpoint.requests) == 1
        clock.now += 400  # 3400s: still valid at the server, but within the 5-minute margin
        assert clocked_endpoint.accepts(MAILBOX, "access-token-1")
        await relay.deliver(envelope(3))
    finally:
        await relay.aclose()
    assert len(clocked_endpoint.requests) == 2
    assert len(peer.wait_for(3)) == 3
    assert peer.auth_log == [(MAILBOX, True)] * 3  # never a refused token


async def test_short_lived_tokens_are_renewed_at_ninety_percent(
    clock: Clock, start_peer: Callable[..., SMTPPeer], ca_file: Path, secret_file: Path
) -> None:
    server = TokenEndpoint(clock=clock, expires_in="600").start()  # a string, as Azure AD v1
    try:
        peer = start_peer(server.accepts)
        built = relay_for(
            peer, ca_file, client_credentials(server, secret_file), messages_per_connection=1
        )
        assert built.settings.oauth2 is not None
        tokens = make_token_source(built.settings.oauth2, clock=clock)
        relay = SMTPRelay("x", built.settings, tokens=tokens)
        try:
            await relay.deliver(envelope(1))
            clock.now += 530
            await relay.deliver(envelope(2))
            assert len(server.requests) == 1
            clock.now += 20  # 550s > 540s (600 less 10 %)
            await relay.deliver(envelope(3))
        finally:
            await relay.aclose()
        assert len(server.requests) == 2
        assert peer.auth_log == [(MAILBOX, True)] * 3
    finally:
        server.stop()


async def test_a_refused_token_is_replaced_once_and_the_message_goes_out(
    endpoint: TokenEndpoint, oauth_peer: SMTPPeer, ca_file: Path, secret_file: Path, caplog
) -> None:
    relay = relay_for(
        oauth_peer, ca_file, client_credentials(endpoint, secret_file), messages_per_connection=1
    )
    try:
        await relay.deliver(envelope(1))
        endpoint.revoke_all()  # e.g. an admin revoked the app's sessions
        with caplog.at_level(logging.INFO, logger="mqd.relay.smtp"):
            result = await relay.deliver(envelope(2))
    finally:
        await relay.aclose()
    assert result.replies["rcpt2@example.net"].code == 250
    assert oauth_peer.auth_log == [(MAILBOX, True), (MAILBOX, False), (MAILBOX, True)]
    assert len(endpoint.requests) == 2
    assert [m.rcpt_tos for m in oauth_peer.wait_for(2)] == [
        ["rcpt1@example.net"],
        ["rcpt2@example.net"],
    ]
    assert "refused the XOAUTH2 token" in caplog.text


async def test_refused_twice_is_transient_and_says_what_to_fix(
    endpoint: TokenEndpoint, start_peer: Callable[..., SMTPPeer], ca_file: Path, secret_file: Path
) -> None:
    peer = start_peer(lambda user, token: False)  # e.g. SMTP AUTH disabled for the mailbox
    relay = relay_for(peer, ca_file, client_credentials(endpoint, secret_file))
    with pytest.raises(TransientRelayError) as info:
        await deliver(relay, envelope())
    assert not isinstance(info.value, PermanentRelayError)
    message = str(info.value)
    assert "relay x" in message and MAILBOX in message
    assert "535" in message and "SMTP AUTH" in message and "consent" in message
    assert info.value.reply is not None and info.value.reply.code == 454
    assert peer.auth_log == [(MAILBOX, False), (MAILBOX, False)]  # exactly one retry
    assert len(endpoint.requests) == 2  # with a new token
    assert peer.messages == []


async def test_concurrent_connections_share_one_token_request(
    endpoint: TokenEndpoint, oauth_peer: SMTPPeer, ca_file: Path, secret_file: Path
) -> None:
    relay = relay_for(oauth_peer, ca_file, client_credentials(endpoint, secret_file))
    try:
        results = await asyncio.gather(*(relay.deliver(envelope(n)) for n in range(1, 6)))
    finally:
        await relay.aclose()
    assert all(r.replies[f"rcpt{n}@example.net"].code == 250 for n, r in enumerate(results, 1))
    assert oauth_peer.connections >= 2  # several sessions were opened at once
    assert len(endpoint.requests) == 1


async def test_a_failed_renewal_reaches_every_waiting_caller_once(
    endpoint: TokenEndpoint, secret_file: Path
) -> None:
    endpoint.failure = (503, "temporarily unavailable")
    opts = Options(client_credentials(endpoint, secret_file), section="relays.x.oauth2", path=None)
    tokens = make_token_source(OAuth2Settings.from_options(opts))
    outcomes = await asyncio.gather(*(tokens.token() for _ in range(4)), return_exceptions=True)
    assert all(isinstance(o, TokenError) and "HTTP 503" in str(o) for o in outcomes)
    assert len(endpoint.requests) == 1
    endpoint.failure = None
    assert await tokens.token() == "access-token-1"  # the next call tries again
    tokens.invalidate("some-other-token")  # not the cached one: kept
    assert await tokens.token() == "access-token-1"
    tokens.invalidate("access-token-1")
    assert await tokens.token() == "access-token-2"


# -- failures of the token source: transient, never a bounce ------------------------------------


def oauth2_relay(peer: SMTPPeer, ca_file: Path, token_url: str, secret: Path) -> dict[str, Any]:
    """A ``[relays.<name>]`` table (with its oauth2 sub-table) for the daemon harness."""
    return {
        "plugin": "smtp",
        "host": "127.0.0.1",
        "port": peer.port,
        "security": "starttls",
        "tls_ca_file": ca_file,
        "username": MAILBOX,
        "connect_timeout": "5s",
        "oauth2": {
            "token_url": token_url,
            "client_id": CLIENT_ID,
            "client_secret_file": secret,
            "scope": M365_SCOPE,
            "timeout": "5s",
        },
    }


async def test_endpoint_down_defers_the_message_and_logs_what_to_fix(
    mqd_harness: Harness,
    host: PluginHost,
    ca_file: Path,
    secret_file: Path,
    start_peer: Callable[..., SMTPPeer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer = start_peer(lambda user, token: True)
    down = f"http://127.0.0.1:{closed_port()}/token"
    mqd_harness.configure({"m365": oauth2_relay(peer, ca_file, down, secret_file)})
    mqd_harness.drop(make_message("app@example.com", ("alice@example.net",)))
    with caplog.at_level(logging.INFO):
        await mqd_harness.run_once(host=host)
    [entry] = mqd_harness.queued()
    assert entry.attempts == 1
    assert [r.status.value for r in entry.recipients] == ["pending"]
    assert mqd_harness.failed() == []  # no bounce, nothing given up
    assert peer.connections == 0  # no token, so no session was even opened
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    line = next(w for w in warnings if "token endpoint" in w)
    assert down in line and "check token_url" in line and MAILBOX in line
    assert CLIENT_SECRET not in caplog.text


async def test_daemon_delivers_with_oauth2_from_the_config_file(
    mqd_harness: Harness,
    host: PluginHost,
    ca_file: Path,
    secret_file: Path,
    endpoint: TokenEndpoint,
    oauth_peer: SMTPPeer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mqd_harness.configure({"m365": oauth2_relay(oauth_peer, ca_file, endpoint.url, secret_file)})
    mqd_harness.drop(make_message("app@example.com", ("alice@example.net",)))
    with caplog.at_level(logging.DEBUG):
        await mqd_harness.run_once(host=host)
    assert mqd_harness.queued() == [] and mqd_harness.failed() == []
    [received] = oauth_peer.wait_for(1)
    assert received.rcpt_tos == ["alice@example.net"] and received.authenticated
    assert "oauth2 for noreply@example.com" in caplog.text  # describe() at start-up
    for secret in (CLIENT_SECRET, "access-token-1"):
        assert secret not in caplog.text


async def test_endpoint_error_names_the_oauth2_error_and_the_fix(
    endpoint: TokenEndpoint, oauth_peer: SMTPPeer, ca_file: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-secret")
    wrong.chmod(0o600)
    endpoint.failure = (
        401,
        {
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1",
        },
    )
    relay = relay_for(oauth_peer, ca_file, client_credentials(endpoint, wrong))
    with pytest.raises(TransientRelayError) as info:
        await deliver(relay, envelope())
    message = str(info.value)
    assert "invalid_client" in message and "AADSTS7000215" in message
    assert "client secret" in message and "not-the-secret" not in message
    assert info.value.reply is not None and info.value.reply.code == 454
    assert oauth_peer.connections == 0


async def test_expired_refresh_token_says_to_get_a_new_one(
    endpoint: TokenEndpoint, oauth_peer: SMTPPeer, ca_file: Path, refresh_file: Path
) -> None:
    endpoint.refresh_tokens.clear()
    relay = relay_for(oauth_peer, ca_file, refresh_flow(endpoint, refresh_file))
    with pytest.raises(TransientRelayError, match="invalid_grant") as info:
        await deliver(relay, envelope())
    assert "refresh_token_file" in str(info.value)
    assert FIRST_REFRESH_TOKEN not in str(info.value)


async def test_command_failure_is_transient_with_its_stderr(
    oauth_peer: SMTPPeer, ca_file: Path, tmp_path: Path
) -> None:
    command = token_script(
        tmp_path,
        "sys.stderr.write('starting\\nvault is sealed: run vault unseal\\n')\nsys.exit(3)\n",
    )
    relay = relay_for(oauth_peer, ca_file, {"token_command": command})
    with pytest.raises(TransientRelayError) as info:
        await deliver(relay, envelope())
    message = str(info.value)
    assert not isinstance(info.value, PermanentRelayError)
    assert "vault is sealed: run vault unseal" in message
    assert "starting" not in message  # the last line of stderr only
    assert "exit status 3" in message and "get-token.py" in message
    assert oauth_peer.connections == 0


async def test_command_without_output_is_a_token_failure(
    oauth_peer: SMTPPeer, ca_file: Path, tmp_path: Path
) -> None:
    command = token_script(tmp_path, "print('')\n")
    relay = relay_for(oauth_peer, ca_file, {"token_command": command})
    with pytest.raises(TransientRelayError, match="printed no token"):
        await deliver(relay, envelope())


async def test_command_that_hangs_is_killed_after_the_timeout(
    oauth_peer: SMTPPeer, ca_file: Path, tmp_path: Path
) -> None:
    command = token_script(tmp_path, "import time\ntime.sleep(60)\n")
    relay = relay_for(oauth_peer, ca_file, {"token_command": command, "timeout": "0.5s"})
    with pytest.raises(TransientRelayError, match="did not finish"):
        await deliver(relay, envelope())


async def test_server_without_xoauth2_is_transient(
    smtp_tls_server: SMTPPeer, endpoint: TokenEndpoint, ca_file: Path, secret_file: Path
) -> None:
    relay = relay_for(smtp_tls_server, ca_file, client_credentials(endpoint, secret_file))
    with pytest.raises(TransientRelayError, match="does not offer AUTH XOAUTH2") as info:
        await deliver(relay, envelope())
    assert "LOGIN" in str(info.value) and "PLAIN" in str(info.value)
    assert smtp_tls_server.messages == []


# -- refresh-token rotation ---------------------------------------------------------------------


async def test_a_rotated_refresh_token_is_written_back_to_its_file(
    endpoint: TokenEndpoint, oauth_peer: SMTPPeer, ca_file: Path, refresh_file: Path, caplog
) -> None:
    endpoint.rotate = True
    relay = relay_for(oauth_peer, ca_file, refresh_flow(endpoint, refresh_file))
    with caplog.at_level(logging.DEBUG):
        await deliver(relay, envelope(1))
    assert refresh_file.read_text() == "refresh-token-1\n"
    assert stat.S_IMODE(refresh_file.stat().st_mode) == 0o600
    assert [p.name for p in refresh_file.parent.iterdir()] == ["refresh-token"]  # no temp left
    assert f"saved it to {refresh_file}" in caplog.text
    assert "refresh-token-1" not in caplog.text and FIRST_REFRESH_TOKEN not in caplog.text
    # After a restart the saved token works; the old one has been retired by the endpoint.
    assert FIRST_REFRESH_TOKEN not in endpoint.refresh_tokens
    restarted = relay_for(oauth_peer, ca_file, refresh_flow(endpoint, refresh_file))
    await deliver(restarted, envelope(2))
    assert endpoint.requests[-1]["refresh_token"] == "refresh-token-1"
    assert refresh_file.read_text() == "refresh-token-2\n"
    assert len(oauth_peer.wait_for(2)) == 2


async def test_a_rotated_refresh_token_that_cannot_be_saved_is_kept_and_warned_about(
    endpoint: TokenEndpoint,
    start_peer: Callable[..., SMTPPeer],
    ca_file: Path,
    refresh_file: Path,
    clock: Clock,
    caplog,
) -> None:
    endpoint.rotate = True
    peer = start_peer(endpoint.accepts)
    built = relay_for(
        peer, ca_file, refresh_flow(endpoint, refresh_file), messages_per_connection=1
    )
    assert built.settings.oauth2 is not None
    relay = SMTPRelay(
        "x", built.settings, tokens=make_token_source(built.settings.oauth2, clock=clock)
    )
    shutil.rmtree(refresh_file.parent)  # read at start-up; now it cannot be written back
    try:
        with caplog.at_level(logging.INFO):
            await relay.deliver(envelope(1))
            clock.now += 3600  # the access token is due: refresh with the rotated token
            await relay.deliver(envelope(2))
    finally:
        await relay.aclose()
    assert [form["refresh_token"] for form in endpoint.requests] == [
        FIRST_REFRESH_TOKEN,
        "refresh-token-1",
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("cannot save it" in w and str(refresh_file.parent) in w for w in warnings)
    assert len(peer.wait_for(2)) == 2


# -- configuration -----------------------------------------------------------------------------


def config_error(oauth2: Any, **options: Any) -> ConfigError:
    table = {
        "host": "smtp.example.com",
        "username": MAILBOX,
        "oauth2": oauth2,
        **options,
    }
    opts = Options(table, section="relays.x", path=None)
    with pytest.raises(ConfigError) as info:
        SMTPRelay.from_options("x", opts)
        opts.finish()
    return info.value


FLOW = {"token_url": "https://login.example.com/token", "client_id": "app", "client_secret": "s"}


def test_password_and_oauth2_together_are_refused() -> None:
    error = config_error(FLOW, password="pw")
    assert error.key == "relays.x.password"
    assert "oauth2" in str(error)


def test_oauth2_needs_a_username() -> None:
    error = config_error(FLOW, username=None)
    assert error.key == "relays.x.username"
    assert "mailbox" in str(error)


def test_oauth2_is_refused_over_clear_text() -> None:
    error = config_error(FLOW, security="none")
    assert error.key == "relays.x.security"
    assert "OAuth2 token" in str(error)


def test_token_command_and_token_url_together_are_refused() -> None:
    error = config_error({"token_command": [sys.executable], **FLOW})
    assert error.key == "relays.x.oauth2.token_url"
    assert "not both" in str(error)


def test_an_empty_oauth2_table_asks_for_a_token_source() -> None:
    error = config_error({})
    assert error.key == "relays.x.oauth2.token_url"
    assert "token_command" in str(error)


def test_unknown_key_in_the_oauth2_table_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "mqd.toml"
    path.write_text("")
    path.chmod(0o600)  # FLOW has an inline client_secret
    table = {"host": "h", "username": MAILBOX, "oauth2": {**FLOW, "scopes": "x"}}
    opts = Options(table, section="relays.x", path=path)
    with pytest.raises(ConfigError) as info:
        SMTPRelay.from_options("x", opts)
    assert info.value.key == "relays.x.oauth2.scopes"
    assert "did you mean 'scope'" in str(info.value)
    assert str(path) in str(info.value)


def test_client_credentials_need_a_client_secret() -> None:
    error = config_error({"token_url": "https://login.example.com/token", "client_id": "app"})
    assert error.key == "relays.x.oauth2.client_secret_file"


def test_client_id_is_required() -> None:
    error = config_error({"token_url": "https://login.example.com/token", "client_secret": "s"})
    assert error.key == "relays.x.oauth2.client_id"


def test_token_url_must_be_https_except_on_loopback() -> None:
    error = config_error({**FLOW, "token_url": "http://login.example.com/token"})
    assert error.key == "relays.x.oauth2.token_url"
    assert "https://" in str(error)
    for url in ("http://127.0.0.1:8080/token", "http://localhost/token"):
        opts = Options({**FLOW, "token_url": url}, section="relays.x.oauth2", path=None)
        assert OAuth2Settings.from_options(opts).token_url == url


def test_flow_keys_with_token_command_are_refused() -> None:
    error = config_error({"token_command": [sys.executable], "client_id": "app"})
    assert error.key == "relays.x.oauth2.client_id"
    assert "token_url" in str(error)


def test_token_lifetime_with_token_url_is_refused() -> None:
    error = config_error({**FLOW, "token_lifetime": "10m"})
    assert error.key == "relays.x.oauth2.token_lifetime"


def test_a_missing_token_command_is_refused_at_start_up(tmp_path: Path) -> None:
    error = config_error({"token_command": [str(tmp_path / "no-such-program")]})
    assert error.key == "relays.x.oauth2.token_command"
    assert "not found" in str(error)
    error = config_error({"token_command": "get-token --quiet"})
    assert "list of strings" in str(error)


def test_a_relative_token_command_is_relative_to_the_config_file(tmp_path: Path) -> None:
    program = tmp_path / "bin" / "get-token"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\necho tok\n")
    program.chmod(0o700)
    config = tmp_path / "mqd.toml"
    config.write_text("")
    opts = Options({"token_command": ["bin/get-token", "-q"]}, section="o", path=config)
    settings = OAuth2Settings.from_options(opts)
    assert settings.token_command == (str(program), "-q")


def test_describe_says_oauth2_and_where_tokens_come_from() -> None:
    table = {"host": "smtp.office365.com", "username": MAILBOX, "oauth2": FLOW}
    relay = SMTPRelay.from_options("x", Options(table, section="relays.x", path=None))
    assert relay.describe() == (
        f"smtp smtp.office365.com:587 starttls oauth2 for {MAILBOX} "
        "(token endpoint login.example.com, client credentials)"
    )


def test_secrets_are_not_in_the_settings_repr(refresh_file: Path) -> None:
    opts = Options(
        {
            "token_url": "https://t.example/token",
            "client_id": "app",
            "client_secret": "shh",
            "refresh_token_file": str(refresh_file),
        },
        section="o",
        path=None,
    )
    settings = OAuth2Settings.from_options(opts)
    assert "shh" not in repr(settings) and FIRST_REFRESH_TOKEN not in repr(settings)
    assert settings.refresh_token_file == refresh_file
    assert settings.flow == "refresh token"


def test_every_oauth2_key_is_documented() -> None:
    """tests/test_docs.py sees only top-level relay keys; this covers the oauth2 sub-table."""
    keys: set[str] = set()
    for oauth2 in (FLOW, {"token_command": [sys.executable]}):
        opts = Options(oauth2, section="relays.x.oauth2", path=None)
        OAuth2Settings.from_options(opts)
        keys |= opts._known
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    body = section(text, "`[relays.<name>.oauth2]`")
    assert body is not None, "docs/configuration.md needs a heading with `[relays.<name>.oauth2]`"
    rows = "\n".join(table_rows(body))
    missing = sorted(k for k in keys if f"`{k}`" not in rows)
    assert not missing, f"oauth2 keys undocumented in docs/configuration.md: {missing}"
    assert {"token_command", "token_url", "client_secret_file", "refresh_token_env"} <= keys
