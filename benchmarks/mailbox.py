#!/usr/bin/env python3
"""The RabbitMQ mailbox's intake rate: N messages published (persistent, publisher confirms) to
a quorum queue of its own, then a real ``mqd run`` with a ``[[mailbox]]`` on it started: the
time until every delivery is acked, each only once durable in mqd's queue (fsync stays on).

    .venv/bin/python benchmarks/mailbox.py --messages 2000 --prefetch 32 256

Needs the RabbitMQ on 127.0.0.1:5672 (guest/guest) that .ci/run starts. The relay is the
in-memory one (nothing leaves the machine): what is measured is consuming, the hand-over (sender
policy, the durable accept: a prefetch window's deliveries share a batch), remembering each
message_id and the ack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika

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


async def drained(queue: str, since: float) -> float:
    """Seconds after ``since`` until the queue has no message ready (all delivered to mqd; at
    most ``prefetch`` of them not acked yet)."""
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        while True:
            declared = await channel.declare_queue(queue, passive=True)
            if declared.declaration_result.message_count == 0:
                return time.perf_counter() - since
            await asyncio.sleep(0.05)


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


def measure(messages: int, prefetch: int) -> None:
    queue = f"mqd-bench-{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "mqd.toml")
        config.write_text(
            f'[queue]\ndir = "{tmp}/queue"\n[relays.mem]\nplugin = "memory"\n'
            f'[[spool]]\npath = "{tmp}/spool"\n'
            f'[[mailbox]]\nurl = "amqp://guest@127.0.0.1:5672/"\npassword_env = "BENCH_PW"\n'
            f'queue = "{queue}"\nallowed_senders = ["*@example.com"]\nprefetch = {prefetch}\n'
        )
        config.chmod(0o600)
        rate = asyncio.run(publish(queue, messages))
        start = time.perf_counter()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "mqd", "--config", str(config), "--log-level", "warning", "run"],
            env={"BENCH_PW": "guest", "PATH": "/usr/bin:/bin"},
        )
        try:
            empty = asyncio.run(drained(queue, start))
            while accepted(config) < messages:  # the last window's acks
                if time.perf_counter() - start > 300:
                    raise SystemExit("timed out")
                time.sleep(0.1)
            took = time.perf_counter() - start
            print(
                f"prefetch {prefetch:4d}: {messages} published at {rate:5.0f}/s (confirmed); "
                f"after mqd started: none ready at {empty:4.1f}s, all acked durable by "
                f"{took:4.1f}s: {messages / took:4.0f} messages/s (start-up included)"
            )
        finally:
            daemon.terminate()
            daemon.wait(30)
            asyncio.run(delete(queue))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--prefetch", type=int, nargs="+", default=[32, 256])
    args = parser.parse_args()
    for prefetch in args.prefetch:
        measure(args.messages, prefetch)


if __name__ == "__main__":
    main()
