"""Secrets: an inline secret in a config others can read is refused, ssh-style, whichever relay
holds it; and a secret never shows in logs, state and failed/ files, ``config check`` output or
tracebacks, even when the login it is for keeps failing."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import pytest
from click.testing import CliRunner
from corehelpers import drop, run_once
from smtpserver import SMTPPeer

from mqd.cli.main import cli
from mqd.config.load import load_config
from mqd.config.options import Options, Secret
from mqd.errors import ConfigError
from mqd.message.envelope import Envelope
from mqd.plugins.hookspecs import hookimpl
from mqd.plugins.host import PluginHost
from mqd.relays.base import DeliveryResult, Relay
from mqd.relays.build import build_relays

PASSWORD = "hunter2-Zq9-secret"

RELAYS = {
    "smtp": f'plugin = "smtp"\nhost = "127.0.0.1"\nusername = "u"\npassword = "{PASSWORD}"',
    "oauth2": (
        'plugin = "smtp"\nhost = "127.0.0.1"\nusername = "u"\n'
        "[relays.r.oauth2]\n"
        'token_url = "https://login.example.com/token"\nclient_id = "c"\n'
        f'client_secret = "{PASSWORD}"'
    ),
    "sendgrid": f'plugin = "sendgrid"\napi_key = "{PASSWORD}"',
}


def config_text(spool: Path, queue: Path, relay: str) -> str:
    return (
        f'[queue]\ndir = "{queue}"\n[[spool]]\npath = "{spool}"\n'
        f'allowed_senders = ["app@example.com"]\n[relays.r]\n{relay}\n'
    )


@pytest.mark.parametrize("kind", RELAYS)
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_an_inline_secret_in_a_readable_config_is_refused(
    kind: str, mode: int, tmp_path: Path, spool: Path, queue_dir: Path
) -> None:
    host = PluginHost()
    if kind == "sendgrid" and "sendgrid" not in host.relay_classes():
        pytest.skip("the mqd-sendgrid plugin is not installed")
    path = tmp_path / "mqd.toml"
    path.write_text(config_text(spool, queue_dir, RELAYS[kind]))
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        build_relays(load_config(path), host)
    message = str(caught.value)
    assert "too open" in message and f"chmod 600 {path}" in message
    assert PASSWORD not in message


def test_a_secret_never_shows_itself() -> None:
    secret = Secret(PASSWORD)
    assert PASSWORD not in repr(secret) and PASSWORD not in str(secret)
    assert PASSWORD not in f"{secret} {secret!r} {[secret]} {dict(k=secret)}"
    options = Options({"password": PASSWORD}, section="relays.r", path=None)
    options.secret("password")
    assert PASSWORD not in str(options.effective())


async def test_a_failing_login_never_logs_the_password(
    write_config: Callable[[str], Path],
    spool: Path,
    queue_dir: Path,
    smtp_tls_server: SMTPPeer,
    ca_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_config(
        f"""
        [queue]
        dir = "{queue_dir}"
        [[spool]]
        path = "{spool}"
        allowed_senders = ["app@example.com"]
        [relays.r]
        plugin = "smtp"
        host = "127.0.0.1"
        port = {smtp_tls_server.port}
        tls_ca_file = "{ca_file}"
        username = "relay-user"
        password = "{PASSWORD}"
        """
    )
    drop(spool)
    with caplog.at_level(logging.DEBUG):
        await run_once(load_config(path), PluginHost(entry_points=False))
    assert "refused the login" in caplog.text  # the failure is reported ...
    everything = caplog.text + "".join(
        str(r.exc_info) + str(getattr(r, "mqd", "")) for r in caplog.records
    )
    assert PASSWORD not in everything  # ... without the password
    for file in queue_dir.rglob("*"):
        if file.is_file() and file.suffix in (".json", ""):
            assert PASSWORD.encode() not in file.read_bytes(), file


def test_config_check_never_prints_a_secret(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path
) -> None:
    path = write_config(config_text(spool, queue_dir, RELAYS["smtp"]))
    for args in (["config", "check"], ["config", "check", "--quiet"]):
        result = CliRunner().invoke(cli, ["--config", str(path), *args])
        assert result.exit_code == 0, result.output
        assert PASSWORD not in result.output
    assert os.stat(path).st_mode & 0o077 == 0


def leaks(caplog: pytest.LogCaptureFixture, queue_dir: Path) -> list[str]:
    """Where PASSWORD shows: any log record (message, arguments, traceback, structured fields)
    or any file in the queue (state, failed/ reasons, quarantine)."""
    found = []
    for record in caplog.records:
        text = record.getMessage() + str(getattr(record, "mqd", ""))
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        if PASSWORD in text:
            found.append(f"log record {record.name}: {text[:200]}")
    found += [
        str(file)
        for file in queue_dir.rglob("*")
        if file.is_file() and PASSWORD.encode() in file.read_bytes()
    ]
    return found


class Refusing401(BaseHTTPRequestHandler):
    """SendGrid's answer to a revoked API key, recording the Authorization headers it saw."""

    seen: list[str]

    def do_POST(self) -> None:
        self.server.seen.append(self.headers.get("Authorization", ""))  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps(
            {
                "errors": [
                    {
                        "field": None,
                        "message": "The provided authorization grant is "
                        "invalid, expired, or revoked",
                    }
                ]
            }
        ).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def sendgrid_401() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing401)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_a_sendgrid_401_never_logs_the_api_key(
    write_config: Callable[[str], Path],
    spool: Path,
    queue_dir: Path,
    sendgrid_401: ThreadingHTTPServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = PluginHost()
    if "sendgrid" not in host.relay_classes():
        pytest.skip("the mqd-sendgrid plugin is not installed")
    port = sendgrid_401.server_address[1]
    path = write_config(
        config_text(
            spool, queue_dir, RELAYS["sendgrid"] + f'\nbase_url = "http://127.0.0.1:{port}"'
        )
    )
    drop(spool)
    with caplog.at_level(logging.DEBUG):
        await run_once(load_config(path), host)
    assert sendgrid_401.seen == [f"Bearer {PASSWORD}"]  # the key was used ...
    assert "401" in caplog.text  # ... the refusal is reported ...
    assert leaks(caplog, queue_dir) == []  # ... and the key is nowhere


class Crashing(Relay):
    """A relay with a bug: it raises something unexpected, its secret in the message."""

    def __init__(self, name: str, password: Secret) -> None:
        super().__init__(name)
        self.password = password

    @classmethod
    def from_options(cls, name: str, options: Options) -> Self:
        password = options.secret("password", required=True)
        assert password is not None
        return cls(name, password)

    async def deliver(self, envelope: Envelope) -> DeliveryResult:
        password = self.password
        raise RuntimeError(f"bug: cannot use {password!r} ({password}) for {envelope.id}")


class CrashingPlugin:
    @hookimpl
    def mqd_register_relays(self, register: Callable[[str, type[Relay]], None]) -> None:
        register("crashing", Crashing)


async def test_a_relay_crashing_with_the_secret_in_hand_never_logs_it(
    write_config: Callable[[str], Path],
    spool: Path,
    queue_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_config(
        config_text(spool, queue_dir, f'plugin = "crashing"\npassword = "{PASSWORD}"')
    )
    drop(spool)
    with caplog.at_level(logging.DEBUG):
        await run_once(load_config(path), PluginHost(entry_points=False, extra=[CrashingPlugin()]))
    crash = next(r for r in caplog.records if "raised unexpectedly" in r.getMessage())
    assert crash.exc_info is not None and "RuntimeError" in logging.Formatter().formatException(
        crash.exc_info
    )
    assert leaks(caplog, queue_dir) == []
