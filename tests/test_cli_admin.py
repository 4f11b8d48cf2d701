"""``mqd queue``, ``mqd status``, ``mqd reload`` and ``mqd failed`` as real commands, against a
real daemon process (through its control socket) and against the files of a stopped one.

The relay is the test's SMTP server: ``temp-`` recipients get 451 while
``smtp_server.temp_failures`` is True, so a message stays deferred; retries are an hour away, so
nothing is retried unless a test asks for it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from corehelpers import drop
from smtpserver import SMTPPeer

import mqd.cli.shared
from mqd.admin.render import human_age, human_size, summary
from mqd.cli.main import cli
from mqd.testing import wait_until_sync

pytestmark = pytest.mark.slow

MQD = Path(sys.executable).with_name("mqd")
TEMP_REPLY = "451 4.2.0 mailbox temporarily unavailable"

CONFIG = """
[queue]
dir = "{queue}"
bounce_sender = "mailer-daemon@mqd.test"
scan_interval = "1s"
retry = {{ initial = "1h", max = "2h" }}

[[spool]]
path = "{spool}"
relay = "sink"
allowed_senders = ["app@example.com"]

[relays.sink]
plugin = "{plugin}"
host = "127.0.0.1"
port = {port}
security = "none"
command_timeout = "{command_timeout}"
"""


class Admin:
    """Runs ``mqd --config <file> ...`` commands and starts daemons on that config."""

    def __init__(
        self, config: Path, queue_dir: Path, env: dict[str, str], server: SMTPPeer
    ) -> None:
        self.config = config
        self.queue_dir = queue_dir
        self.env = env
        self.server = server
        self.log = config.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, plugin: str = "smtp", command_timeout: str = "10s") -> None:
        self.config.write_text(
            CONFIG.format(
                queue=self.queue_dir,
                spool=self.config.parent / "spool",
                plugin=plugin,
                port=self.server.port,
                command_timeout=command_timeout,
            ),
            encoding="utf-8",
        )
        self.config.chmod(0o600)

    def __call__(self, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(MQD), "--config", str(self.config), *argv],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=False,
        )

    def ok(self, *argv: str) -> str:
        proc = self(*argv)
        assert proc.returncode == 0, f"mqd {' '.join(argv)}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def rows(self, *filters: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.ok("queue", "list", "--json", *filters))
        return rows

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mqd", "--config", str(self.config), "run"],
                stdout=log,
                stderr=log,
                env=self.env,
            )
        # Not by polling 'mqd status': while no daemon holds the queue, that takes the lock itself.
        wait_until_sync(
            lambda: any((self.queue_dir / n).exists() for n in ("control.sock", "control.json")),
            "the control socket",
        )
        status = json.loads(self.ok("status", "--json"))
        assert status["running"] is True and status["pid"] == self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def deferred(self, count: int = 1, attempts: int = 1) -> list[dict[str, Any]]:
        """Wait until ``count`` messages are deferred after at least ``attempts`` attempts."""

        def check() -> list[dict[str, Any]] | None:
            rows = [
                r for r in self.rows() if r["state"] == "deferred" and r["attempts"] >= attempts
            ]
            return rows if len(rows) == count else None

        result: list[dict[str, Any]] = wait_until_sync(check, f"{count} deferred message(s)")
        return result


@pytest.fixture
def admin(
    tmp_path: Path, queue_dir: Path, spool: Path, env: dict[str, str], smtp_server: SMTPPeer
) -> Iterator[Admin]:
    admin = Admin(tmp_path / "mqd.toml", queue_dir, env, smtp_server)
    admin.write()
    yield admin
    admin.stop()


@pytest.fixture
def daemon(admin: Admin) -> Admin:
    admin.start()
    return admin


# -- with a running daemon ------------------------------------------------------------------------


def test_list_show_hold_release_and_retry(
    daemon: Admin, spool: Path, smtp_server: SMTPPeer
) -> None:
    drop(spool, to=("temp-a@example.net",), subject="admin me")
    [row] = daemon.deferred()
    entry_id = row["id"]
    assert row["recipients"] == [
        {"address": "temp-a@example.net", "status": "pending", "reply": TEMP_REPLY}
    ]
    assert row["last_reply"] == TEMP_REPLY

    listing = daemon.ok("queue", "list")
    assert entry_id in listing
    assert f"<temp-a@example.net> pending: {TEMP_REPLY}" in listing
    assert "<app@example.com>" in listing
    assert re.search(r"deferred +1 +in (59m|1h0\dm) ", listing)  # 1h + jitter, in human terms
    assert listing.rstrip().splitlines()[-1].startswith("1 message, 1 deferred")

    shown = daemon.ok("queue", "show", entry_id[:14])  # a unique prefix is enough
    assert f"id            {entry_id}" in shown
    assert "Subject: admin me" in shown
    assert "history" in shown and "transient" in shown
    assert json.loads(daemon.ok("queue", "show", entry_id, "--json"))["entry"]["attempts"] == 1

    assert daemon.ok("queue", "hold", entry_id) == f"held {entry_id}\n"
    assert [r["id"] for r in daemon.rows("--state", "held")] == [entry_id]
    assert "no message in the queue with state deferred" in daemon.ok(
        "queue", "list", "--state", "deferred"
    )

    assert daemon.ok("queue", "release", entry_id) == f"released {entry_id}\n"
    daemon.deferred(attempts=2)  # released means due now: tried again, deferred again

    # In bulk one line gives the total; -v lists each.
    assert daemon.ok("queue", "retry", "--all") == "retrying 1 message (-v lists them)\n"
    daemon.deferred(attempts=3)
    assert daemon.ok("queue", "retry", "--all", "-v") == f"retrying {entry_id}\n"
    daemon.deferred(attempts=4)

    smtp_server.temp_failures = False
    assert daemon.ok("queue", "retry", entry_id) == f"retrying {entry_id}\n"
    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == ["temp-a@example.net"]
    wait_until_sync(lambda: daemon.rows() == [], "an empty queue")
    assert daemon.ok("queue", "list") == "mail queue is empty\n"


def test_an_unknown_id_is_one_line_and_exit_1(daemon: Admin) -> None:
    proc = daemon("queue", "hold", "ffffffffff")
    assert proc.returncode == 1
    assert proc.stderr.startswith("mqd: error: no message 'ffffffffff' in the queue")
    assert proc.stderr.count("\n") == 1


def test_retry_needs_an_id_or_all(daemon: Admin) -> None:
    proc = daemon("queue", "retry")
    assert proc.returncode == 64
    assert "--all" in proc.stderr


def test_delete_asks_for_yes_off_a_terminal_and_sends_no_bounce(
    daemon: Admin, spool: Path, smtp_server: SMTPPeer
) -> None:
    drop(spool, to=("temp-a@example.net",))
    [row] = daemon.deferred()

    refused = daemon("queue", "delete", row["id"])  # stdin is a pipe, not a terminal
    assert refused.returncode == 64
    assert "--yes" in refused.stderr
    assert [r["id"] for r in daemon.rows()] == [row["id"]]

    assert daemon.ok("queue", "delete", "--yes", row["id"]) == f"deleted {row['id']}\n"
    assert daemon.rows() == []
    assert daemon.ok("failed", "list") == "no failed messages\n"
    # A later message goes through alone: no bounce was queued for the deleted one.
    drop(spool, to=("carol@example.net",))
    smtp_server.wait_for(1)
    wait_until_sync(lambda: daemon.rows() == [], "an empty queue")
    assert [m.mail_from for m in smtp_server.messages] == ["app@example.com"]


def test_bounce_then_failed_retry_sends_to_the_failed_recipient_only(
    daemon: Admin, spool: Path, smtp_server: SMTPPeer
) -> None:
    drop(spool, to=("alice@example.net", "temp-bob@example.net"), subject="half way")
    [row] = daemon.deferred()
    assert [m.rcpt_tos for m in smtp_server.wait_for(1)] == [["alice@example.net"]]

    assert daemon.ok("queue", "bounce", "--yes", row["id"]) == f"bounced {row['id']}\n"
    dsn = smtp_server.wait_for(2)[1]
    assert dsn.mail_from == "<>"
    assert dsn.rcpt_tos == ["app@example.com"]
    assert b"temp-bob@example.net" in dsn.data

    listing = daemon.ok("failed", "list")
    assert row["id"] in listing
    assert "<temp-bob@example.net> failed: 554 5.7.0" in listing
    assert "delivered (not sent again): alice@example.net" in listing
    [record] = json.loads(daemon.ok("failed", "list", "--json"))
    assert record["id"] == row["id"] and record["stage"] == "delivery"

    smtp_server.temp_failures = False
    retried = daemon.ok("failed", "retry", row["id"])
    assert retried.startswith(f"retried {row['id']} to <temp-bob@example.net>: {spool}")
    again = smtp_server.wait_for(3)[2]
    assert again.mail_from == "app@example.com"
    assert again.rcpt_tos == ["temp-bob@example.net"]  # alice is never sent to twice
    assert b"Subject: half way" in again.data
    assert b"X-Receiver" not in again.data
    assert daemon.ok("failed", "list") == "no failed messages\n"
    wait_until_sync(lambda: daemon.rows() == [], "an empty queue")


def test_status_json_counts_and_health(daemon: Admin, spool: Path) -> None:
    drop(spool, to=("temp-a@example.net",))
    drop(spool, to=("temp-b@example.net",))
    rows = daemon.deferred(count=2)
    daemon.ok("queue", "hold", rows[0]["id"])

    status = json.loads(daemon.ok("status", "--json"))
    assert status["running"] is True
    assert status["pid"] == daemon.proc.pid  # type: ignore[union-attr]
    assert status["messages"] == 2
    assert status["by_state"] == {
        "active": 0,
        "waiting": 0,
        "scheduled": 0,
        "deferred": 1,
        "held": 1,
    }
    assert status["oldest_age"] >= 0
    assert status["failed"] == 0
    # Its circuit is closed (the server answered), but it delivered nothing: failing.
    sink = status["relays"]["sink"]
    assert sink["health"] == "failing" and sink["circuit"] == "closed"
    assert sink["recent_attempts"] == 2 and sink["recent_failures"] == 2
    assert sink["last_error"].startswith("4") and sink["last_success_at"] is None
    assert sink["queued"] == 2

    text = daemon.ok("status")
    assert f"running, pid {daemon.proc.pid}" in text  # type: ignore[union-attr]
    assert "2 (" in text and "1 deferred, 1 held" in text
    assert "sink (smtp): FAILING (2 of 2 attempt(s) in the last hour delivered nothing)" in text

    checked = daemon("status", "--check")
    assert checked.returncode == 1 and "relay sink: FAILING" in checked.stderr
    warned = daemon("status", "--warn-age", "0s")
    assert warned.returncode == 1
    assert "mqd: warning: the oldest message has waited" in warned.stderr

    # A dead daemon is what a monitor must hear first: CRITICAL, not a green "0".
    daemon.stop()
    dead = daemon("status", "--check")
    assert dead.returncode == 2, dead.stdout + dead.stderr
    assert "mqd: critical: no mqd daemon is running" in dead.stderr
    assert "not running (read from the queue files)" in dead.stdout


def test_reload_applies_a_good_config_and_refuses_a_bad_one(
    daemon: Admin, spool: Path, smtp_server: SMTPPeer
) -> None:
    daemon.write(command_timeout="7s")
    reloaded = daemon.ok("reload")
    assert reloaded.startswith(f"reloaded {daemon.config}: 1 spool(s), relays sink")

    # Refused by the daemon: the file loads, but its relay cannot be built.
    daemon.write(plugin="no-such-plugin")
    refused = daemon("reload")
    assert refused.returncode == 78, refused.stdout + refused.stderr
    assert "reload refused, the daemon keeps its config" in refused.stderr
    assert "no-such-plugin" in refused.stderr

    # Not TOML at all: refused before the daemon is asked.
    daemon.config.write_text("[queue\ndir = ", encoding="utf-8")
    broken = daemon("reload")
    assert broken.returncode == 78
    assert str(daemon.config) in broken.stderr

    assert daemon.running()
    drop(spool, to=("dave@example.net",))
    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == ["dave@example.net"]


def test_flush_retries_deferred_messages(daemon: Admin, spool: Path, smtp_server: SMTPPeer) -> None:
    drop(spool, to=("temp-a@example.net",))
    daemon.deferred()
    smtp_server.temp_failures = False
    assert daemon.ok("queue", "flush") == "flushed: 1 message due now\n"
    assert smtp_server.wait_for(1)[0].rcpt_tos == ["temp-a@example.net"]
    wait_until_sync(lambda: daemon.rows() == [], "an empty queue")


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGUSR1 on Windows")
def test_sigusr1_retries_deferred_messages(
    daemon: Admin, spool: Path, smtp_server: SMTPPeer
) -> None:
    drop(spool, to=("temp-b@example.net",))
    daemon.deferred()
    smtp_server.temp_failures = False
    os.kill(daemon.proc.pid, signal.SIGUSR1)  # type: ignore[union-attr]
    assert smtp_server.wait_for(1)[0].rcpt_tos == ["temp-b@example.net"]
    wait_until_sync(lambda: daemon.rows() == [], "an empty queue")
    assert daemon.running()


# -- with no daemon running -----------------------------------------------------------------------


def test_offline_list_hold_status_and_delete(admin: Admin, spool: Path) -> None:
    drop(spool, to=("temp-a@example.net",))
    ran = admin("run", "--once")
    assert ran.returncode == 0, ran.stderr
    assert "delivering" not in ran.stderr  # no progress bar when stderr is not a terminal
    [row] = admin.rows()
    assert row["state"] == "deferred"
    assert TEMP_REPLY in admin.ok("queue", "list")

    assert admin.ok("queue", "hold", row["id"]) == f"held {row['id']}\n"
    assert [r["id"] for r in admin.rows("--state", "held")] == [row["id"]]
    status = json.loads(admin.ok("status", "--json"))
    assert status["running"] is False and status["pid"] is None
    assert status["by_state"]["held"] == 1
    text = admin.ok("status")
    assert "not running" in text
    assert "sink (smtp): health unknown" in text  # only a running daemon knows it

    assert admin.ok("queue", "delete", "--yes", row["id"]) == f"deleted {row['id']}\n"
    assert admin.ok("queue", "list") == "mail queue is empty\n"

    reload = admin("reload")
    assert reload.returncode == 1
    assert "no mqd daemon is running" in reload.stderr


def test_delete_asks_on_a_terminal(
    admin: Admin, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop(spool, to=("temp-a@example.net",))
    assert admin("run", "--once").returncode == 0
    [row] = admin.rows()
    monkeypatch.setattr(mqd.cli.shared, "stdin_is_terminal", lambda: True)
    runner = CliRunner()
    argv = ["--config", str(admin.config), "queue", "delete", row["id"]]

    declined = runner.invoke(cli, argv, input="n\n")
    assert declined.exit_code == 1
    assert "nothing done" in declined.output
    assert [r["id"] for r in admin.rows()] == [row["id"]]

    accepted = runner.invoke(cli, argv, input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert f"deleted {row['id']}" in accepted.output
    assert admin.rows() == []


# -- rendering ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (3600, "1h00m"),
        (3 * 3600 + 300, "3h05m"),
        (86400 * 2 + 3600 * 3, "2d03h"),
        (-5, "0s"),
    ],
)
def test_human_age(seconds: float, text: str) -> None:
    assert human_age(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1_250_000, "1.2 MB"),
        (5 * 10**12, "5000.0 GB"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


def test_the_summary_counts_each_state_in_order() -> None:
    rows = [{"state": s, "size": 500} for s in ("held", "deferred", "active", "deferred")]
    assert summary(rows) == "4 messages, 1 active, 2 deferred, 1 held (2.0 kB)"
    assert summary(rows[:1]) == "1 message, 1 held (500 B)"
