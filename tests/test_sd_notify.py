"""sd_notify over a real datagram socket, as systemd's ``Type=notify`` sees it.

A socket bound in the test stands in for ``$NOTIFY_SOCKET``; a real ``mqd run`` process talks to
it. READY=1 must come only once the queue is recovered (its STATUS counts the entry recovered
from disk), WATCHDOG=1 must keep coming while the loop lives, and SIGTERM must produce
STOPPING=1 and exit code 0. Both address forms systemd uses are covered: a path, and a name in
the abstract namespace ("@name").
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import mqd.daemon.systemd as systemd
from mqd.daemon.root import Daemon
from mqd.message.reply import Reply
from mqd.relays.memory import MemoryRelay
from mqd.testing import Harness, make_message

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX sockets")

#: What systemd would set for WatchdogSec=0.4s: mqd pings every 0.2 s.
WATCHDOG_USEC = "400000"


class NotifySocket:
    """A datagram socket standing in for systemd's: ``address`` is what ``$NOTIFY_SOCKET`` holds."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.received: list[dict[str, str]] = []

    def receive(self, timeout: float = 30.0) -> dict[str, str]:
        """The next datagram as {"READY": "1", "STATUS": ...}; fails after ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            raise AssertionError(
                f"no notification within {timeout}s; received so far: {self.received}"
            ) from None
        message = dict(line.split("=", 1) for line in data.decode("utf-8").splitlines())
        self.received.append(message)
        return message

    def wait_for(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        while True:
            message = self.receive(timeout)
            if message.get(key) == "1":
                return message

    def close(self) -> None:
        self.sock.close()


def short_socket_path(tmp_path: Path) -> str:
    """A socket path under tmp_path, or in a short temp dir when tmp_path is too long for one."""
    path = tmp_path / "notify.sock"
    if len(os.fsencode(str(path))) < 100:
        return str(path)
    return str(Path(tempfile.mkdtemp(prefix="mqd-")) / "notify.sock")  # pragma: no cover


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    if request.param == "path":
        address = short_socket_path(tmp_path)
    else:
        if not sys.platform.startswith("linux"):
            pytest.skip("the abstract socket namespace is Linux-only")
        address = f"@mqd-test-{uuid.uuid4().hex}"
    sock = NotifySocket(address)
    yield sock
    sock.close()


def queue_one_deferred(harness: Harness) -> None:
    """Leave one message in the queue, deferred for an hour (a 451 from the memory relay)."""
    harness.configure(
        {"mem": {"plugin": "memory"}}, queue={"retry": {"initial": "1h", "max": "1h"}}
    )
    harness.drop(make_message())

    async def run() -> None:
        daemon: Daemon = harness.make_daemon()
        relay = daemon.relays["mem"]
        assert isinstance(relay, MemoryRelay)
        relay.replies["rcpt@example.net"] = Reply(451, "try again later", "4.3.0")
        await daemon.run()

    asyncio.run(run())
    assert len(harness.queued()) == 1


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# -- a real `mqd run` process -------------------------------------------------------------------


@pytest.mark.slow
def test_ready_after_recovery_then_watchdog_then_stopping(
    mqd_harness: Harness,
    notify_socket: NotifySocket,
    env: dict[str, str],
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    queue_one_deferred(mqd_harness)
    # Dropped before the start: claimed only after READY=1, so not in READY's count.
    mqd_harness.drop(make_message(subject="after ready"))
    env = {k: v for k, v in env.items() if k != "WATCHDOG_PID"}
    env.update(NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC=WATCHDOG_USEC)
    log = tmp_path / "mqd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mqd", "--config", str(mqd_harness.config_path), "run"],
            env=env,
            stdout=out,
            stderr=out,
        )
    processes.append(proc)

    first = notify_socket.receive()
    assert first.get("READY") == "1", f"the first notification must be READY=1: {first}"
    assert first["STATUS"] == "delivering; 1 queued"  # the recovered entry was loaded first
    for _ in range(3):
        ping = notify_socket.wait_for("WATCHDOG")
        assert ping["STATUS"].startswith("delivering; ")
    assert proc.poll() is None

    proc.send_signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING")
    assert proc.wait(30) == 0
    assert "recovered 1 queued message(s)" in log.read_text()


@pytest.mark.slow
def test_no_watchdog_pings_for_another_pid(
    mqd_harness: Harness,
    notify_socket: NotifySocket,
    env: dict[str, str],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """WATCHDOG_PID names the process systemd watches; a child of it must not ping."""
    mqd_harness.configure({"mem": {"plugin": "memory"}})
    env = dict(env, NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC=WATCHDOG_USEC)
    env["WATCHDOG_PID"] = str(os.getpid())  # this test process, not mqd
    proc = subprocess.Popen(
        [sys.executable, "-m", "mqd", "--config", str(mqd_harness.config_path), "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(proc)
    assert notify_socket.receive().get("READY") == "1"
    proc.send_signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING")
    assert proc.wait(30) == 0
    assert not [m for m in notify_socket.received if "WATCHDOG" in m]


# -- mqd.daemon.systemd in this process
# ----------------------------------------------------------------


def test_notify_sends_each_state_on_its_own_line(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    assert systemd.notify("READY=1", "STATUS=delivering; 0 queued") is True
    assert notify_socket.receive(5) == {"READY": "1", "STATUS": "delivering; 0 queued"}


def test_notify_outside_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert systemd.notify("READY=1") is False


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("400000", None, 0.2),
        ("400000", "self", 0.2),
        ("400000", "other", None),
        (None, None, None),
        ("", None, None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, interval: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            own = str(os.getpid())
            value = {"self": own, "other": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(name, value)
    assert systemd.watchdog_interval() == interval
