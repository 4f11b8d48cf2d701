"""Secrets: an inline secret in a config others can read is refused, ssh-style, whichever relay
holds it; and a secret never shows in logs, state and failed/ files, ``config check`` output or
tracebacks, even when the login it is for keeps failing."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from corehelpers import drop, run_once
from smtpserver import SMTPPeer

from mqd.cli import cli
from mqd.config import load_config
from mqd.errors import ConfigError
from mqd.options import Options, Secret
from mqd.plugins import PluginHost
from mqd.runtime import build_relays

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
