#!/usr/bin/env python3
"""The RabbitMQ mailbox's intake rate: N messages published (persistent, publisher confirms) to
a quorum queue of its own, then a real ``mqd run`` with a ``[[mailbox]]`` on it started: each
delivery acked only once durable in mqd's queue (fsync stays on). Printed: the steady rate
(between 10% and 90% of the messages taken off the queue, polled from the broker) with mqd's
CPU per message over the same span (from /proc), and, start-up included, the time until all
are acked.

    .venv/bin/python benchmarks/mailbox.py --messages 5000 --prefetch 32 256
    .venv/bin/python benchmarks/mailbox.py --postgresql --workers 2   # a consumer per worker

``--workers N`` sets ``queue.workers`` (on the file store the mailbox is consumed by worker 1
only: its hand-over keys are its own); ``--postgresql`` queues into a schema of its own on
``MQD_BENCH_PG_DSN`` (the local test server by default), made and dropped by the run.

Needs the RabbitMQ on 127.0.0.1:5672 (guest/guest) that .ci/run starts. The relay is the
in-memory one (nothing leaves the machine): what is measured is consuming, the hand-over (sender
policy, the durable accept: a prefetch window's deliveries share a batch), remembering each
message_id and the ack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
from steady import ENV, Daemon, Marks, config_file, pg_queue

URL = "amqp://guest:guest@127.0.0.1:5672/"
MESSAGE = (
    b"From: app@example.com\r\nTo: alice@example.net\r\nSubject: bench\r\n\r\n"
    + (b"x" * 74 + b"\r\n") * 20
)


async def publish(queue: str, count: int) -> float:
    """Publish ``count`` messages, confirmed; returns the messages per second published."""
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        start = time.perf_counter()
        for first in range(0, count, 100):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(
                            MESSAGE,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=f"bench-{n}",
                        ),
                        routing_key=queue,
                    )
                    for n in range(first, min(first + 100, count))
                )
            )
        return count / (time.perf_counter() - start)


async def progress(
    queue: str, total: int, marks: Marks, daemon: Daemon, within: float = 600.0
) -> None:
    """Poll the queue's ready count until 90% of ``total`` have left it for mqd: taken and
    acked, but for at most a prefetch window (about as many at 10% as at 90%, so the span
    between is right)."""
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        deadline = time.monotonic() + within
        while True:
            declared = await channel.declare_queue(queue, passive=True)
            ready = declared.declaration_result.message_count or 0
            if marks.see(total - ready):
                return
            if time.monotonic() > deadline or daemon.process.poll() is not None:
                raise SystemExit(f"mqd stopped or timed out: {ready} of {total} still ready")
            await asyncio.sleep(0.02)


async def delete(queue: str) -> None:
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)


def accepted(config: Path) -> int:
    out = subprocess.run(
        [sys.executable, "-m", "mqd", "--config", str(config), "status", "--json"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    try:
        sources = json.loads(out).get("sources") or []
    except ValueError:
        return 0
    return int(sources[0]["accepted"]) if sources else 0


def measure(args: argparse.Namespace, prefetch: int, store: str) -> None:
    messages, workers = args.messages, args.workers
    queue = f"mqd-bench-{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory() as tmp:
        config = config_file(
            Path(tmp, "mqd.toml"),
            f'[queue]\ndir = "{tmp}/queue"\nworkers = {workers}\n{store}'
            '[relays.mem]\nplugin = "memory"\n'
            f'[[spool]]\npath = "{tmp}/spool"\n'
            f'[[mailbox]]\nurl = "amqp://guest@127.0.0.1:5672/"\npassword_env = "BENCH_PW"\n'
            f'queue = "{queue}"\nallowed_senders = ["*@example.com"]\nprefetch = {prefetch}\n',
        )
        rate = asyncio.run(publish(queue, messages))
        ENV["BENCH_PW"] = "guest"  # (bench.py's environment for mqd)
        start = time.perf_counter()
        daemon = Daemon(config, Path(tmp, "mqd.log"), args.profile)
        try:
            marks = Marks(messages, daemon)
            asyncio.run(progress(queue, messages, marks, daemon))
            while accepted(config) < messages:  # the last window's acks
                if time.perf_counter() - start > 600 or daemon.process.poll() is not None:
                    raise SystemExit("timed out")
                time.sleep(0.1)
            took = time.perf_counter() - start
            print(
                f"prefetch {prefetch:4d}: {marks.steady().line()}; all {messages} acked "
                f"{took:4.1f} s after mqd started ({messages / took:4.0f} msg/s with start-up); "
                f"published beforehand at {rate:5.0f}/s"
            )
        finally:
            daemon.stop()
            asyncio.run(delete(queue))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--prefetch", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--postgresql", action="store_true", help="the queue in PostgreSQL")
    parser.add_argument("--workers", type=int, default=1, help="queue.workers (1)")
    parser.add_argument("--profile", type=Path, help="py-spy's raw profile of mqd (stacks.py)")
    args = parser.parse_args()
    for prefetch in args.prefetch:
        with pg_queue() if args.postgresql else contextlib.nullcontext("") as store:
            measure(args, prefetch, store)


if __name__ == "__main__":
    main()
