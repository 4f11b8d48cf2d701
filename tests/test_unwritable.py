"""Folders that cannot be written, for real: the failed folder, the spool and the queue on
tmpfs mounts made read-only at start or while the daemon runs. What needs the folder pauses and
says so once; what does not goes on; everything resumes by itself when the folder can be written
again; nothing is lost or claimed in a loop. Root only (mounts); under CI=true never skipped.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from corehelpers import make_message
from smtpserver import SMTPPeer

from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.plugins.host import PluginHost
from mqd.producer.inject import inject
from mqd.testing import wait_until


class Mounts:
    def __init__(self) -> None:
        self.mounted: list[Path] = []

    def tmpfs(self, where: Path) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        self._run("mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(where))
        self.mounted.append(where)
        return where

    def read_only_over(self, where: Path) -> Path:
        """Cover ``where`` with an empty read-only tmpfs (what a directory made read-only under
        a running daemon looks like to it); ``unmount`` uncovers it."""
        self._run("mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(where))
        self.mounted.append(where)
        return where

    def unmount(self, where: Path) -> None:
        self._run("umount", str(where))
        self.mounted.remove(where)

    def read_only(self, where: Path) -> None:
        self._run("mount", "-o", "remount,ro", str(where))

    def writable(self, where: Path) -> None:
        self._run("mount", "-o", "remount,rw", str(where))

    @staticmethod
    def _run(*command: str) -> None:
        import os

        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{' '.join(command)} failed (CI needs root): {result.stderr}")
            pytest.skip(f"cannot mount here: {result.stderr.strip()}")


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    m = Mounts()
    yield m
    for where in reversed(m.mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def make_config(root: Path, spool: Path, queue: Path, port: int) -> Config:
    path = root / "mqd.toml"
    path.write_text(
        f"""
[queue]
dir = "{queue}"
bounce_sender = "mailer-daemon@mqd.test"
scan_interval = "1s"
retry = {{ initial = "1s", max = "2s" }}

[[spool]]
path = "{spool}"
relay = "sink"
allowed_senders = ["app@example.com"]

