"""What the intake benchmarks (smtpd.py, submit.py, mailbox.py) share: a real ``mqd run`` with
its CPU read from /proc (bench.py's ``Daemon``), client processes of their own (a client in
the benchmark's process would compete with mqd for the GIL, and be measured with it), and the
steady-state figures: messages per second and mqd's CPU per message between the moments 10%
and 90% of the messages were answered, so that neither start-up nor the last stragglers count.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.sharedctypes
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from bench import ENV, Daemon

__all__ = [
    "ENV",
    "Daemon",
    "Marks",
    "Steady",
    "free_port",
    "pg_queue",
    "run_clients",
    "wait_listening",
    "workers_running",
]

#: The PostgreSQL server of ``--postgresql`` runs (the local test server by default).
PG_BASE = os.environ.get("MQD_BENCH_PG_DSN", "postgresql://root@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, daemon: Daemon, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if daemon.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mqd does not listen on {port}: see its log") from None
            time.sleep(0.05)


@dataclass
class Steady:
    messages: int
    seconds: float
    rate: float
    cpu_ms: float
    load: float

    def line(self) -> str:
        return (
            f"{self.rate:7.0f} msg/s steady, mqd {self.cpu_ms:5.2f} ms CPU/msg "
            f"({self.messages} messages; 10%-90% in {self.seconds:.2f} s; load {self.load:.1f})"
        )


class Marks:
    """The time and mqd's CPU when 10% and when 90% of ``total`` messages were answered."""

    def __init__(self, total: int, daemon: Daemon) -> None:
        self.total, self.daemon = total, daemon
        self.low, self.high = max(1, total // 10), max(2, total * 9 // 10)
        self.marks: dict[int, tuple[float, float]] = {}

    def see(self, count: int) -> bool:
        """Note that ``count`` are answered now; True once 90% are."""
        for mark in (self.low, self.high):
            if count >= mark and mark not in self.marks:
                self.marks[mark] = (time.perf_counter(), self.daemon.cpu())
        return self.high in self.marks

    def steady(self) -> Steady:
        (t0, cpu0), (t1, cpu1) = self.marks[self.low], self.marks[self.high]
        count = self.high - self.low
        cpu_ms = 1000 * (cpu1 - cpu0) / count
        return Steady(self.total, t1 - t0, count / (t1 - t0), cpu_ms, os.getloadavg()[0])


def measure(total: int, answered: Callable[[], int], daemon: Daemon, timeout: float) -> Steady:
    """Sample ``answered()`` and mqd's CPU until 90% of ``total`` are answered."""
    marks = Marks(total, daemon)
    deadline = time.monotonic() + timeout
    while not marks.see(count := answered()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {count} of {total} answered")
        time.sleep(0.01)
    return marks.steady()


def run_clients(
    client: Callable[[int, multiprocessing.sharedctypes.Synchronized[int]], None],
    clients: int,
    messages: int,
    daemon: Daemon,
    timeout: float = 600.0,
) -> Steady:
    """``clients`` processes each running ``client(share, counter)`` (adding 1 to the counter
    per message answered), measured with ``measure``."""
    counter: multiprocessing.sharedctypes.Synchronized[int] = multiprocessing.Value("q", 0)
    share = messages // clients
    processes = [
        multiprocessing.Process(target=client, args=(share, counter), daemon=True)
        for _ in range(clients)
    ]
    for process in processes:
        process.start()
    try:
        steady = measure(share * clients, lambda: counter.value, daemon, timeout)
        for process in processes:
            process.join(timeout)
            if process.exitcode != 0:
                raise SystemExit(f"a client failed (exit {process.exitcode})")
        return steady
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()


def config_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@contextmanager
def pg_queue() -> Iterator[str]:
    """A schema of its own on ``PG_BASE`` with mqd's tables, dropped afterwards: yields the
    ``[queue]`` lines that put the queue there."""
    import psycopg

    from mqd.queue.postgresql.schema import script

    schema = f"mqd_bench_{secrets.token_hex(4)}"
    sep = "&" if "?" in PG_BASE else "?"
    dsn = f"{PG_BASE}{sep}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(script().encode())
        yield f'store = "postgresql"\ndsn = "{dsn}"\nnode = "bench"\n'
    finally:
        with psycopg.connect(PG_BASE, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE'.encode())


def workers_running(config: Path, workers: int, daemon: Daemon, within: float = 60.0) -> None:
    """Until ``mqd status`` finds every worker of ``queue.workers`` running (each answers on
    its control socket, which it opens once its servers listen)."""
    deadline = time.monotonic() + within
    while True:
        out = subprocess.run(
            [sys.executable, "-m", "mqd", "--config", str(config), "status", "--json"],
            capture_output=True,
            text=True,
            check=False,
            env=ENV,
        ).stdout
        try:
            listed = json.loads(out).get("workers") or []
        except ValueError:
            listed = []
        if workers == 1 or sum(1 for w in listed if w.get("running")) == workers:
            return
        if daemon.process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"not every worker of {workers} started: see mqd's log")
        time.sleep(0.2)
