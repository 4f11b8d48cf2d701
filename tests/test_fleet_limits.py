"""Fleet-wide limits on PostgreSQL: a relay's and an account's windows counted once for the
fleet in reserved blocks, the per-second rate shared by the nodes that deliver, and one
suppression list. Nodes are stores (and guards) in one process on one schema, with one
ManualClock; each test has a schema of its own (tests/pgfixtures.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest
from pgfixtures import PgSchema

from mqd.admin.service import QueueAdmin
from mqd.clock import ManualClock
from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.delivery.fleet import BLOCK_TTL, MAX_BLOCK
from mqd.delivery.guards import Guards
from mqd.delivery.suppression import Suppression
from mqd.queue.postgresql.connect import Database
from mqd.queue.postgresql.schema import MIGRATIONS, script
from mqd.queue.postgresql.store import PostgresStore
from mqd.queue.shared import Returned, Window

CONFIG = """
[queue]
dir = "{queue}"

[[spool]]
path = "{spool}"
allowed_senders = ["*@shop.example"]

[relays.main]
plugin = "memory"
{relay}

[[account]]
name = "shop"
senders = ["*@shop.example"]
{account}
"""


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_config(write_config: Callable[[str], Path], tmp_path: Path) -> Callable[..., Config]:
    def make(relay: str = "", account: str = "max_per_day = 100000") -> Config:
        text = CONFIG.format(
            queue=tmp_path / "q", spool=tmp_path / "s", relay=relay, account=account
        )
        return load_config(write_config(text))

    return make


@pytest.fixture
async def stores(schema: PgSchema, clock: ManualClock) -> AsyncIterator[list[PostgresStore]]:
    """Two nodes on one database."""
    made = [
        PostgresStore(Database(schema.dsn), node=name, clock=clock, pool_size=2)
        for name in ("node-a", "node-b")
    ]
    for store in made:
        await store.open()
    yield made
    for store in made:
        await store.close()


async def node(config: Config, store: PostgresStore, clock: ManualClock) -> Guards:
    guards = Guards(config, clock=clock)
    await guards.load(store)
    assert guards.fleet is not None
    return guards


async def admitted(guards: Guards, relay: str, count: int) -> int:
    return sum([await guards.admit(relay) is None for _ in range(count)])


def db_count(schema: PgSchema, key: str) -> int:
    with psycopg.connect(schema.dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(n), 0) FROM mqd_quota_count WHERE key = %s", (key,)
        ).fetchone()
    return int(row[0]) if row else 0


async def test_reservations_never_exceed_the_limit_between_two_nodes(stores, clock):
    a, b = (store.fleet() for store in stores)
    hour = (Window(3600.0, 10, "per-hour"),)
    now = clock.time()
    first = await a.reserve("relay:main", hour, 8, now, now)
    second = await b.reserve("relay:main", hour, 8, now, now)
    assert (first.n, second.n) == (8, 2)
    third = await a.reserve("relay:main", hour, 8, now, now)
    assert third.n == 0 and third.full == "per-hour" and third.wait > 0
    # Giving back 3 lets 3 more go, on either node.
    await a.give_back([Returned("relay:main", now, 3)])
    assert (await b.reserve("relay:main", hour, 8, now, now)).n == 3
    minute = (Window(60.0, 5, "per-minute"),)  # counted per second: given back the same way
    assert (await a.reserve("account:shop", minute, 4, now, now)).n == 4
    assert (await b.reserve("account:shop", minute, 4, now, now)).n == 1
    await b.give_back([Returned("account:shop", now, 2)])
    assert (await a.reserve("account:shop", minute, 4, now, now)).n == 2
    later = await a.reserve("account:shop", minute, 4, now + 10, now + 10)
    assert later.n == 0 and later.full == "per-minute" and later.wait == 50


async def test_two_nodes_asking_8_each_admit_10_in_all_per_hour(stores, clock, make_config):
    config = make_config(relay="max_per_hour = 10")
    a, b = [await node(config, store, clock) for store in stores]
    total = 0
    for _ in range(8):  # interleaved, as two busy nodes are
        total += await admitted(a, "main", 1) + await admitted(b, "main", 1)
    assert total == 10
    hold = await a.admit("main")
    assert hold is not None and "per-hour" in hold[1]


async def test_an_accounts_minute_limit_holds_for_the_fleet(stores, clock, make_config):
    config = make_config(account="max_per_minute = 10")
    a, b = [await node(config, store, clock) for store in stores]
    results = [await a.admit_account("shop") for _ in range(8)]
    results += [await b.admit_account("shop") for _ in range(8)]
    assert sum(r is None for r in results) == 10
    held = [r for r in results if r is not None]
    assert all("per-minute" in why for _, why in held)
    assert a.accounts.use()[0].windows[0][0] == "minute"
    clock.advance(60 + BLOCK_TTL)  # the minute rolls on (blocks count at their end): room
    assert await b.admit_account("shop") is None


async def test_unused_reservations_are_given_back(stores, clock, make_config, schema):
    config = make_config(relay="max_per_hour = 10000")
    a = await node(config, stores[0], clock)
    assert await admitted(a, "main", 100) == 100
    shared = a.shared["relay:main"]
    assert shared.size > 1 and shared.reservations < 20  # blocks: few round trips
    reserved = db_count(schema, "relay:main")
    assert reserved > 100  # the current block's rest is counted too...
    await a.stop(stores[0])  # ...until the node stops and gives it back
    assert db_count(schema, "relay:main") == 100


async def test_a_stale_block_is_given_back_at_the_next_save(stores, clock, make_config, schema):
    config = make_config(relay="max_per_hour = 10000")
    a = await node(config, stores[0], clock)
    assert await admitted(a, "main", 20) == 20
    assert db_count(schema, "relay:main") > 20
    clock.advance(BLOCK_TTL + 1)
    await a.save(stores[0])
    assert db_count(schema, "relay:main") == 20


async def test_a_refund_goes_back_into_the_fleets_count(stores, clock, make_config, schema):
    config = make_config(account="max_per_hour = 3")
    a = await node(config, stores[0], clock)
    assert await a.admit_account("shop") is None
    a.give_back_account("shop")  # that delivery did not go out
    results = [await a.admit_account("shop") for _ in range(4)]
    assert sum(r is None for r in results) == 3


async def test_counts_survive_a_node_restart(schema, clock, make_config):
    config = make_config(relay="max_per_day = 5")
    store = PostgresStore(Database(schema.dsn), node="node-a", clock=clock, pool_size=2)
    await store.open()
    a = await node(config, store, clock)
    assert await admitted(a, "main", 3) == 3
    await a.stop(store)
    await store.close()

    store = PostgresStore(Database(schema.dsn), node="node-a", clock=clock, pool_size=2)
    await store.open()
    try:
        again = await node(config, store, clock)
        clock.advance(3600)
        assert await admitted(again, "main", 5) == 2  # 3 of the day's 5 are gone
    finally:
        await store.close()


async def test_a_crashed_nodes_block_only_delays_until_the_window_moves(stores, clock, make_config):
    config = make_config(relay="max_per_minute = 100")  # blocks of up to 5
    a, b = [await node(config, store, clock) for store in stores]
    assert await admitted(a, "main", 6) == 6  # a's block is partly unused; a dies
    assert await admitted(b, "main", 200) < 100
    clock.advance(60 + BLOCK_TTL + 1)
    assert await admitted(b, "main", 100) == 100


async def test_blocks_stay_small_for_small_limits(stores, clock, make_config):
    config = make_config(relay="max_per_hour = 10\nmax_per_day = 1000000")
    a = await node(config, stores[0], clock)
    assert a.shared["relay:main"].cap == 1
    config = make_config(relay="max_per_hour = 1000000")
    b = await node(config, stores[1], clock)
    assert b.shared["relay:main"].cap == MAX_BLOCK


async def test_the_per_second_rate_is_shared_by_the_nodes_that_deliver(stores, clock, make_config):
    config = make_config(relay="max_per_second = 10")
    a, b = [await node(config, store, clock) for store in stores]
    await admitted(a, "main", 1)
    await admitted(b, "main", 1)
    await a.save(stores[0])
    await b.save(stores[1])
    assert a.quotas["main"].config.max_per_second == 10  # a saw itself alone
    await admitted(a, "main", 1)
    await a.save(stores[0])
    assert a.nodes == 2 and a.quotas["main"].config.max_per_second == 5
    await b.stop(stores[1])  # b leaves: a has the whole rate again at its next save
    await admitted(a, "main", 1)
    await a.save(stores[0])
    assert a.nodes == 1 and a.quotas["main"].config.max_per_second == 10


async def test_a_suppression_added_on_one_node_is_honoured_on_the_other(stores, clock, make_config):
    config = make_config()
    a, b = [await node(config, store, clock) for store in stores]
    now = clock.time()
    a.suppressions.add(Suppression("Gone@Example.com", "shop", "bounce", "5.1.1", now))
    assert b.suppressions.check("shop", "gone@example.com", now) is None  # not yet seen
    await a.save(stores[0])
    await b.save(stores[1])
    item = b.suppressions.check("shop", "gone@example.com", now)
    assert item is not None and item.kind == "bounce" and item.reason == "5.1.1"
    assert b.suppressions.check("other", "gone@example.com", now) is None

    b.suppressions.remove("gone@example.com", None)  # removed on b: gone on a too
    await b.save(stores[1])
    await a.save(stores[0])
    assert a.suppressions.check("shop", "gone@example.com", clock.time()) is None

    # A new node (or one restarted) takes the whole list at once.
    a.suppressions.add(Suppression("x@example.com", "", "manual", "asked", now, now + 60))
    await a.save(stores[0])
    c = await node(config, stores[1], clock)
    assert c.suppressions.check(None, "x@example.com", now) is not None
    clock.advance(61)  # lapsed
    assert c.suppressions.check(None, "x@example.com", clock.time()) is None


async def test_a_longer_suppression_is_kept_over_a_shorter_one(stores, clock, make_config):
    config = make_config()
    a, b = [await node(config, store, clock) for store in stores]
    now = clock.time()
    a.suppressions.add(Suppression("p@example.com", "", "complaint", "spam", now))
    await a.save(stores[0])
    b.suppressions.add(Suppression("p@example.com", "", "bounce", "5.1.1", now, now + 60))
    await b.save(stores[1])
    item = b.suppressions.check(None, "p@example.com", now + 120)
    assert item is not None and item.kind == "complaint" and item.until is None


class _Node:
    def __init__(self, config: Config, store: PostgresStore, guards: Guards) -> None:
        self.config, self.store, self.guards = config, store, guards


async def test_mqd_suppress_ops_go_to_the_fleets_list(stores, clock, make_config):
    config = make_config()
    a, b = [await node(config, store, clock) for store in stores]
    admin_a = QueueAdmin(_Node(config, stores[0], a), clock=clock)  # type: ignore[arg-type]
    admin_b = QueueAdmin(_Node(config, stores[1], b), clock=clock)  # type: ignore[arg-type]
    added = await admin_a.op_suppress_add(["who@example.com"], account="shop", reason="asked")
    assert added == {"added": ["who@example.com"]}
    listed = await admin_b.op_suppress_list()  # on the other node at once
    assert [(i["address"], i["account"], i["reason"]) for i in listed] == [
        ("who@example.com", "shop", "asked")
    ]
    await admin_b.op_suppress_remove(["who@example.com"])
    assert await admin_a.op_suppress_list() == []
    csv = "address,account\nx@example.com,shop\ny@example.com,\n"
    assert (await admin_b.op_suppress_import(csv))["imported"] == 2
    assert len(await admin_a.op_suppress_list()) == 2
    assert len(await admin_a.op_suppress_list("shop")) == 1


async def test_status_shows_the_fleets_counts(stores, clock, make_config):
    config = make_config(relay="max_per_hour = 10", account="max_per_hour = 10")
    a, b = [await node(config, store, clock) for store in stores]
    assert await admitted(a, "main", 3) == 3
    assert await admitted(b, "main", 2) == 2
    assert b.sent("main", 3600) == 5  # as b's last reservation saw them
    for _ in range(4):
        await a.admit_account("shop")
    await b.admit_account("shop")
    [use] = b.accounts.use()
    assert use.windows == (("hour", 5, 10),)
    assert await admitted(a, "main", 10) == 5 and a.holds("main") == 5


def test_the_upgrade_makes_the_nodes_saved_counts_and_lists_the_fleets():
    schema = PgSchema(upgraded=False)
    try:
        with psycopg.connect(schema.dsn, autocommit=True) as conn:
            conn.execute(MIGRATIONS[0].encode())
            conn.execute(b"INSERT INTO mqd_meta VALUES ('schema_version', '1')")
            quota = b'{"version": 1, "relays": {"main": {"minutes": {"100": 2, "101": 1}}}}'
            quota_b = b'{"version": 1, "relays": {"main": {"minutes": {"100": 3}}}}'
            accounts = (
                b'{"version": 1, "accounts": {"shop": {"minutes": {}, "recent": [7.5, 7.9]}}}'
            )
            items = [
                {
                    "address": "a@x.org",
                    "account": "",
                    "kind": "bounce",
                    "reason": "r",
                    "since": 1.0,
                    "until": 50.0,
                },
            ]
            longer = [{**items[0], "kind": "complaint", "until": None}]
            rows = [
                ("node-a", "quota", quota),
                ("node-b", "quota", quota_b),
                ("node-a", "accounts", accounts),
                ("node-a", "suppressions", json.dumps({"items": items}).encode()),
                ("node-b", "suppressions", json.dumps({"items": longer}).encode()),
                ("node-c", "suppressions", b"not json"),  # left out, with a notice
            ]
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO mqd_state VALUES (%s, %s, %s)", rows)
            conn.execute(script(1).encode())
            counts = conn.execute(
                "SELECT key, minute, n FROM mqd_quota_count ORDER BY 1, 2"
            ).fetchall()
            assert counts == [("relay:main", 100, 5), ("relay:main", 101, 1)]
            recent = conn.execute("SELECT key, second, n FROM mqd_quota_recent").fetchall()
            assert recent == [("account:shop", 7, 2)]
            listed = conn.execute("SELECT address, kind, until FROM mqd_suppression").fetchall()
            assert listed == [("a@x.org", "complaint", None)]
    finally:
        schema.drop()


async def test_an_account_that_refuses_is_counted_for_the_fleet_at_hand_over(
    stores, clock, make_config
):
    config = make_config(account='max_per_hour = 3\nover_limit = "refuse"')
    a, b = [await node(config, store, clock) for store in stores]
    refusals = [await a.accounts.check_in("shop"), await b.accounts.check_in("shop")]
    refusals += [await b.accounts.check_in("shop"), await a.accounts.check_in("shop")]
    assert refusals[:3] == [None, None, None]
    assert refusals[3] is not None and "per-hour" in refusals[3] and "refuse" in refusals[3]
    assert await a.admit_account("shop") is None  # counted at hand-over, not again
    assert b.accounts.use()[0].windows == (("hour", 3, 3),)


async def test_deliveries_at_once_share_one_reservation(stores, clock, make_config):
    config = make_config(relay="max_per_hour = 100000")
    a = await node(config, stores[0], clock)
    for _ in range(6):  # blocks grow while used up in time: 1, 2, 4, ... 32
        results = await asyncio.gather(*(a.admit("main") for _ in range(32)))
        assert all(result is None for result in results)
    shared = a.shared["relay:main"]
    assert shared.size == MAX_BLOCK
    assert shared.reservations <= 32  # not one per delivery (6 x 32 = 192)
