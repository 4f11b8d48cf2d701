"""The fleet's shared limits and suppression list in PostgreSQL (``mqd.queue.shared``).

A reservation is one transaction: a transaction-level advisory lock on the key (the nodes
reserving for one relay or account take turns; others are not held up), one statement summing
each window's buckets, one upsert of the granted count (``ON CONFLICT DO UPDATE SET n = n + k``).
Hour and day windows count sends per minute (``mqd_quota_count``), rounded outwards as the
file store's counts are; the minute window per second (``mqd_quota_recent``), so it rolls.

Suppressions are rows of ``mqd_suppression``; ending one sets its ``until`` (a row is never
deleted while nodes may still cache it, only long after it ended). Nodes follow changes by the
writing transaction's id: ``suppressions_since`` returns the rows written by transactions not
older than the oldest one running at the last look, so a slow writer is never missed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from mqd.queue.postgresql.connect import Conn
from mqd.queue.shared import FleetState, Grant, Returned, SuppressionRow, Window

__all__ = ["NODE_TIMEOUT", "PgFleet"]

#: A node that has not said it is alive for this long no longer counts (for per-second rates).
NODE_TIMEOUT = 30.0
#: Ended suppressions are deleted this long after they ended (every node has seen it by then).
ENDED_RETENTION = 86400.0

_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('mqd-quota:' || %s, 0))"
#: A window's sends and its oldest bucket (two columns).
_MINUTE_SUM = (
    "(SELECT coalesce(sum(n), 0) FROM mqd_quota_count "
    "WHERE key = %(key)s AND minute >= %(m{i})s), "
    "(SELECT min(minute) FROM mqd_quota_count "
    "WHERE key = %(key)s AND minute >= %(m{i})s AND n > 0)"
)
_SECOND_SUM = (
    "(SELECT coalesce(sum(n), 0) FROM mqd_quota_recent "
    "WHERE key = %(key)s AND second > %(m{i})s), "
    "(SELECT min(second) FROM mqd_quota_recent "
    "WHERE key = %(key)s AND second > %(m{i})s AND n > 0)"
)
_COUNT_MINUTE = (
    "INSERT INTO mqd_quota_count (key, minute, n) VALUES (%s, %s, %s) "
    "ON CONFLICT (key, minute) DO UPDATE SET n = mqd_quota_count.n + excluded.n"
)
_COUNT_SECOND = (
    "INSERT INTO mqd_quota_recent (key, second, n) VALUES (%s, %s, %s) "
    "ON CONFLICT (key, second) DO UPDATE SET n = mqd_quota_recent.n + excluded.n"
)
_UNCOUNT = """
WITH back AS (
    SELECT * FROM unnest(%(keys)s::text[], %(ats)s::float8[], %(ns)s::int4[]) AS b(key, at, n)
), minutes AS (
    UPDATE mqd_quota_count c SET n = greatest(0, c.n - back.n) FROM back
    WHERE c.key = back.key AND c.minute = floor(back.at / 60)::bigint
)
UPDATE mqd_quota_recent r SET n = greatest(0, r.n - back.n) FROM back
WHERE r.key = back.key AND r.second = floor(back.at)::bigint
"""
_HEARTBEAT = (
    "INSERT INTO mqd_node (node, seen_at) VALUES (%s, %s) "
    "ON CONFLICT (node) DO UPDATE SET seen_at = excluded.seen_at"
)
_PRUNE = (
    "DELETE FROM mqd_quota_recent WHERE second < %(second)s",
    "DELETE FROM mqd_quota_count WHERE minute < %(minute)s",
    "DELETE FROM mqd_suppression WHERE until < %(ended)s",
)
_SUPPRESS = """
INSERT INTO mqd_suppression AS s (account, address, kind, reason, since, until)
SELECT * FROM unnest(%(accounts)s::text[], %(addresses)s::text[], %(kinds)s::text[],
    %(reasons)s::text[], %(sinces)s::float8[], %(untils)s::float8[])
ON CONFLICT (account, address) DO UPDATE SET kind = excluded.kind, reason = excluded.reason,
    since = excluded.since, until = excluded.until, written = pg_current_xact_id()
WHERE s.until IS NOT NULL AND (s.until <= %(now)s OR excluded.until IS NULL
    OR excluded.until > s.until)
