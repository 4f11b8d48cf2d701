"""A full disk, for real: the spool, the queue and the history database on small tmpfs mounts,
alone or together, with the upstream down and then up. Nothing accepted is lost, nothing is
delivered twice, nothing stays stuck, intake pauses and says so, and the daemon resumes on its
own when space comes back (as deliveries free it); a restart while the queue is full starts.

These need root (to mount); under CI=true they never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Callable, Iterator
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

#: About 10 kB per message: a 1 MB queue holds a few dozen.
FILLER = "x" * 76 + "\n"


def message(number: int) -> bytes:
    return make_message(
        to=(f"rcpt{number}@example.net",),
        subject=f"n{number}",
        body=FILLER * 130,
        extra_headers=(f"X-Test-Id: {number}",),
    )


@pytest.fixture
def mount_small() -> Iterator[Callable[[Path, str], Path]]:
    """Mount a tmpfs of the given size at a directory; unmounted after the test."""
    mounted: list[Path] = []

    def mount(where: Path, size: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            if os.environ.get("CI") == "true":
                pytest.fail(f"cannot mount a tmpfs (CI needs root): {result.stderr.strip()}")
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def write_config(root: Path, spool: Path, queue: Path, port: int, tracking: Path | None) -> Config:
    tracking_line = f'path = "{tracking}"' if tracking is not None else ""
    path = root / "mqd.toml"
    path.write_text(
        f"""
[queue]
dir = "{queue}"
bounce_sender = "mailer-daemon@mqd.test"
scan_interval = "1s"
retry = {{ initial = "1s", max = "2s" }}

[tracking]
{tracking_line}

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
circuit_max_cooldown = "2s"
"""
    )
    path.chmod(0o600)
    return load_config(path)


def drop_all(spool: Path, count: int) -> list[int]:
    """Write ``count`` messages into the spool as a producer does; those a full spool refuses
    are not the daemon's (the producer got the error): their numbers are left out."""
    written = []
    for number in range(count):
        try:
            inject(spool, message(number))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            continue
        written.append(number)
    return written


def delivered_ids(server: SMTPPeer) -> list[int]:
    ids = []
    for received in server.messages:
        for line in received.data.split(b"\r\n"):
            if line.startswith(b"X-Test-Id: "):
                ids.append(int(line.split(b": ", 1)[1]))
    return ids


def leftovers(spool: Path, queue: Path) -> list[str]:
    found = [p.name for p in spool.glob("*.eml")]
    found += [str(p) for p in spool.glob(".mqd-claim-*/*.eml")]
    found += [str(p) for p in queue.glob("claim/*/*.eml")]
    found += [str(p) for p in queue.glob("messages/*/*.eml")]
    return found


LAYOUTS = {
    # What is small: (spool, queue, tracking on its own).
    "queue full, spool elsewhere": (None, "1m", False),
    "spool and queue on one full filesystem": ("shared", "1200k", False),
    "spool full, queue elsewhere": ("600k", None, False),
    "history full, queue elsewhere": (None, None, True),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS, ids=list(LAYOUTS))
async def test_a_full_disk_loses_nothing_and_resumes_when_space_comes_back(
    layout: str, tmp_path: Path, mount_small: Callable[[Path, str], Path]
) -> None:
    spool_size, queue_size, small_history = LAYOUTS[layout]
    spool, queue, history = tmp_path / "spool", tmp_path / "queue", None
    if spool_size == "shared":
        shared = mount_small(tmp_path / "shared", queue_size or "1m")
        spool, queue = shared / "spool", shared / "queue"
    else:
        if spool_size:
            spool = mount_small(tmp_path / "spool", spool_size)
        if queue_size:
            queue = mount_small(tmp_path / "queue", queue_size)
    if small_history:
        history = mount_small(tmp_path / "history", "64k") / "tracking.sqlite3"
    spool.mkdir(parents=True, exist_ok=True)
    server = SMTPPeer()
    server.mail_reply = "421 4.3.2 the upstream is down"  # down: every attempt defers
    server.start()
    try:
        config = write_config(tmp_path, spool, queue, server.port, history)
        daemon = Daemon(config, host=PluginHost(entry_points=False), shutdown_timeout=5)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.ready.wait(), 20)
        written = drop_all(spool, 220)
        assert len(written) > 20
        if queue_size and spool_size != "shared":
            # The queue fills up: intake pauses and says so (once), the rest waits.
            await wait_until(lambda: daemon.intake.fault.active, "intake to pause", 60)
            status = await daemon.admin.status()
            assert any("intake" in fault.what for fault in status.faults)
        if spool_size == "shared":
            # Claims are renames (they need no room), but the deferrals cannot be written:
            # delivery says so, once, and keeps the messages.
            await wait_until(lambda: daemon.scheduler.fault.active, "delivery to report it", 60)
        server.mail_reply = None  # the upstream is back: deliveries free space
        await wait_until(lambda: len(server.messages) >= len(written), "every delivery", 120)
        await wait_until(lambda: not leftovers(spool, queue), "nothing left behind", 60)
        daemon.request_stop()
        await asyncio.wait_for(task, 20)
    finally:
        server.stop()
    ids = delivered_ids(server)
    assert sorted(ids) == sorted(written), "every accepted message delivered exactly once"
    assert not daemon.intake.fault.active


@pytest.mark.slow
async def test_a_restart_while_the_queue_is_full_starts_and_delivers_everything(
    tmp_path: Path, mount_small: Callable[[Path, str], Path]
) -> None:
    """Claimed files wait in the claim area (here in the spool's own, the queue being on another
    filesystem) while the queue is full; a restart takes them a batch at a time and does not
    crash on the first that does not fit."""
    spool = tmp_path / "spool"
    spool.mkdir()
    queue = mount_small(tmp_path / "queue", "1m")
    server = SMTPPeer()
    server.mail_reply = "421 4.3.2 the upstream is down"
    server.start()
    try:
        config = write_config(tmp_path, spool, queue, server.port, None)
        daemon = Daemon(config, host=PluginHost(entry_points=False), shutdown_timeout=5)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.ready.wait(), 20)
        written = drop_all(spool, 150)
        await wait_until(lambda: daemon.intake.fault.active, "intake to pause", 60)
        daemon.request_stop()
        await asyncio.wait_for(task, 20)
        waiting = list(spool.glob(".mqd-claim-*/*.eml")) + list(spool.glob("*.eml"))
        assert waiting, "files wait in the spool's claim area"

        again = Daemon(config, host=PluginHost(entry_points=False), shutdown_timeout=5)
        task = asyncio.create_task(again.run())
        await asyncio.wait_for(again.ready.wait(), 20)  # starts although the queue is full
        server.mail_reply = None
        await wait_until(lambda: len(server.messages) >= len(written), "every delivery", 120)
        await wait_until(lambda: not leftovers(spool, queue), "nothing left behind", 60)
        again.request_stop()
        await asyncio.wait_for(task, 20)
    finally:
        server.stop()
        with contextlib.suppress(Exception):
            task.cancel()
    assert sorted(delivered_ids(server)) == sorted(written)
