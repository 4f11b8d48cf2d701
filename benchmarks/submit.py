#!/usr/bin/env python3
"""HTTP submission's intake rate: N JSON messages over ``POST /api/v1/messages`` into a real
``mqd run``, each answered 202 only once durable (fsync stays on), with C clients at once, with
and without an ``Idempotency-Key`` (kept by the queue store with the message, in the same durable
write: the file store's key journal).

    .venv/bin/python benchmarks/submit.py --messages 1000 --clients 1 16
    .venv/bin/python benchmarks/submit.py --postgresql   # the queue (and its keys) in PostgreSQL

``--postgresql`` queues into a schema of its own on ``MQD_BENCH_PG_DSN`` (default: the local
test server), made and dropped by the run. The relay is the in-memory one (nothing leaves the
machine): what is measured is HTTP, composing the message, the sender policy and the durable
accept (with the key, when there is one).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
import psycopg

from mqd.queue.postgresql.schema import script

TOKEN = "benchmark-submit-token-0123456789abcdef"
MESSAGE = {
    "from": "app@example.com",
    "to": ["alice@example.net"],
    "subject": "bench",
    "text": "x" * 1500,
}
BASE = os.environ.get("MQD_BENCH_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
_keys = itertools.count()
#: Keys differ from run to run (a database keeps them across runs).
_RUN = secrets.token_hex(4)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def send(http: aiohttp.ClientSession, count: int, keyed: bool) -> None:
    for _ in range(count):
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if keyed:
            headers["Idempotency-Key"] = f"bench-{_RUN}-{next(_keys)}"
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
    parser.add_argument("--postgresql", action="store_true")
    args = parser.parse_args()
    schema = f"mqd_bench_{secrets.token_hex(4)}"
    store = ""
    if args.postgresql:
        dsn = f"{BASE}{'&' if '?' in BASE else '?'}options={quote(f'-csearch_path={schema}')}"
        with psycopg.connect(BASE, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(script().encode())
        store = f'store = "postgresql"\ndsn = "{dsn}"\nnode = "bench"\n'
    try:
        run_daemon(args, store)
    finally:
        if args.postgresql:
            with psycopg.connect(BASE, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE'.encode())


def run_daemon(args: argparse.Namespace, store: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = Path(tmp, "mqd.toml")
        config.write_text(
            f'[queue]\ndir = "{tmp}/queue"\n{store}[relays.mem]\nplugin = "memory"\n'
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
            if journal.exists():
                print(f"idempotency keys: a journal of {journal.stat().st_size} bytes")
        finally:
            daemon.terminate()
            daemon.wait(30)


if __name__ == "__main__":
    main()
