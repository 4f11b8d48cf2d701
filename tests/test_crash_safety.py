"""SIGKILL at every step where state changes; after a restart nothing is lost, nothing is stuck,
every message is delivered or bounced at least once, and each bounce produces exactly one DSN.

The daemon is a real subprocess started through ``tests/crashpoint.py``, which kills it the n-th
time it reaches the step; the SMTP sink is a real aiosmtpd server in the test process.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from corehelpers import drop, make_message
from smtpserver import SMTPPeer

HERE = Path(__file__).parent
MQD = Path(sys.executable).with_name("mqd")
NORMAL = 4
BOUNCING = 2

pytestmark = pytest.mark.slow


@pytest.fixture
def crash_config(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path, smtp_server: SMTPPeer
) -> Path:
    return write_config(
        f"""
        [queue]
        dir = "{queue_dir}"
        bounce_sender = "mailer-daemon@mqd.test"
        concurrency = 1
        retry = {{ initial = "1h", max = "2h" }}

        [[spool]]
        path = "{spool}"
        allowed_senders = ["app@example.com"]

        [relays.sink]
        plugin = "smtp"
        host = "127.0.0.1"
        port = {smtp_server.port}
        security = "none"
        """
    )


def message_id(data: bytes) -> str | None:
    match = re.search(rb"^Message-ID:\s*<([^>]+)>", data, re.IGNORECASE | re.MULTILINE)
    return match.group(1).decode() if match else None


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("point", "nth"),
    [
        ("claim", 3),
        ("accepted", 1),
        ("relay-accepted", 2),
        ("before-removal", 2),
        ("bounce-before-dsn", 1),
        ("bounce-after-dsn", 1),
        ("bounce-after-dsn", 2),
        ("fail-move", 1),
    ],
)
def test_sigkill_at_a_state_change_loses_nothing(
    point: str,
    nth: int,
    crash_config: Path,
    spool: Path,
    queue_dir: Path,
    smtp_server: SMTPPeer,
    env: dict[str, str],
) -> None:
    ids = {}
    for n in range(NORMAL):
        data = make_message(to=(f"user{n}@example.net",), subject=f"normal {n}")
        drop(spool, data)
        ids[message_id(data)] = "normal"
    for n in range(BOUNCING):
        data = make_message(to=(f"perm-{n}@example.net",), subject=f"bouncing {n}")
        drop(spool, data)
        ids[message_id(data)] = "bounce"

    crashed = run(
        [
            sys.executable,
            str(HERE / "crashpoint.py"),
            point,
            str(nth),
            "--",
            "--config",
            str(crash_config),
            "run",
            "--once",
        ],
        env,
    )
    assert crashed.returncode == -9, f"the crash point was not reached:\n{crashed.stderr}"

    for _ in range(2):  # a bounce queued by the first run is sent by the same run
        restarted = run([str(MQD), "--config", str(crash_config), "run", "--once"], env)
        assert restarted.returncode == 0, restarted.stderr

    received = list(smtp_server.messages)
    dsns = [m for m in received if m.mail_from in ("", "<>")]
    delivered = [message_id(m.data) for m in received if m not in dsns]
    for mid, kind in ids.items():
        if kind == "normal":
            assert mid in delivered, f"{mid} lost after a crash at {point}"
        else:
            about = [d for d in dsns if mid.encode() in d.data]
            assert len(about) == 1, f"{len(about)} DSNs for {mid} after a crash at {point}"
    assert not list((queue_dir / "state").iterdir()), "messages stuck in the queue"
    assert not [p for p in spool.iterdir() if p.suffix == ".eml"], "files left in the spool"
    assert len(list((queue_dir / "failed").glob("*.json"))) == BOUNCING