[relays.sink]
plugin = "smtp"
host = "127.0.0.1"
port = {port}
security = "none"
circuit_cooldown = "1s"
"""
    )
    path.chmod(0o600)
    return load_config(path)


@pytest.fixture
def sink() -> Iterator[SMTPPeer]:
    server = SMTPPeer().start()
    yield server
    server.stop()


async def test_a_read_only_failed_folder_keeps_refused_files_waiting_and_good_mail_flowing(
    tmp_path: Path, mounts: Mounts, sink: SMTPPeer
) -> None:
    spool, queue = tmp_path / "spool", tmp_path / "queue"
    spool.mkdir()
    failed = mounts.tmpfs(queue / "failed")
    config = make_config(tmp_path, spool, queue, sink.port)
    daemon = Daemon(config, host=PluginHost(entry_points=False), shutdown_timeout=5)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 20)
        mounts.read_only(failed)
        inject(spool, make_message("intruder@example.org", to=("alice@example.net",)))
        await wait_until(lambda: daemon.intake.refusing.active, "the refusal to wait")
        inject(spool, make_message(to=("bob@example.net",)))
        await wait_until(lambda: len(sink.messages) == 1, "the good message")
        assert sink.messages[0].rcpt_tos == ["bob@example.net"]
        assert not list(spool.glob("*.eml")), "nothing is put back into the spool"
        waiting = list((queue / "claim").glob("*/*.eml"))
        assert len(waiting) == 1, "the refused file waits in the claim area"
        assert not daemon.intake.fault.active, "intake itself is not paused"
        tries = daemon.intake.refusing.failures
        assert tries <= 3, f"no claim loop: {tries} tries"

        mounts.writable(failed)
        await wait_until(lambda: not daemon.intake.refusing.active, "the folder to take it")
        assert [p.suffix for p in sorted(failed.iterdir()) if not p.name.startswith(".")] == [
            ".eml",
            ".json",
        ]
        assert not list((queue / "claim").glob("*/*.eml"))
        assert len(sink.messages) == 1, "the refused message was never relayed"
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 20)


async def test_a_queue_made_read_only_while_running_pauses_intake_and_loses_nothing(
    tmp_path: Path, mounts: Mounts, sink: SMTPPeer
) -> None:
    spool, queue = tmp_path / "spool", tmp_path / "queue"
    spool.mkdir()
    config = make_config(tmp_path, spool, queue, sink.port)
    daemon = Daemon(config, host=PluginHost(entry_points=False), shutdown_timeout=5)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 20)
        inject(spool, make_message(to=("first@example.net",)))
        await wait_until(lambda: len(sink.messages) == 1, "the first message")
        bodies = mounts.read_only_over(queue / "messages" / config.spools[0].key)
        for n in range(5):
            inject(spool, make_message(to=(f"r{n}@example.net",)))
        await wait_until(
            lambda: daemon.intake.fault.active or daemon.intake.claiming.active,
            "intake to pause",
        )
        status = await daemon.admin.status()
        assert status.faults, "mqd status shows the fault"
        assert not list(spool.glob("*.eml")), "claimed: they wait in the claim area"
        mounts.unmount(bodies)
        await wait_until(lambda: len(sink.messages) == 6, "every message", 60)
        await wait_until(
            lambda: not daemon.intake.fault.active and not daemon.intake.claiming.active,
            "intake to resume",
        )
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 20)
    recipients = sorted(m.rcpt_tos[0] for m in sink.messages)
    assert recipients == sorted(["first@example.net", *(f"r{n}@example.net" for n in range(5))])


async def test_a_read_only_spool_at_start_is_said_and_taken_once_writable(
    tmp_path: Path, mounts: Mounts, sink: SMTPPeer, caplog: pytest.LogCaptureFixture
) -> None:
    spool = mounts.tmpfs(tmp_path / "spool")
    queue = tmp_path / "queue"
    inject(spool, make_message(to=("alice@example.net",)))
    mounts.read_only(spool)
    config = make_config(tmp_path, spool, queue, sink.port)
    daemon = Daemon(config, host=PluginHost(entry_points=False), shutdown_timeout=5)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 20)
        assert f"the spool {spool} cannot be written" in caplog.text
        await wait_until(lambda: daemon.intake.claiming.active, "claims to fail")
        assert len(list(spool.glob("*.eml"))) == 1, "the file stays where it is"
        mounts.writable(spool)
        await wait_until(lambda: len(sink.messages) == 1, "the message, once writable")
        await wait_until(lambda: not daemon.intake.claiming.active, "claims to resume")
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 20)
    claim_errors = [r for r in caplog.records if "claiming is failing" in r.getMessage()]
    assert len(claim_errors) == 1, "said once, not at every scan"


def test_a_read_only_queue_at_start_is_a_clear_error_not_a_bug(
    tmp_path: Path, mounts: Mounts, sink: SMTPPeer, env: dict[str, str]
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    queue = mounts.tmpfs(tmp_path / "queue")
    mounts.read_only(queue)
    config = make_config(tmp_path, spool, queue, sink.port)
    proc = subprocess.run(
        [sys.executable, "-m", "mqd", "--config", str(config.source), "run", "--once"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 73, proc.stderr  # EX_CANTCREAT: the queue cannot be written
    assert str(queue) in proc.stderr and "Traceback" not in proc.stderr
    assert "internal error" not in proc.stderr
    check = subprocess.run(
        [sys.executable, "-m", "mqd", "--config", str(config.source), "config", "check", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert check.returncode == 73 and check.stderr == proc.stderr  # the same check, the same words


def test_config_check_warns_of_a_read_only_spool_the_daemon_would_wait_for(
    tmp_path: Path, mounts: Mounts, sink: SMTPPeer, env: dict[str, str]
) -> None:
    spool = mounts.tmpfs(tmp_path / "spool")
    mounts.read_only(spool)
    config = make_config(tmp_path, spool, tmp_path / "queue", sink.port)
    check = subprocess.run(
        [sys.executable, "-m", "mqd", "--config", str(config.source), "config", "check", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr  # mqd runs, and takes the files once it can
    assert check.stderr.startswith(f"mqd: warning: {config.source}: key 'spool[0].path': ")
    assert f"cannot write in {spool}: Read-only file system" in check.stderr
    assert not (tmp_path / "queue").exists()
