"""Shared fixtures: real SMTP servers (aiosmtpd on port 0), certificates, configs, spools."""

from __future__ import annotations

import os
import ssl
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.plugins.host import PluginHost

sys.path.insert(0, os.path.dirname(__file__))

from corehelpers import USERS, DaemonProcess
from pgfixtures import PgSchema
from smtpserver import SMTPPeer


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def server_tls_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def smtp_server() -> Iterator[SMTPPeer]:
    """Plain SMTP, no TLS, no AUTH (``security = "none"``)."""
    peer = SMTPPeer().start()
    yield peer
    peer.stop()


@pytest.fixture
def smtp_tls_server(server_tls_context: ssl.SSLContext) -> Iterator[SMTPPeer]:
    """STARTTLS required, AUTH required (user ``relay-user``)."""
    peer = SMTPPeer(tls_context=server_tls_context, require_starttls=True, users=USERS).start()
    yield peer
    peer.stop()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment for mqd subprocesses: no inherited config, per-test XDG dirs."""
    result = {k: v for k, v in os.environ.items() if k != "MQD_CONFIG"}
    result["XDG_CONFIG_HOME"] = str(tmp_path / "xdg-config")
    result["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
    return result


@pytest.fixture
def host() -> PluginHost:
    """Core plugins only: installed third-party plugins must not change test outcomes."""
    return PluginHost(entry_points=False)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def queue_dir(tmp_path: Path) -> Path:
    return tmp_path / "queue"


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write a TOML config (dedented) with mode 0600 and return its path."""

    def write(text: str, name: str = "mqd.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        path.chmod(0o600)
        return path

    return write


@pytest.fixture
def producer_config(write_config: Callable[..., Path], spool: Path, queue_dir: Path) -> Path:
    """A config file for the producer commands (``mqd sendmail`` and its launchers): the
    ``spool`` fixture's directory, allowing ``*@example.com``; its relay is never reached."""
    return write_config(
        f"""
        [queue]
        dir = "{queue_dir}"
        [[spool]]
        path = "{spool}"
        allowed_senders = ["*@example.com"]
        [relays.sink]
        plugin = "smtp"
        host = "127.0.0.1"
        port = 25
        security = "none"
        """
    )


@pytest.fixture
def sink_config(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path, smtp_server: SMTPPeer
) -> Callable[..., Config]:
    """``make(queue=..., relay=...)``: a config relaying ``spool`` to ``smtp_server`` over plain
    SMTP, with extra TOML lines for its ``[queue]`` and ``[relays.sink]`` tables."""

    def make(queue: str = "", relay: str = "") -> Config:
        text = "\n".join(
            [
                "[queue]",
                f'dir = "{queue_dir}"',
                textwrap.dedent(queue),
                "[[spool]]",
                f'path = "{spool}"',
                'relay = "sink"',
                'allowed_senders = ["app@example.com", "*@example.org"]',
                "[relays.sink]",
                'plugin = "smtp"',
                'host = "127.0.0.1"',
                f"port = {smtp_server.port}",
                'security = "none"',
                textwrap.dedent(relay),
            ]
        )
        return load_config(write_config(text))

    return make


@pytest.fixture
def plain_config(sink_config: Callable[..., Config]) -> Config:
    """One spool relayed to ``smtp_server`` over plain SMTP; fast retries for tests."""
    return sink_config(
        queue="""
        bounce_sender = "mailer-daemon@mqd.test"
        scan_interval = "1s"
        retry = { initial = "1s", max = "2s", lifetime = "1h" }
        """,
        relay="""
        connect_timeout = "5s"
        command_timeout = "5s"
        data_timeout = "5s"
        """,
    )


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """``DaemonProcess``es a test starts: killed at the end if still running."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)


@pytest.fixture
def schema() -> Iterator[PgSchema]:
    """A schema of its own on the local PostgreSQL (``pgfixtures``), dropped after the test."""
    made = PgSchema()
    try:
        yield made
    finally:
        made.drop()
