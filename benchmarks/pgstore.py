"""The PostgreSQL store's own costs, without a daemon or a relay: intake batches, and leases
completed by NODES nodes at once (each leasing BATCH at a time), in a schema of its own that is
dropped afterwards. Prints figures; never fails on timing.

    .venv/bin/python benchmarks/pgstore.py --messages 5000 --nodes 2
    MQD_BENCH_PG_DSN=postgresql://mqd@db/mqd .venv/bin/python benchmarks/pgstore.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from urllib.parse import quote

import psycopg

from mqd.queue.entry import QueueEntry, RecipientState, new_message_id
from mqd.queue.postgresql.connect import Database
from mqd.queue.postgresql.schema import script
from mqd.queue.postgresql.store import PostgresStore
from mqd.queue.store import Incoming, Lease

BASE = os.environ.get("MQD_BENCH_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
BODY = b"From: app@example.com\r\nTo: a@example.net\r\nSubject: bench\r\n\r\n" + b"x" * 2000


def entry(now: float) -> QueueEntry:
    return QueueEntry(
        id=new_message_id(),
        sender="app@example.com",
        recipients=[RecipientState("a@example.net")],
        relay="r1",
        source="bench",
        created_at=now,
        next_attempt_at=now,
        size=len(BODY),
    )


async def drain(store: PostgresStore, batch: int) -> int:
    """Lease ``batch`` at a time and finish them concurrently, as the scheduler does."""

    async def deliver(lease: Lease) -> None:
        await store.dispatching(lease)
        await store.complete(lease, lease.entry)

    done = 0
    while leases := await store.lease(batch):
        await asyncio.gather(*(deliver(lease) for lease in leases))
        done += len(leases)
    return done


async def main(messages: int, nodes: int, batch: int, intake: int) -> None:
    schema = f"mqd_bench_{secrets.token_hex(4)}"
    dsn = f"{BASE}{'&' if '?' in BASE else '?'}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(BASE, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(script().encode())
        stores = [
            PostgresStore(Database(dsn), node=f"bench-{n}", pool_size=batch + 2)
            for n in range(nodes)
        ]
        for store in stores:
            await store.open()
        started = time.perf_counter()
        for start in range(0, messages, intake):
            now = time.time()
            items = [Incoming(entry(now), BODY) for _ in range(min(intake, messages - start))]
            await stores[0].accept(items)
        accepted = time.perf_counter() - started
        print(f"accept: {messages} messages in batches of {intake}: {messages / accepted:,.0f}/s")
        started = time.perf_counter()
        counts = await asyncio.gather(*(drain(store, batch) for store in stores))
        drained = time.perf_counter() - started
        assert sum(counts) == messages, counts  # each once
        print(
            f"lease + dispatching + complete, {nodes} node(s), leases of {batch}: "
            f"{messages / drained:,.0f}/s (per node: {', '.join(map(str, counts))})"
        )
        for store in stores:
            await store.close()
    finally:
        with psycopg.connect(BASE, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE'.encode())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--intake", type=int, default=100)
    args = parser.parse_args()
    if sys.platform == "win32":  # psycopg's async needs the selector loop there
        asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy())  # type: ignore[attr-defined]
    asyncio.run(main(args.messages, args.nodes, args.batch, args.intake))
