#!/usr/bin/env python3
"""HTTP submission's intake rate: N JSON messages over ``POST /api/v1/messages`` into a real
``mqd run``, each answered 202 only once durable (fsync stays on), by C client processes at
once, with and without an ``Idempotency-Key`` (kept by the queue store with the message, in the
same durable write: the file store's key journal).

    .venv/bin/python benchmarks/submit.py --messages 4000 --clients 1 16
    .venv/bin/python benchmarks/submit.py --postgresql   # the queue (and its keys) in PostgreSQL
    .venv/bin/python benchmarks/submit.py --workers 2    # queue.workers = 2

``--postgresql`` queues into a schema of its own on ``MQD_BENCH_PG_DSN`` (default: the local
test server), made and dropped by the run. ``--workers N`` sets ``queue.workers``: every
worker serves ``[http]`` (SO_REUSEPORT: the kernel spreads the client connections over them);
on the file store a keyed request another worker took is handed over in worker 1.

Each client is a process of its own speaking HTTP/1.1 over one kept-alive socket, its request
built once (the key aside): the client costs little, and never mqd's CPU. The relay is the
in-memory one (nothing leaves the machine): what is measured is HTTP, composing the message,
the sender policy, the durable accept (with the key, when there is one). Printed: the steady
rate (between 10% and 90% answered) and mqd's CPU per message over the same span, from /proc.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing.sharedctypes
import os
import secrets
import socket
import tempfile
import time
from functools import partial
from pathlib import Path

from steady import (
    Daemon,
    config_file,
    free_port,
    pg_queue,
    run_clients,
    wait_listening,
    workers_running,
)

TOKEN = "benchmark-submit-token-0123456789abcdef"
MESSAGE = json.dumps(
    {
        "from": "app@example.com",
        "to": ["alice@example.net"],
        "subject": "bench",
        "text": ("x" * 74 + "\n") * 20,  # 1.5 kB in lines of 75, as mail is written
    }
).encode()
#: Keys differ from run to run (a database keeps them across runs).
_RUN = secrets.token_hex(4)


def request(keyed: bool, number: int) -> bytes:
    key = f"Idempotency-Key: bench-{_RUN}-{os.getpid()}-{number}\r\n" if keyed else ""
    return (
        f"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(MESSAGE)}\r\n{key}\r\n"
    ).encode() + MESSAGE


def answer(stream: socket.socket, buffer: bytearray) -> int:
    """Read one response off ``stream``: its status."""
    while b"\r\n\r\n" not in buffer:
        chunk = stream.recv(65536)
        if not chunk:
            raise ConnectionError("mqd closed the connection")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = stream.recv(65536)
        if not chunk:
            raise ConnectionError("mqd closed the connection")
        rest += chunk
    buffer[:] = rest[length:]
    return int(head.split(b" ", 2)[1])


def client(
    port: int, keyed: bool, count: int, answered: multiprocessing.sharedctypes.Synchronized[int]
) -> None:
    plain = request(False, 0)
    with socket.create_connection(("127.0.0.1", port)) as stream:
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        for number in range(count):
            stream.sendall(request(True, number) if keyed else plain)
            status = answer(stream, buffer)
            if status != 202:
                raise SystemExit(f"answered {status}")
            with answered.get_lock():
                answered.value += 1


def ready(port: int, workers: int, within: float = 30.0) -> None:
    """Until the submit source takes messages (the server listens a moment before): in a row,
    once, or with several workers listening (the kernel picks one per connection) 8 times."""
    deadline = time.monotonic() + within
    taken = 0
    while True:
        with socket.create_connection(("127.0.0.1", port)) as stream:
            stream.sendall(request(False, 0))  # queued (202), or 503 until the source started
            taken = taken + 1 if answer(stream, bytearray()) != 503 else 0
        if taken >= (1 if workers == 1 else 8):
            return
        if time.monotonic() > deadline:
            raise SystemExit("the submit source did not start")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--keys", choices=["without", "with", "both"], default="both")
    parser.add_argument("--postgresql", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="queue.workers (1)")
    parser.add_argument("--profile", type=Path, help="py-spy's raw profile of mqd (stacks.py)")
    parser.add_argument("--log", type=Path, help="mqd's log (default: dropped with its queue)")
    args = parser.parse_args()
    with pg_queue() if args.postgresql else contextlib.nullcontext("") as store:
        run_daemon(args, store)


def run_daemon(args: argparse.Namespace, store: str) -> None:
    keyed = {"without": [False], "with": [True], "both": [False, True]}[args.keys]
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = config_file(
            Path(tmp, "mqd.toml"),
            f'[queue]\ndir = "{tmp}/queue"\nworkers = {args.workers}\n{store}'
            '[relays.mem]\nplugin = "memory"\n'
            f'[[spool]]\npath = "{tmp}/spool"\n'
            f"[http]\nenabled = true\nport = {port}\n"
            f'[[submit]]\ntoken = "{TOKEN}"\nallowed_senders = ["*@example.com"]\n',
        )
        daemon = Daemon(config, args.log or Path(tmp, "mqd.log"), args.profile)
        try:
            wait_listening(port, daemon)
            workers_running(config, args.workers, daemon)
            ready(port, args.workers)
            for keys, clients in itertools.product(keyed, args.clients):
                steady = run_clients(partial(client, port, keys), clients, args.messages, daemon)
                what = "with keys   " if keys else "without keys"
                print(f"{what} {clients:3d} client(s): {steady.line()}", flush=True)
            journal = Path(tmp, "queue", "handover-keys")
            if journal.exists():
                print(f"idempotency keys: a journal of {journal.stat().st_size} bytes")
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
