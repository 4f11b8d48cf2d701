"""A queue write that fails (disk full, EIO, an fsync error) leaves the message where it was,
reports the error, and the message goes out once the fault is gone.

The faults are injected by wrapping mqd.fsutil's writers in the test process: a real full disk
would need mount privileges this suite cannot count on. Everything else is real: files, the
daemon, the SMTP sink.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from corehelpers import drop, run_once
from smtpserver import SMTPPeer

import mqd.fsutil
import mqd.intake
import mqd.queue.filestore
from mqd.config import Config
from mqd.plugins import PluginHost

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
async def test_a_directory_fsync_failing_at_intake_puts_the_file_back(
    code: int,
    plain_config: Config,
    spool: Path,
    smtp_server: SMTPPeer,
    host: PluginHost,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Intake writes no state file: the claimed body's directory fsync is what accepts the
    message, and when it fails the file goes back into the spool."""
    path = drop(spool)
    content = path.read_bytes()
    monkeypatch.setattr(
        mqd.queue.filestore, "fsync_dirs", failing_dirs(mqd.fsutil.fsync_dirs, code, "/messages/")
    )
    with caplog.at_level(logging.ERROR):
        await run_once(plain_config, host)
    assert path.read_bytes() == content, "the file must be back in the spool, unchanged"
    assert smtp_server.messages == []
    assert os.strerror(code) in caplog.text and "go back into their spool" in caplog.text

    monkeypatch.undo()
    await run_once(plain_config, host)
    assert [m.rcpt_tos for m in smtp_server.messages] == [["alice@example.net"]]
    assert not path.exists()


def open_paths() -> list[str]:
    return [os.readlink(fd) for fd in Path("/proc/self/fd").iterdir() if fd.is_symlink()]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc/self/fd")
@pytest.mark.parametrize("code", FAULTS.values(), ids=FAULTS.keys())
@pytest.mark.parametrize(
    "count", [3, 4 * mqd.intake.SYNC_CHUNK], ids=["one thread", "four threads"]
)
async def test_a_body_fsync_failing_at_intake_puts_every_file_of_the_batch_back(
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
    several threads at once): one failing fsync, whichever thread it is in, puts the whole
    batch back, each file closed and unchanged."""
    paths = [drop(spool) for _ in range(count)]
    contents = [path.read_bytes() for path in paths]
    real_fsync, bodies = os.fsync, []

    def fsync(fd: int) -> None:
        if "/messages/" in os.readlink(f"/proc/self/fd/{fd}"):
            bodies.append(fd)
            if len(bodies) == count - 1:  # near the end: in a large batch, another thread's
                raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with caplog.at_level(logging.ERROR):
        await run_once(plain_config, host)
    monkeypatch.undo()
    assert [path.read_bytes() for path in paths] == contents, "every file back, unchanged"
    assert smtp_server.messages == []
    if count <= mqd.intake.SYNC_CHUNK:  # one thread: it stopped at the failing one
        assert len(bodies) == count - 1
    assert os.strerror(code) in caplog.text
    assert f"{count} message(s) go back into their spool" in caplog.text
    queue = str(plain_config.queue.dir)
    assert not [path for path in open_paths() if path.startswith(queue)], "no file left open"

    await run_once(plain_config, host)
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
    await asyncio.sleep(1.3)
    monkeypatch.setattr(
        mqd.queue.filestore, "atomic_write", failing(mqd.fsutil.atomic_write, errno.EIO, "/state/")
    )
    with caplog.at_level(logging.ERROR):
        await run_once(plain_config, host)
    monkeypatch.undo()
    assert "could not be processed; keeping it" in caplog.text
    assert state.read_bytes() == before
    assert list((queue_dir / "messages").rglob("*.eml")), "the body is still there"
    smtp_server.temp_failures = False
    await run_once(plain_config, host)
    assert [m.rcpt_tos for m in smtp_server.messages] == [["temp-bob@example.net"]]
    assert not list((queue_dir / "state").iterdir())


async def test_moving_to_failed_that_fails_keeps_the_message_and_says_so(
    plain_config: Config,
    spool: Path,
    smtp_server: SMTPPeer,
    host: PluginHost,
    queue_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    drop(spool, to=("perm-bob@example.net",))
    original = mqd.queue.filestore.FileStore._fail

    def fail_fails(self: object, *args: object) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "failed/")

    monkeypatch.setattr(mqd.queue.filestore.FileStore, "_fail", fail_fails)
    with caplog.at_level(logging.ERROR):
        await run_once(plain_config, host)
    assert "could not be processed; keeping it" in caplog.text
    assert list((queue_dir / "state").iterdir()), "the message is still queued"
    monkeypatch.setattr(mqd.queue.filestore.FileStore, "_fail", original)
    assert not [m for m in smtp_server.messages if m.mail_from in ("", "<>")], (
        "no DSN leaves before the bounced message has noted it"
    )
    # The next run finds the failure recorded and its DSN queued: one DSN, the move finished.
    await run_once(plain_config, host)
    dsns = [m for m in smtp_server.messages if m.mail_from in ("", "<>")]
    assert len(dsns) == 1
    assert len(list((queue_dir / "failed").glob("*.json"))) == 1
