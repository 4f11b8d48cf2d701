#!/usr/bin/env python3
"""SMTP submission's intake rate: N messages over ``[[smtpd]]`` into a real ``mqd run``, each
acknowledged (250) only once durable (fsync stays on), with C clients at once.

    .venv/bin/python benchmarks/smtpd.py --messages 2000 --clients 1 16

The relay is the in-memory one (nothing leaves the machine): what is measured is the hand-over,
sender policy and the durable accept; concurrent hand-overs share one batch (one fsync of the
directory), which is what the several-client figures show.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib

MESSAGE = (
    b"From: app@example.com\r\nTo: alice@example.net\r\nSubject: bench\r\n\r\n"
    + (b"x" * 74 + b"\r\n") * 20
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def send(port: int, count: int) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as smtp:
        for _ in range(count):
            await smtp.sendmail("app@example.com", ["alice@example.net"], MESSAGE)


async def run(port: int, messages: int, clients: int) -> float:
    start = time.perf_counter()
    share = messages // clients
    await asyncio.gather(*(send(port, share) for _ in range(clients)))
    return share * clients / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = Path(tmp, "mqd.toml")
        config.write_text(
            f'[queue]\ndir = "{tmp}/queue"\n[relays.mem]\nplugin = "memory"\n'
            f'[[spool]]\npath = "{tmp}/spool"\n'
            f'[[smtpd]]\nlisten = ["127.0.0.1:{port}"]\nallowed_senders = ["*@example.com"]\n'
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "mqd", "--config", str(config), "--log-level", "warning", "run"]
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            for clients in args.clients:
                rate = asyncio.run(run(port, args.messages, clients))
                print(f"{clients:3d} client(s): {rate:7.0f} messages/s acknowledged durable")
        finally:
            daemon.terminate()
            daemon.wait(30)


if __name__ == "__main__":
    main()
