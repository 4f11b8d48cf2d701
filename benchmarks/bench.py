#!/usr/bin/env python3
"""mqd's speed on this machine: backlog drain, end to end through the spool, latency, the cost
of ``mqd sendmail``. fsync stays on (mqd's default): durability is never traded for a figure.

    .venv/bin/python benchmarks/bench.py                 # all, N=5000
    .venv/bin/python benchmarks/bench.py --only drain --messages 10000

The sink is an aiosmtpd server in this process, offering PIPELINING as smtp-sink does (it records
each message's arrival time and its ``X-Bench-Sent`` header); mqd runs as a real ``mqd run``
subprocess whose CPU time and peak memory (RSS, and PSS where /proc has it) are read from /proc.
Compare with Postfix on the same machine with ../shared/bench/side-by-side.sh, in the same
session, and quote ratios: absolute figures drift between runs on shared machines.
docs/performance.md has the method and the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

SENT = re.compile(rb"^X-Bench-Sent: ([0-9.]+)", re.MULTILINE)
MQD = str(Path(sys.executable).with_name("mqd"))
CLK = os.sysconf("SC_CLK_TCK")
# mqd and the baselines run with their bytecode cached, as after a real install (pip compiles
# it): a development shell often sets PYTHONDONTWRITEBYTECODE, and an editable install would then
# compile every module at each start (a second or more of CPU in a drain). The cache goes to a
# directory of its own, kept between runs; main() warms it up before measuring.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "mqd-bench-pycache")


class Sink:
    def __init__(self) -> None:
        self.arrivals: list[tuple[float, float | None]] = []
        self.lock = threading.Lock()
        self.done = threading.Condition(self.lock)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        # As smtp-sink and nearly every real server: aiosmtpd reads commands in turn, so it
        # takes pipelined ones, but does not say so itself.
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        match = SENT.search(envelope.original_content or envelope.content)
        with self.lock:
            self.arrivals.append((now, float(match.group(1)) if match else None))
            self.done.notify_all()
        return "250 2.0.0 OK"

    def wait_for(self, count: int, timeout: float) -> bool:
        with self.lock:
            return self.done.wait_for(lambda: len(self.arrivals) >= count, timeout)

    def reset(self) -> None:
        with self.lock:
            self.arrivals.clear()


class Daemon:
    """``mqd run`` with CPU and memory sampled from /proc."""

    def __init__(self, config: Path, log: Path, profile: Path | None = None) -> None:
        self.process = subprocess.Popen(
            [MQD, "--config", str(config), "--log-level", "warning", "run"],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env=ENV,
        )
        self.profiler: subprocess.Popen[bytes] | None = None
        if profile is not None:  # py-spy attached to the daemon: collapsed stacks, idle excluded
            self.profiler = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                 str(self.process.pid), "--rate", "250", "--gil", "--format", "raw", "--output",
                 str(profile)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        self.peak_rss = self.peak_pss = 0.0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def tree(self) -> list[int]:
        """The daemon's pid and its workers' (``--workers``), as mqbench.py counts a tree."""
        pids, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo += [int(child) for child in children.read_text().split()]
                except OSError:
                    continue
        return pids

    def cpu(self) -> float:
        total = 0
        for pid in self.tree():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / CLK

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            sizes = {"Rss:": 0.0, "Pss:": 0.0}
            for pid in self.tree():
                try:
                    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
                except OSError:
                    continue
                for key in sizes:
                    match = re.search(rf"^{key}\s+(\d+) kB", rollup, re.MULTILINE)
                    if match:
                        sizes[key] += int(match.group(1)) / 1024
            self.peak_rss = max(self.peak_rss, sizes["Rss:"])
            self.peak_pss = max(self.peak_pss, sizes["Pss:"])

    def stop(self) -> None:
        self._stop.set()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        if self.profiler is not None:
            self.profiler.wait(60)  # py-spy writes its file when the daemon exits


def message(number: int, size: int) -> bytes:
    head = (
        f"From: bench@bench.test\r\nTo: rcpt{number % 20}@example.test\r\n"
        f"Subject: bench {number}\r\nMessage-ID: <{number}.{time.time_ns()}@bench.test>\r\n"
        f"X-Bench-Sent: {time.time():.6f}\r\n\r\n"
    )
    line = "x" * 74 + "\r\n"
    return (head + line * max(1, (size - len(head)) // len(line))).encode()


def drop(spool: Path, number: int, size: int) -> None:
    """The producer contract: a temporary name, then a rename to *.eml."""
    tmp = spool / f".{number}.tmp"
    tmp.write_bytes(message(number, size))
    os.rename(tmp, spool / f"{number}.eml")


#: Appended to every mqd config (--extra-config), e.g. '[tracking]\nenabled = false'.
EXTRA_CONFIG = ""
#: queue.workers of every mqd config (--workers).
WORKERS = 1


def setup(work: Path, port: int) -> tuple[Path, Path]:
    spool = work / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    config = work / "mqd.toml"
    config.write_text(
        f'[queue]\ndir = "{work / "queue"}"\nworkers = {WORKERS}\n[[spool]]\npath = "{spool}"\n'
        'allowed_senders = ["bench@bench.test"]\n'
        f'[relays.sink]\nplugin = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        + EXTRA_CONFIG
    )
    return spool, config


def drain(work: Path, sink: Sink, n: int, size: int, profile: Path | None = None) -> dict[str, Any]:
    """N messages already in the spool; start mqd; time until the sink has them all."""
    spool, config = setup(work / "drain", sink.port)
    for number in range(n):
        drop(spool, number, size)
    sink.reset()
    started = time.monotonic()
    daemon = Daemon(config, work / "drain.log", profile)
    ok = sink.wait_for(n, 600)
    elapsed = time.monotonic() - started
    cpu = daemon.cpu()
    daemon.stop()
    return {
        "test": "drain", "n": n, "ok": ok, "msgs_per_s": round(n / elapsed, 1),
        "cpu_ms_per_msg": round(cpu * 1000 / n, 3), "peak_rss_mb": round(daemon.peak_rss, 1),
        "peak_pss_mb": round(daemon.peak_pss, 1),
    }  # fmt: skip


def end_to_end(work: Path, sink: Sink, n: int, size: int, writers: int) -> dict[str, Any]:
    """mqd running; ``writers`` threads drop N messages as fast as they can."""
    spool, config = setup(work / "e2e", sink.port)
    daemon = Daemon(config, work / "e2e.log")
    time.sleep(1.5)  # started and watching
    sink.reset()
    started = time.monotonic()
    cpu0 = daemon.cpu()
    threads = [
        threading.Thread(target=lambda w=w: [drop(spool, i, size) for i in range(w, n, writers)])
        for w in range(writers)
    ]
    for thread in threads:
        thread.start()
    ok = sink.wait_for(n, 600)
    elapsed = time.monotonic() - started
    cpu = daemon.cpu() - cpu0
    daemon.stop()
    return {
        "test": "end-to-end", "n": n, "writers": writers, "ok": ok,
        "msgs_per_s": round(n / elapsed, 1), "cpu_ms_per_msg": round(cpu * 1000 / n, 3),
    }  # fmt: skip


def latency(work: Path, sink: Sink, n: int, rate: float) -> dict[str, Any]:
    """One message every 1/rate s; latency = arrival at the sink - the time just before the drop."""
    spool, config = setup(work / "latency", sink.port)
    daemon = Daemon(config, work / "latency.log")
    time.sleep(1.5)
    sink.reset()
    for number in range(n):
        drop(spool, number, 2048)
        time.sleep(1 / rate)
    ok = sink.wait_for(n, 60)
    daemon.stop()
    with sink.lock:
        samples = sorted((t - s) * 1000 for t, s in sink.arrivals if s is not None)
    q = statistics.quantiles(samples, n=100)
    return {
        "test": "latency", "n": n, "rate": rate, "ok": ok, "p50_ms": round(q[49], 1),
        "p90_ms": round(q[89], 1), "p99_ms": round(q[98], 1), "max_ms": round(samples[-1], 1),
    }  # fmt: skip


def big_queue(work: Path, sink: Sink, n: int, size: int) -> dict[str, Any]:
    """N messages queued, their relay refusing connections (the first ones tried and deferred, the
    rest waiting while its circuit is open), the daemon restarted:
    how long until it answers on its control socket, its memory then, and the drain of all N
    once they are due (``mqd queue flush``), against the same daemon's drain of a small queue."""
    with socket.socket() as probe:  # a port nothing listens on: every attempt is refused
        probe.bind(("127.0.0.1", 0))
        refused = int(probe.getsockname()[1])
    spool, config = setup(work / "big", refused)
    config.write_text(config.read_text() + '[queue.retry]\ninitial = "1h"\nmax = "2h"\n')
    for number in range(n):
        drop(spool, number, size)
    queue = work / "big" / "queue"
    started = time.monotonic()
    daemon = Daemon(config, work / "big.log")
    # Queued: out of the spool and into the queue (tried once and deferred, or waiting while
    # the relay's circuit is open after its failures: then with no state file yet).
    while any(spool.iterdir()) or len(list(queue.glob("messages/*/*.eml"))) < n:
        if time.monotonic() - started > 1800 or daemon.process.poll() is not None:
            break
        time.sleep(0.5)
    queued_s = time.monotonic() - started
    time.sleep(2.0)
    daemon.stop()
    queueing_rss = daemon.peak_rss
    config.write_text(config.read_text().replace(f"port = {refused}", f"port = {sink.port}"))
    sink.reset()
    started = time.monotonic()
    daemon = Daemon(config, work / "big.log")
    while not (queue / "control.sock").exists() and time.monotonic() - started < 600:
        time.sleep(0.01)
    ready_s = time.monotonic() - started
    time.sleep(1.0)  # a few memory samples of the idle, full queue
    ready_rss = daemon.peak_rss
    flushed = time.time()
    subprocess.run([MQD, "--config", str(config), "queue", "flush"], check=True, env=ENV,
                   capture_output=True)  # fmt: skip
    ok = sink.wait_for(n, 1800)
    daemon.stop()
    # From the first arrival to the last: those never attempted (held while the circuit was
    # open, with no state file) are due again as soon as the daemon is back, before the flush,
    # so timing from the flush would leave out the first second or so of the drain (~10% of
    # 20,000, ~2% of 100,000) and flatter the smaller queue.
    with sink.lock:
        times = sorted(t for t, _ in sink.arrivals[:n])
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    tenth = max(1, len(times) // 10)
    return {
        "test": "big-queue", "n": n, "ok": ok, "queueing_s": round(queued_s, 1),
        "queueing_peak_rss_mb": round(queueing_rss, 1), "restart_to_ready_s": round(ready_s, 2),
        "ready_rss_mb": round(ready_rss, 1), "drain_msgs_per_s": round(len(times) / span, 1),
        "arrived_before_flush": sum(t < flushed for t in times),
        # The drain's rate in each tenth of it: flat if it does not slow as the queue empties.
        "drain_tenths_msgs_per_s": [
            round(tenth / (times[at + tenth - 1] - times[at]))
            for at in range(0, len(times) - tenth + 1, tenth)
        ] if len(times) >= 20 else [],
        "drain_peak_rss_mb": round(daemon.peak_rss, 1),
    }  # fmt: skip


def sendmail_cost(work: Path, rounds: int) -> dict[str, Any]:
    """Wall and CPU time of ``mqd sendmail -t -i`` against a bare ``python3 -c pass``: through
    pip's wrapper (``mqd sendmail``), as ``mqd-sendmail`` (no wrapper) and through the launcher
    ``mqd install-sendmail`` writes (no site.py); and the floor for any Python sendmail that pip's
    wrapper starts and that reads a TOML config: ``python3 -c "import re, tomllib"``.

    The commands take turns, one run each per round in a rotating order, so that a shared
    machine's drift between rounds (a bare start here moves by half between minutes) falls on all
    of them alike; medians of ``rounds`` rounds after two of warm-up (bytecode caches written)."""
    spool, config = setup(work / "sendmail", 9)
    launcher = work / "sendmail" / "sendmail"
    launcher.unlink(missing_ok=True)
    # The launcher holds what it needs from this config (written in by install-sendmail).
    subprocess.run(
        [MQD, "--config", str(config), "install-sendmail", str(launcher)],
        check=True, capture_output=True,
    )  # fmt: skip
    # Every command gets the message on stdin from a file (a bare start ignores it) and its
    # output to /dev/null: a pipe fed by this process would be timed with it, and only for some.
    message_file = work / "sendmail" / "message.eml"
    message_file.write_bytes(message(0, 2048))
    commands = {
        "python_pass": [sys.executable, "-c", "pass"],
        "re_tomllib_floor": [sys.executable, "-c", "import re, tomllib"],
        "mqd_sendmail": [MQD, "--config", str(config), "sendmail", "-t", "-i"],
        # without pip's wrapper, which imports re
        "script": [str(Path(MQD).with_name("mqd-sendmail")), "-C", str(config), "-t", "-i"],
        "launcher": [str(launcher), "-t", "-i"],
    }
    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for round_ in range(rounds + 2):
        turn = round_ % len(names)
        for name in names[turn:] + names[:turn]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            with message_file.open("rb") as stdin:
                started = time.perf_counter()
                subprocess.run(
                    commands[name], stdin=stdin, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, check=True, env=ENV,
                )  # fmt: skip
                wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if round_ >= 2:
                walls[name].append(wall * 1000)
                cpus[name].append(
                    (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
                )
    wall = {name: statistics.median(values) for name, values in walls.items()}
    cpu = {name: statistics.median(values) for name, values in cpus.items()}
    result: dict[str, Any] = {
        "test": "sendmail", "rounds": rounds,
        "ok": len(list(spool.glob("*.eml"))) == 3 * (rounds + 2),
        "python_pass_ms": round(wall["python_pass"], 1),
        "python_pass_cpu_ms": round(cpu["python_pass"], 1),
    }  # fmt: skip
    for name in names[1:]:
        result[f"{name}_ms"] = round(wall[name], 1)
        result[f"{name}_ratio"] = round(wall[name] / wall["python_pass"], 2)
        result[f"{name}_cpu_ratio"] = round(cpu[name] / cpu["python_pass"], 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument(
        "--only", choices=("drain", "e2e", "latency", "sendmail", "big-queue"),
        help="one measurement; big-queue (100,000 queued and restarted, several minutes) runs "
        "only when asked for",
    )  # fmt: skip
    parser.add_argument("--big", type=int, default=100_000, help="messages for big-queue")
    parser.add_argument(
        "--sendmail-rounds", type=int, default=100, metavar="N",
        help="rounds of the sendmail measurement (each runs every command once)",
    )  # fmt: skip
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="record the drain with py-spy (pip install py-spy) into FILE (collapsed stacks; "
        "summarise with benchmarks/stacks.py FILE); its overhead lowers the drain figure",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="queue.workers: N daemon processes sharing the spool (CPU and memory are the sum "
        "over all of them)",
    )
    parser.add_argument(
        "--extra-config",
        default="",
        metavar="TOML",
        help="appended to mqd's config, e.g. $'[tracking]\\nenabled = false' (say so with the "
        "figures)",
    )
    args = parser.parse_args()
    global EXTRA_CONFIG, WORKERS
    EXTRA_CONFIG = args.extra_config.replace("\\n", "\n") + "\n"
    WORKERS = args.workers
    work = Path(tempfile.mkdtemp(prefix="mqd-bench-"))
    sink = Sink()
    sink.controller.start()
    results = []
    try:
        drain(work / "warm-up", sink, 50, args.size)  # fills the bytecode cache; not reported
        if args.only in (None, "drain"):
            results.append(drain(work, sink, args.messages, args.size, args.profile))
        if args.only in (None, "e2e"):
            results.append(end_to_end(work, sink, args.messages, args.size, args.writers))
        if args.only in (None, "latency"):
            results.append(latency(work, sink, 200, 10.0))
        if args.only in (None, "sendmail"):
            results.append(sendmail_cost(work, args.sendmail_rounds))
        if args.only == "big-queue":
            results.append(big_queue(work, sink, args.big, args.size))
    finally:
        sink.controller.stop()
    for result in results:
        print(json.dumps(result))
    return 0 if all(r.get("ok", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
