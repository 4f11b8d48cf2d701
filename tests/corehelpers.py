"""Helpers the core tests import by name (``from corehelpers import ...``): a module name of its
own, because every test directory has a ``conftest`` module and only one can be imported as
``conftest``."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import fields
from email.utils import formatdate, make_msgid
from pathlib import Path

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.events import EVENT_TYPES, Event, EventKind
from mqd.plugins.host import PluginHost
from mqd.producer.inject import inject


def imports(command: list[str], stdin: bytes, env: dict[str, str]) -> set[str]:
    """The modules ``command`` imports (from ``-X importtime``'s report)."""
    proc = subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    modules = set()
    for line in proc.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                modules.add(name)
    return modules


class FakeClock:
    """A clock that stands still until a test moves it: ``clock()``, ``clock.advance(s)``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


#: What ``make_event`` gives each field a test leaves out.
EVENT_DEFAULTS: dict[str, object] = {
    "file": "a.eml",
    "spool": "/spool",
    "stage": "intake",
    "reason": "refused",
    "sender": "app@example.com",
    "recipients": ("bob@example.net",),
    "relay": "mem",
    "route": ("mem",),
    "message_id_header": None,
    "recipient": "bob@example.net",
    "reply": "250 2.0.0 OK",
    "provider_id": None,
    "elapsed": 0.0,
    "age": 0.0,
    "next_attempt_at": 0.0,
    "status_code": None,
    "dsn_sent": False,
    "dsn_id": None,
    "accepted_at": None,
    "attempts": 0,
    "traceparent": None,
    "attempt": 1,
    "started": 0.0,
    "waiting_since": 0.0,
    "calls": (),
    "subject": None,
    "account": None,
    "source": None,
    "login": None,
    "peer": None,
}


def make_event(kind: EventKind, message_id: str, *, time: float = 0.0, **given: object) -> Event:
    """An event of ``kind`` (its class from ``EVENT_TYPES``) with the fields ``given`` and
    ``EVENT_DEFAULTS`` for the rest; a field the class does not have is a TypeError."""
    cls = EVENT_TYPES[kind]
    names = {f.name for f in fields(cls)} - {"message_id", "time"}
    values = {name: EVENT_DEFAULTS[name] for name in names} | given
    return cls(message_id=message_id, time=time, **values)  # type: ignore[arg-type]


#: The account of the STARTTLS + AUTH test server.
USERS = {"relay-user": "s3cret-pass"}


def make_message(
    sender: str = "app@example.com",
    to: tuple[str, ...] = ("alice@example.net",),
    *,
    cc: tuple[str, ...] = (),
    bcc: tuple[str, ...] = (),
    subject: str = "hello",
    body: str = "Hello there.\n",
    envelope: tuple[str, tuple[str, ...]] | None = None,
    extra_headers: tuple[str, ...] = (),
) -> bytes:
    """An RFC 5322 message; ``envelope=(sender, rcpts)`` prepends X-Sender/X-Receiver lines."""
    lines = []
    if envelope is not None:
        lines.append(f"X-Sender: {envelope[0]}")
        lines += [f"X-Receiver: {rcpt}" for rcpt in envelope[1]]
    lines += [f"From: {sender}"]
    if to:
        lines.append("To: " + ", ".join(to))
    if cc:
        lines.append("Cc: " + ", ".join(cc))
    if bcc:
        lines.append("Bcc: " + ", ".join(bcc))
    lines += [
        f"Subject: {subject}",
        f"Date: {formatdate()}",
        f"Message-ID: {make_msgid(domain='example.com')}",
        *extra_headers,
        "",
        body,
    ]
    return "\r\n".join(lines).encode("utf-8")


def drop(spool: Path, message: bytes | None = None, **kwargs: object) -> Path:
    """Drop a message into ``spool`` through the producer path."""
    return inject(spool, message if message is not None else make_message(**kwargs))  # type: ignore[arg-type]


async def run_once(config: Config, host: PluginHost, *, clock: Clock = SYSTEM_CLOCK) -> Daemon:
    """Run a daemon with ``--once`` semantics (at the time ``clock`` says: a ``ManualClock``
    set past a retry makes it due) and return it (for its state)."""
    daemon = Daemon(config, host=host, once=True, shutdown_timeout=5, clock=clock)
    await daemon.run()
    return daemon


class DaemonProcess:
    """A real ``mqd run`` in a child process, its output appended to ``log`` (the ``daemons``
    fixture kills those a test left running)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mqd", "--config", str(self.config), "run"],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
