#!/usr/bin/env python3
"""HTTP submission's intake rate: N JSON messages over ``POST /api/v1/messages`` into a real
``mqd run``, each answered 202 only once durable (fsync stays on), with C clients at once, with
and without an ``Idempotency-Key`` (kept by the queue store with the message, in the same durable
write: the file store's key journal).

    .venv/bin/python benchmarks/submit.py --messages 1000 --clients 1 16

The relay is the in-memory one (nothing leaves the machine): what is measured is HTTP, composing
the message, the sender policy and the durable accept (and the key's save).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

TOKEN = "benchmark-submit-token-0123456789abcdef"
MESSAGE = {
    "from": "app@example.com",
    "to": ["alice@example.net"],
    "subject": "bench",
    "text": "x" * 1500,
}
_keys = itertools.count()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def send(http: aiohttp.ClientSession, count: int, keyed: bool) -> None:
    for _ in range(count):
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if keyed:
            headers["Idempotency-Key"] = f"bench-{next(_keys)}"
        async with http.post("/api/v1/messages", json=MESSAGE, headers=headers) as answer:
            if answer.status != 202:
                raise RuntimeError(f"{answer.status}: {await answer.text()}")


async def run(port: int, messages: int, clients: int, keyed: bool) -> float:
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as http:
        start = time.perf_counter()
        share = messages // clients
        await asyncio.gather(*(send(http, share, keyed) for _ in range(clients)))
        return share * clients / (time.perf_counter() - start)


async def ready(port: int) -> None:
    """Until the submit source takes messages (the server listens a moment before)."""
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        while True:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post("/api/v1/messages", data=b"", headers=headers) as answer:
                if answer.status != 503:
                    return
            await asyncio.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = Path(tmp, "mqd.toml")
        config.write_text(
            f'[queue]\ndir = "{tmp}/queue"\n[relays.mem]\nplugin = "memory"\n'
            f'[[spool]]\npath = "{tmp}/spool"\n'
            f"[http]\nenabled = true\nport = {port}\n"
            f'[[submit]]\ntoken = "{TOKEN}"\nallowed_senders = ["*@example.com"]\n'
        )
        config.chmod(0o600)
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
            asyncio.run(ready(port))
            for keyed in (False, True):
                for clients in args.clients:
                    rate = asyncio.run(run(port, args.messages, clients, keyed))
                    what = "with keys   " if keyed else "without keys"
                    print(f"{what} {clients:3d} client(s): {rate:7.0f} messages/s answered 202")
            journal = Path(tmp, "queue", "handover-keys")
            size = journal.stat().st_size if journal.exists() else 0
            print(f"idempotency keys: a journal of {size} bytes")
        finally:
            daemon.terminate()
            daemon.wait(30)


if __name__ == "__main__":
    main()
