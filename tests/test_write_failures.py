"""A queue write that fails (disk full, EIO, an fsync error) leaves the message where it was,
reports the error, and the message goes out once the fault is gone; only the fsyncs of a batch
just claimed, which delivery does not wait for, leave it queued and delivered all the same.

The faults are injected by wrapping mqd.fsutil's writers in the test process: a real full disk
would need mount privileges this suite cannot count on. Everything else is real: files, the
daemon, the SMTP sink.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from corehelpers import drop, run_once
from smtpserver import SMTPPeer

import mqd.fsutil
import mqd.intake.pipeline
import mqd.queue.file.disk
from mqd.clock import ManualClock
from mqd.config.schema import Config
from mqd.plugins.host import PluginHost

FAULTS = {
    "disk full": errno.ENOSPC,
    "I/O error": errno.EIO,
}


def failing(original: Callable[..., None], code: int, where: str) -> Callable[..., None]:
    def write(path: Path, *args: object, **kwargs: object) -> None:
        if where in str(path):
            raise OSError(code, os.strerror(code), str(path))
        original(path, *args, **kwargs)

    return write


def failing_dirs(original: Callable[..., None], code: int, where: str) -> Callable[..., None]:
    def sync(dirs: list[Path]) -> None:
        for directory in dirs:
            if where in str(directory):
                raise OSError(code, os.strerror(code), str(directory))
        original(dirs)

    return sync


@pytest.mark.parametrize("code", FAULTS.values(), ids=FAULTS.keys())
async def test_a_directory_fsync_failing_at_intake_is_reported_and_the_message_delivered(
    code: int,
    plain_config: Config,
    spool: Path,
    smtp_server: SMTPPeer,
    host: PluginHost,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Intake writes no state file: the claimed body's directory fsync is what makes the claim
    durable. Delivery does not wait for it; when it fails, the error is logged with the
    directory, and the message (queued, its data in the page cache) goes out all the same."""
    path = drop(spool)
    monkeypatch.setattr(
        mqd.queue.file.disk, "fsync_dirs", failing_dirs(mqd.fsutil.fsync_dirs, code, "/messages/")
    )
    with caplog.at_level(logging.ERROR):
        await run_once(plain_config, host)
    assert os.strerror(code) in caplog.text
    assert f"cannot fsync the queue directory {plain_config.queue.dir / 'messages'}" in (
        caplog.text
    )
    assert "the messages just queued are delivered all the same" in caplog.text
    assert [m.rcpt_tos for m in smtp_server.messages] == [["alice@example.net"]]
    assert not path.exists()
    assert not list((plain_config.queue.dir / "messages").rglob("*.eml")), "nothing left queued"


def open_paths() -> list[str]:
    return [os.readlink(fd) for fd in Path("/proc/self/fd").iterdir() if fd.is_symlink()]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc/self/fd")
@pytest.mark.parametrize("code", FAULTS.values(), ids=FAULTS.keys())
@pytest.mark.parametrize(
    "count", [3, 4 * mqd.intake.pipeline.SYNC_CHUNK], ids=["one thread", "four threads"]
)
async def test_a_body_fsync_failing_at_intake_is_reported_and_the_batch_delivered(
    code: int,
    count: int,
    plain_config: Config,
    spool: Path,
    smtp_server: SMTPPeer,
    host: PluginHost,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The bodies are claimed and read on the event loop and fsynced off it (a large batch in
    several threads at once) while they are delivered: one failing fsync, whichever thread it is
    in, is reported for the whole batch, every file is closed, and every message goes out."""
    paths = [drop(spool) for _ in range(count)]
    real_fsync, bodies = os.fsync, []

    lock = threading.Lock()

    def fsync(fd: int) -> None:
        # A body delivered and removed before its fsync (the batch is sent while it syncs)
        # reads "<path> (deleted)": a body all the same.
        if os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)").endswith(".eml"):
            with lock:  # threads append at once: the one that makes count - 1 is the one to fail
                bodies.append(fd)
                failing = len(bodies) == count - 1
            if failing:  # near the end: in a large batch, another thread's
                raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with caplog.at_level(logging.ERROR):
        await run_once(plain_config, host)
    monkeypatch.undo()
    if count <= mqd.intake.pipeline.SYNC_CHUNK:  # one thread: it stopped at the failing one
        assert len(bodies) == count - 1
    assert os.strerror(code) in caplog.text
    assert f"cannot fsync {count} message(s) just claimed" in caplog.text
    assert "they are delivered all the same" in caplog.text
    queue = str(plain_config.queue.dir)
    assert not [path for path in open_paths() if path.startswith(queue)], "no file left open"
    assert [m.rcpt_tos for m in smtp_server.messages] == [["alice@example.net"]] * count
    assert not any(path.exists() for path in paths)


async def test_a_state_write_failing_after_an_attempt_keeps_the_message_queued(
    plain_config: Config,
    spool: Path,
    smtp_server: SMTPPeer,
    host: PluginHost,
    queue_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The attempt defers (451) and saving that outcome fails: the message stays queued as it
    was (state and body), the error is logged, and the next run delivers it."""
    drop(spool, to=("temp-bob@example.net",))
    await run_once(plain_config, host)  # queued and deferred once (retry in 1 s)
    [state] = (queue_dir / "state").iterdir()
    before = state.read_bytes()
    later = ManualClock(time.time() + 2)  # the next runs: the retry is due
    monkeypatch.setattr(
        mqd.queue.file.disk, "atomic_write", failing(mqd.fsutil.atomic_write, errno.EIO, "/state/")
    )
    with caplog.at_level(logging.ERROR):
        await run_once(plain_config, host, clock=later)
    monkeypatch.undo()
    assert "messages could not be processed, keeping them" in caplog.text
    assert state.read_bytes() == before
    assert list((queue_dir / "messages").rglob("*.eml")), "the body is still there"
    smtp_server.temp_failures = False
    await run_once(plain_config, host, clock=later)
    assert [m.rcpt_tos for m in smtp_server.messages] == [["temp-bob@example.net"]]
    assert not list((queue_dir / "state").iterdir())


async def test_moving_to_failed_that_fails_keeps_the_message_and_sends_its_bounce_once(
    plain_config: Config,
    spool: Path,
    smtp_server: SMTPPeer,
    host: PluginHost,
    queue_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The failed folder cannot take the message: it stays queued and the error is logged, but
    its bounce goes out at once (the entry noted it durably first), and the next run finishes
    the move without a second bounce."""
    drop(spool, to=("perm-bob@example.net",))
    original = mqd.queue.file.disk.Disk._fail

    def fail_fails(self: object, *args: object) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "failed/")

    monkeypatch.setattr(mqd.queue.file.disk.Disk, "_fail", fail_fails)
    with caplog.at_level(logging.ERROR):
        await run_once(plain_config, host)
    assert "messages could not be processed, keeping them" in caplog.text
    assert list((queue_dir / "state").iterdir()), "the message is still queued"
    dsns = [m for m in smtp_server.messages if m.mail_from in ("", "<>")]
    assert len(dsns) == 1, "the bounce does not wait for the failed folder"
    monkeypatch.setattr(mqd.queue.file.disk.Disk, "_fail", original)
    # The next run finds the bounce noted: the move finishes, no second DSN.
    await run_once(plain_config, host)
    dsns = [m for m in smtp_server.messages if m.mail_from in ("", "<>")]
    assert len(dsns) == 1
    assert len(list((queue_dir / "failed").glob("*.json"))) == 1
    assert not list((queue_dir / "state").iterdir())
