#!/usr/bin/env python3
"""Soak: N messages through a real mqd daemon that is SIGKILLed every few seconds.

A writer drops N messages (about 2 KB, each with a unique Message-ID) into a spool while
``mqd run`` delivers them to a local SMTP sink; the daemon is killed with SIGKILL at random
intervals after it said it is ready (sd_notify's READY=1 on a socket of the soak's own, so that
on a loaded machine a kill lands while it delivers, not in its start) and restarted each time,
until the sink holds every Message-ID and the queue is empty.
Then it prints what arrived: every message must have arrived at least once (nothing lost), and the
duplicates a crash between the sink's 250 and the state update may cause are counted.

    .venv/bin/python benchmarks/soak.py                      # 20,000 messages, kills every 1-4 s
    .venv/bin/python benchmarks/soak.py --messages 500 --min-kill 0.5 --max-kill 1.5

Exit status: 0 when nothing was lost or stuck, 1 otherwise. Loopback only.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.IGNORECASE | re.MULTILINE)
BODY = "The quick brown fox jumps over the lazy dog, again and again.\r\n" * 32


class Sink:
    """An aiosmtpd server counting every Message-ID it accepts."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        with socket.socket() as probe:  # aiosmtpd's Controller cannot start on port 0
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        match = MESSAGE_ID.search(envelope.original_content or envelope.content)
        if match:
            with self.lock:
                self.counts[match.group(1).decode()] += 1
        return "250 2.0.0 OK"

    def start(self) -> int:
        self.controller.start()
        return self.port

    def stop(self) -> None:
        self.controller.stop()

    def distinct(self) -> int:
        with self.lock:
            return len(self.counts)


def message(number: int, run: str) -> bytes:
    return (
        f"From: soak@example.com\r\nTo: sink{number % 50}@example.net\r\n"
        f"Subject: soak {number}\r\nMessage-ID: <{run}.{number}@soak.test>\r\n\r\n{BODY}"
    ).encode()


def writer(spool: Path, count: int, run: str, done: threading.Event) -> None:
    """The producer contract: write to a dotfile, then rename to *.eml."""
    for number in range(count):
        tmp = spool / f".{number}.tmp"
        tmp.write_bytes(message(number, run))
        os.rename(tmp, spool / f"{number}.eml")
    done.set()


def queue_empty(queue: Path) -> bool:
    state = queue / "state"
    return not state.is_dir() or not any(state.iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--min-kill", type=float, default=1.0, help="seconds (default 1)")
    parser.add_argument("--max-kill", type=float, default=4.0, help="seconds (default 4)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after (s)")
    parser.add_argument("--mqd", default=str(Path(sys.executable).with_name("mqd")))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mqd-soak-"))
    spool, queue = work / "spool", work / "queue"
    spool.mkdir(parents=True, exist_ok=True)
    sink = Sink()
    port = sink.start()
    config = work / "mqd.toml"
    config.write_text(
        f'[queue]\ndir = "{queue}"\nconcurrency = 20\nscan_interval = "1s"\n'
        'retry = { initial = "1s", max = "5s" }\n'
        f'[[spool]]\npath = "{spool}"\nallowed_senders = ["soak@example.com"]\n'
        f'[relays.sink]\nplugin = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
    )
    run = f"{os.getpid()}-{int(time.time())}"
    written = threading.Event()
    threading.Thread(target=writer, args=(spool, args.messages, run, written), daemon=True).start()
    # The daemon's READY=1 starts each kill's timer (abstract namespace: no path to clean up).
    notify_name = f"mqd-soak-{os.getpid()}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind("\0" + notify_name)
    env = {k: v for k, v in os.environ.items() if k != "MQD_CONFIG"}
    env["NOTIFY_SOCKET"] = "@" + notify_name
    log = (work / "mqd.log").open("ab")
    kills = 0
    started = time.monotonic()

    def launch() -> subprocess.Popen[bytes]:
        notify.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # what an earlier run said
                notify.recv(4096)
        return subprocess.Popen(
            [args.mqd, "--config", str(config), "--log-level", "warning", "run"],
            stdout=log,
            stderr=log,
            env=env,
        )

    def ready(daemon: subprocess.Popen[bytes]) -> bool:
        """Whether ``daemon`` said READY=1 (False: it exited, or the soak's time is up)."""
        notify.settimeout(0.2)
        while time.monotonic() - started < args.timeout and daemon.poll() is None:
            try:
                if b"READY=1" in notify.recv(4096):
                    return True
            except TimeoutError:
                continue
        return False

    def finished() -> bool:
        return (
            written.is_set()
            and sink.distinct() >= args.messages
            and not any(p.suffix == ".eml" for p in spool.iterdir())
            and queue_empty(queue)
        )

    try:
        while time.monotonic() - started < args.timeout:
            daemon = launch()
            if not ready(daemon):
                break
            deadline = time.monotonic() + rng.uniform(args.min_kill, args.max_kill)
            while time.monotonic() < deadline and not finished() and daemon.poll() is None:
                time.sleep(0.05)
            if finished() or daemon.poll() is not None:
                break
            daemon.send_signal(signal.SIGKILL)
            daemon.wait()
            kills += 1
        # A last run without kills: it must bring everything home and stop cleanly.
        if daemon.poll() is not None:
            daemon = launch()
        while not finished() and time.monotonic() - started < args.timeout:
            time.sleep(0.1)
        daemon.send_signal(signal.SIGTERM)
        exit_code = daemon.wait(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        sink.stop()
        notify.close()
        log.close()
    elapsed = time.monotonic() - started
    with sink.lock:
        counts = dict(sink.counts)
    expected = {f"{run}.{n}@soak.test" for n in range(args.messages)}
    lost = sorted(expected - counts.keys())
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    failed = list((queue / "failed").glob("*.json")) if (queue / "failed").is_dir() else []
    report = {
        "messages": args.messages,
        "kills": kills,
        "elapsed_s": round(elapsed, 1),
        "delivered_at_least_once": len(expected & counts.keys()),
        "lost": len(lost),
        "duplicates": duplicates,
        "duplicate_rate": round(duplicates / args.messages, 5),
        "left_in_queue": 0 if queue_empty(queue) else len(list((queue / "state").iterdir())),
        "failed": len(failed),
        "last_exit_code": exit_code,
        "workdir": str(work),
    }
    print(json.dumps(report))
    ok = not lost and report["left_in_queue"] == 0 and not failed and exit_code == 0
    if not ok:
        print(f"FAILED: lost {lost[:10]} ..., see {work / 'mqd.log'}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
