"""``mqd sendmail`` reads no TOML when started by the launcher ``mqd install-sendmail`` wrote: the
settings the full loader found are written into it. They must be what the full loader finds,
and be left aside (the full loader reading the config) when they are for another config, of
another format, or the config file changed since."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import mqd.producer.settings as sendmail
from mqd.config.load import load_config
from mqd.errors import ConfigError
from mqd.producer.launcher import write_launcher

BASE = """
[queue]
dir = "{tmp}/queue"
[relays.sink]
plugin = "smtp"
host = "127.0.0.1"
port = 25
security = "none"
"""

MESSAGE = b"From: App <app@example.com>\nTo: Bob <bob@example.net>\nSubject: hi\n\nhello\n"


def baked_for(path: Path) -> dict[str, object]:
    return sendmail.Settings.from_config(load_config(path)).to_data()


@pytest.mark.parametrize(
    "extra",
    [
        '[[spool]]\npath = "{tmp}/spool"',
        '[[spool]]\npath = "relative/spool"',
        '[[spool]]\npath = "a"\n[[spool]]\npath = "b"\n[sendmail]\nspool = "b"\n',
        '[[spool]]\npath = "{tmp}/a"\n[sendmail]\nqualify_domain = "example.com"',
        '[spool]\npath = "one"',
    ],
)
def test_the_baked_settings_are_the_full_loaders(
    write_config: Callable[..., Path], tmp_path: Path, extra: str
) -> None:
    path = write_config((BASE + extra).format(tmp=tmp_path))
    config = load_config(path)
    found = sendmail.settings(None, baked_for(path))
    assert found.config == str(path)
    assert found.spool == os.path.abspath(config.inject_spool)
    assert found.qualify_domain == config.sendmail.qualify_domain
    # The same config named by -C takes them too.
    assert sendmail.settings(str(path), baked_for(path)).spool == found.spool


def test_baked_settings_are_used_without_reading_the_config(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_config((BASE + '[[spool]]\npath = "{tmp}/s"').format(tmp=tmp_path))
    baked = baked_for(path)
    path.chmod(0)  # unreadable now (its size and time unchanged): only the baked values serve
    try:
        if os.access(path, os.R_OK):
            pytest.skip("root reads any file")
        assert sendmail.settings(None, baked).spool == str(tmp_path / "s")
        with pytest.raises(ConfigError, match="cannot read"):
            sendmail.settings(None, None)
    finally:
        path.chmod(0o600)


def test_a_changed_config_is_read_in_full_and_the_stale_launcher_named(
    write_config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config((BASE + '[[spool]]\npath = "{tmp}/old"').format(tmp=tmp_path))
    baked = {**baked_for(path), "launcher": "/usr/sbin/sendmail"}
    write_config((BASE + '[[spool]]\npath = "{tmp}/new-spool"').format(tmp=tmp_path))
    assert sendmail.settings(None, baked).spool == str(tmp_path / "new-spool")
    err = capsys.readouterr().err
    assert f"{path} has changed since /usr/sbin/sendmail was written" in err
    assert f"mqd --config {path} install-sendmail --force /usr/sbin/sendmail" in err


def test_another_config_or_format_is_read_in_full(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_config((BASE + '[[spool]]\npath = "{tmp}/one"').format(tmp=tmp_path))
    other = write_config(
        (BASE + '[[spool]]\npath = "{tmp}/two"').format(tmp=tmp_path), name="other.toml"
    )
    baked = baked_for(path)
    assert sendmail.settings(str(other), baked).spool == str(tmp_path / "two")
    assert sendmail.settings(str(path), {**baked, "format": 0, "spool": "/x"}).spool == str(
        tmp_path / "one"
    )
    with pytest.raises(ConfigError, match="config file not found"):
        sendmail.settings(str(tmp_path / "nope.toml"), baked)


def test_without_baked_settings_the_full_loaders_error_is_shown(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_config(BASE + '[[spool]]\npath = "s"\n[sendmail]\nqualify_domian = "b.org"')
    with pytest.raises(ConfigError, match="qualify_domian"):
        sendmail.settings(str(path))
    with pytest.raises(ConfigError, match="config file not found"):
        sendmail.settings(str(tmp_path / "nope.toml"))


@pytest.mark.skipif(os.name != "posix", reason="a launcher is a #! script")
def test_the_launcher_reads_no_toml(
    producer_config: Path, spool: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """The launcher finds its spool with the config file gone from its directory's listing:
    replaced by one (same size and time) that would not parse."""
    launcher = tmp_path / "sendmail"
    write_launcher(launcher, load_config(producer_config))
    stat = producer_config.stat()
    producer_config.write_bytes(b"[" * stat.st_size)
    os.utime(producer_config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    proc = subprocess.run(
        [str(launcher), "-t", "-i"], input=MESSAGE, capture_output=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list(spool.glob("*.eml"))) == 1
