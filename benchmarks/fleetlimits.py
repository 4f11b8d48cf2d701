"""What fleet-wide limits cost per message: NODES nodes drain a queue as ``benchmarks/pgstore.py``
does, each delivery first admitted by its node's guards against an account's and a relay's
limits counted for the fleet (reserved in blocks), and every PostgreSQL transaction counted.
Prints figures; never fails on timing. A schema of its own, dropped afterwards.

    .venv/bin/python benchmarks/fleetlimits.py --messages 5000 --nodes 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import psycopg

from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.delivery.guards import Guards
from mqd.queue.entry import QueueEntry, RecipientState, new_message_id
from mqd.queue.postgresql.connect import Conn, Database
from mqd.queue.postgresql.schema import script
from mqd.queue.postgresql.store import PostgresStore
from mqd.queue.store import Incoming, Lease

BASE = os.environ.get("MQD_BENCH_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
BODY = b"From: app@shop.example\r\nTo: a@example.net\r\nSubject: bench\r\n\r\n" + b"x" * 2000
CONFIG = """
[queue]
dir = "{dir}/q"
[[spool]]
path = "{dir}/s"
allowed_senders = ["*@shop.example"]
[relays.r1]
plugin = "memory"
max_per_hour = {relay_hour}
max_per_day = {relay_day}
[[account]]
name = "shop"
senders = ["*@shop.example"]
max_per_minute = {account_minute}
"""

transactions = 0
_tx = PostgresStore._tx
_statement = PostgresStore._statement


@contextlib.asynccontextmanager
async def counted(self: PostgresStore, what: str) -> AsyncIterator[Conn]:
    global transactions
    transactions += 1
    async with _tx(self, what) as conn:
        yield conn


@contextlib.asynccontextmanager
async def counted_statement(self: PostgresStore, what: str) -> AsyncIterator[Conn]:
    """A statement that is its own transaction (autocommit) counts as one too."""
    global transactions
    transactions += 1
    async with _statement(self, what) as conn:
        yield conn


PostgresStore._tx = counted  # type: ignore[method-assign]
PostgresStore._statement = counted_statement  # type: ignore[method-assign]


def entry(now: float) -> QueueEntry:
    entry = QueueEntry(
        id=new_message_id(),
        sender="app@shop.example",
        recipients=[RecipientState("a@example.net")],
        relay="r1",
        source="bench",
        created_at=now,
        next_attempt_at=now,
        size=len(BODY),
    )
    entry.account = "shop"
    return entry


async def drain(store: PostgresStore, guards: Guards, batch: int) -> int:
    async def deliver(lease: Lease) -> None:
        if await guards.admit_account("shop") is not None or await guards.admit("r1"):
            raise SystemExit("a limit held a message back: raise the limits")
        await store.dispatching(lease)
        await store.complete(lease, lease.entry)

    done = 0
    while leases := await store.lease(batch):
        await asyncio.gather(*(deliver(lease) for lease in leases))
        done += len(leases)
    return done


async def main(messages: int, nodes: int, batch: int, config: Config) -> None:
    global transactions
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
        guards = [Guards(config) for _ in stores]
        for store, guard in zip(stores, guards, strict=True):
            await store.open()
            await guard.load(store)
        now = time.time()
        for start in range(0, messages, 100):
            await stores[0].accept(
                [Incoming(entry(now), BODY) for _ in range(min(100, messages - start))]
            )
        transactions = 0
        started = time.perf_counter()
        counts = await asyncio.gather(
            *(drain(s, g, batch) for s, g in zip(stores, guards, strict=True))
        )
        drained = time.perf_counter() - started
        for store, guard in zip(stores, guards, strict=True):
            await guard.stop(store)
        assert sum(counts) == messages, counts
        reservations = sum(s.reservations for g in guards for s in g.shared.values())
        print(
            f"{messages} messages, {nodes} node(s), leases of {batch}: "
            f"{messages / drained:,.0f}/s; "
            f"{transactions / messages:.2f} PostgreSQL transactions per message in all "
            f"(reservations: {reservations / messages:.3f} per message)"
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
    parser.add_argument("--relay-hour", type=int, default=1_000_000)
    parser.add_argument("--relay-day", type=int, default=10_000_000)
    parser.add_argument("--account-minute", type=int, default=1_000_000)
    args = parser.parse_args()
    if sys.platform == "win32":  # psycopg's async needs the selector loop there
        asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy())  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mqd.toml"
        path.write_text(
            CONFIG.format(
                dir=tmp,
                relay_hour=args.relay_hour,
                relay_day=args.relay_day,
                account_minute=args.account_minute,
            )
        )
        path.chmod(0o600)
        cfg = load_config(path)
        asyncio.run(main(args.messages, args.nodes, args.batch, cfg))