"""
_UNSUPPRESS = (
    "UPDATE mqd_suppression SET until = %(now)s, written = pg_current_xact_id() "
    "WHERE address = %(address)s AND (%(account)s::text IS NULL OR account = %(account)s) "
    "AND (until IS NULL OR until > %(now)s)"
)
_CHANGED = (
    "SELECT account, address, kind, reason, since, until FROM mqd_suppression "
    "WHERE written >= %s::text::xid8"
)
_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"

Tx = Callable[[str], contextlib.AbstractAsyncContextManager[Conn]]


class PgFleet(FleetState):
    def __init__(self, node: str, tx: Tx) -> None:
        self.node = node
        self._tx = tx

    async def reserve(
        self,
        key: str,
        windows: Sequence[Window],
        want: int,
        at: float,
        now: float,
        returned: Sequence[Returned] = (),
    ) -> Grant:
        async with self._tx("counting sends") as conn:
            if returned:
                await conn.execute(_UNCOUNT, _returns(returned))
            await conn.execute(_LOCK, (key,))
            sums: list[str] = []
            params: dict[str, object] = {"key": key}
            for i, window in enumerate(windows):
                if window.seconds <= 60:
                    sums.append(_SECOND_SUM.format(i=i))
                    params[f"m{i}"] = math.floor(now - window.seconds)
                else:
                    sums.append(_MINUTE_SUM.format(i=i))
                    params[f"m{i}"] = math.floor((now - window.seconds) / 60)
            found: tuple[Any, ...] = ()
            if sums:
                cursor = await conn.execute(("SELECT " + ", ".join(sums)).encode(), params)
                found = await cursor.fetchone() or ()
            used = [int(str(n)) for n in found[0::2]]
            oldest = list(found[1::2])
            grant = want
            full, wait = "", 0.0
            for window, count, first in zip(windows, used, oldest, strict=True):
                room = window.limit - count
                if room < grant:
                    grant = max(0, room)
                if room <= 0 and not full:
                    full, wait = window.name, _wait(window, first, now)
            if grant <= 0:
                return Grant(0, at, wait=wait, full=full, used=tuple(used))
            if any(w.seconds > 60 for w in windows):
                await conn.execute(_COUNT_MINUTE, (key, math.floor(at / 60), grant))
            if any(w.seconds <= 60 for w in windows):
                await conn.execute(_COUNT_SECOND, (key, math.floor(at), grant))
        return Grant(grant, at, used=tuple(count + grant for count in used))

    async def give_back(self, returned: Sequence[Returned]) -> None:
        if returned:
            async with self._tx("giving back reserved sends") as conn:
                await conn.execute(_UNCOUNT, _returns(returned))

    async def heartbeat(self, now: float) -> int:
        async with self._tx("saying this node is alive") as conn:
            await conn.execute(_HEARTBEAT, (self.node, now))
            prune = {
                "second": math.floor(now) - 120,
                "minute": math.floor(now / 60) - 24 * 60 - 2,
                "ended": now - ENDED_RETENTION,
            }
            for statement in _PRUNE:
                await conn.execute(statement, prune)
            cursor = await conn.execute(
                "SELECT count(*) FROM mqd_node WHERE seen_at > %s OR node = %s",
                (now - NODE_TIMEOUT, self.node),
            )
            row = await cursor.fetchone()
        return max(1, int(row[0]) if row else 1)

    async def leave(self) -> None:
        async with self._tx("saying this node stops") as conn:
            await conn.execute("DELETE FROM mqd_node WHERE node = %s", (self.node,))

    async def suppress(self, rows: Sequence[SuppressionRow], now: float) -> None:
        if not rows:
            return
        params = {
            "accounts": [r.account for r in rows],
            "addresses": [r.address for r in rows],
            "kinds": [r.kind for r in rows],
            "reasons": [r.reason for r in rows],
            "sinces": [r.since for r in rows],
            "untils": [r.until for r in rows],
            "now": now,
        }
        async with self._tx("adding to the suppression list") as conn:
            await conn.execute(_SUPPRESS, params)

    async def unsuppress(self, address: str, account: str | None, now: float) -> None:
        params = {"address": address, "account": account, "now": now}
        async with self._tx("removing from the suppression list") as conn:
            await conn.execute(_UNSUPPRESS, params)

    async def suppressions_since(self, version: int) -> tuple[list[SuppressionRow], int]:
        async with self._tx("reading the suppression list") as conn:
            # The horizon first: whatever commits after it has an id not below it.
            horizon = await (await conn.execute(_HORIZON)).fetchone()
            cursor = await conn.execute(_CHANGED, (str(version),))
            rows = await cursor.fetchall()
        items = [
            SuppressionRow(
                str(a), str(b), str(c), str(d), float(e), None if f is None else float(f)
            )
            for a, b, c, d, e, f in rows
        ]
        return items, int(str(horizon[0])) if horizon else version


def _returns(returned: Sequence[Returned]) -> dict[str, list[Any]]:
    return {
        "keys": [r.key for r in returned],
        "ats": [r.at for r in returned],
        "ns": [r.n for r in returned],
    }


def _wait(window: Window, first: Any, now: float) -> float:
    """Seconds until the oldest bucket of a full window leaves it."""
    if first is None:
        return 1.0
    if window.seconds <= 60:
        ends = float(first) + window.seconds
    else:
        ends = (float(first) + 1) * 60 + window.seconds
    return max(1.0, math.ceil(ends - now))
