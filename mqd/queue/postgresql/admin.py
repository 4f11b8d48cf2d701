"""The administrator's operations on the PostgreSQL queue: list, find, hold, release, retry,
delete and count, each in the caller's transaction.

A hold or a deletion of an entry another node holds applies there at its next fenced write: a
hold sets the row's ``held`` (the holder's save keeps it: the column is the store's to say), a
retry asks (``retry_asked``, applied by the save), a deletion removes the row (the holder's
writes then find no row: LeaseLost). An entry being dispatched under a live lease cannot be
deleted (EntryBusy); under a lease that expired (its node died) it can.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from mqd.queue.entry import QueueEntry
from mqd.queue.postgresql.connect import Conn
from mqd.queue.postgresql.rows import LISTED, entry_from, is_leased, listed_from
from mqd.queue.schedule import ambiguous, unknown
from mqd.queue.store import EntryBusy, EntryState, Listed, QueueCounts

__all__ = [
    "counts",
    "delete",
    "entries",
    "find",
    "get",
    "hold",
    "lock_for_lease",
    "retry",
    "unhold",
    "with_redispatched",
]


async def entries(conn: Conn, now: float) -> list[Listed]:
    cursor = await conn.execute(
        f"SELECT {LISTED} FROM mqd_entry ORDER BY created_at, id".encode()  # noqa: S608
    )
    return [listed_from(row, now) for row in await cursor.fetchall()]


async def find(conn: Conn, wanted: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for given in wanted:
        if not given:
            continue
        cursor = await conn.execute(
            "SELECT id FROM mqd_entry WHERE id = %(g)s "
            "UNION ALL (SELECT id FROM mqd_entry WHERE left(id, length(%(g)s)) = %(g)s "
            "AND id <> %(g)s ORDER BY id LIMIT 2)",
            {"g": given},
        )
        ids = [row[0] for row in await cursor.fetchall()]
        if given in ids:
            found[given] = given
        elif len(ids) > 1:
            count = await conn.execute(
                "SELECT count(*) FROM mqd_entry WHERE left(id, length(%(g)s)) = %(g)s",
                {"g": given},
            )
            row = await count.fetchone()
            raise ambiguous(given, int(row[0]) if row else len(ids))
        elif ids:
            found[given] = ids[0]
    return found


async def get(conn: Conn, entry_id: str, now: float) -> Listed:
    cursor = await conn.execute(
        f"SELECT {LISTED} FROM mqd_entry WHERE id = %s".encode(),  # noqa: S608
        (entry_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        raise unknown(entry_id)
    return listed_from(row, now)


async def _existing(conn: Conn, ids: Sequence[str]) -> list[str]:
    """``ids`` without repeats, locked; UnknownEntry for the first one not queued."""
    wanted = list(dict.fromkeys(ids))
    cursor = await conn.execute("SELECT id FROM mqd_entry WHERE id = ANY(%s) FOR UPDATE", (wanted,))
    present = {row[0] for row in await cursor.fetchall()}
    for entry_id in wanted:
        if entry_id not in present:
            raise unknown(entry_id)
    return wanted


async def lock_for_lease(conn: Conn, ids: Sequence[str], now: float) -> None:
    """Lock ``ids`` for ``lease_ids``: UnknownEntry for one not queued, EntryBusy for one
    leased by any node."""
    wanted = list(dict.fromkeys(ids))
    cursor = await conn.execute(
        "SELECT id, owner, lease_expires FROM mqd_entry WHERE id = ANY(%s) FOR UPDATE", (wanted,)
    )
    rows = {row[0]: row for row in await cursor.fetchall()}
    for entry_id in wanted:
        row = rows.get(entry_id)
        if row is None:
            raise unknown(entry_id)
        if is_leased(row[1], row[2], now):
            raise EntryBusy(
                f"{entry_id} is being delivered right now (by node {row[1]}); try again in a "
                "moment (or 'mqd queue hold' it first)"
            )


async def hold(conn: Conn, ids: Sequence[str]) -> list[str]:
    wanted = await _existing(conn, ids)
    await conn.execute(
        "UPDATE mqd_entry SET held = true, "
        "state = jsonb_set(state, '{held}', 'true') WHERE id = ANY(%s) AND NOT held",
        (wanted,),
    )
    return wanted


async def unhold(conn: Conn, ids: Sequence[str] | None, now: float) -> list[str]:
    if ids is not None:
        await _existing(conn, ids)
    cursor = await conn.execute(
        "UPDATE mqd_entry SET held = false, next_attempt_at = CASE "
        "    WHEN attempts = 0 AND send_at IS NOT NULL THEN greatest(send_at, %(now)s) "
        "    ELSE %(now)s END, "
        "state = jsonb_set(state, '{held}', 'false') "
        "WHERE held AND (%(all)s OR id = ANY(%(ids)s)) RETURNING id, created_at",
        {"now": now, "all": ids is None, "ids": list(ids or ())},
    )
    return _ordered(await cursor.fetchall(), ids)


async def retry(conn: Conn, ids: Sequence[str] | None, relay: str | None, now: float) -> list[str]:
    """Make entries due now; a leased one when its holder saves it. Held ones stay held."""
    if ids is not None:
        await _existing(conn, ids)
    wanted = list(ids) if ids is not None else None
    cursor = await conn.execute(_RETRY, {"now": now, "ids": wanted, "relay": relay})
    return _ordered(await cursor.fetchall(), ids)


#: A leased entry is retried when its holder saves it (``retry_asked``). Everything (no ids) is
#: everything that waits to be tried again, but not a message for later: that keeps its time
#: unless it is named (then it goes now, and its lifetime counts from now).
_RETRY = """
WITH chosen AS (
    SELECT id, owner IS NOT NULL AND lease_expires >= %(now)s AS leased,
        send_at IS NOT NULL AND send_at > %(now)s AS later
    FROM mqd_entry
    WHERE NOT held
    AND (%(relay)s::text IS NULL OR %(relay)s = ANY(relays))
    AND CASE WHEN %(ids)s::text[] IS NULL
        THEN NOT (attempts = 0 AND send_at IS NOT NULL AND send_at > %(now)s)
        ELSE id = ANY(%(ids)s::text[]) END
)
UPDATE mqd_entry e
SET retry_asked = chosen.leased,
    next_attempt_at = CASE WHEN chosen.leased THEN e.next_attempt_at
        ELSE least(e.next_attempt_at, %(now)s) END,
    send_at = CASE WHEN chosen.later AND NOT chosen.leased THEN %(now)s ELSE e.send_at END,
    state = CASE WHEN chosen.later AND NOT chosen.leased
        THEN jsonb_set(e.state, '{send_at}', to_jsonb(%(now)s::float8)) ELSE e.state END
FROM chosen
WHERE e.id = chosen.id
RETURNING e.id, e.created_at
"""


def _ordered(rows: Sequence[tuple[str, float]], ids: Sequence[str] | None) -> list[str]:
    """The ids of ``rows`` in the order given, or oldest first when none was given."""
    if ids is not None:
        done = {row[0] for row in rows}
        return [entry_id for entry_id in dict.fromkeys(ids) if entry_id in done]
    return [row[0] for row in sorted(rows, key=lambda row: (row[1], row[0]))]


async def delete(conn: Conn, ids: Sequence[str], now: float) -> list[QueueEntry]:
    """Remove entries; EntryBusy, removing none, when one is being dispatched under a live
    lease. A lease on a removed entry is revoked (its holder's writes find no row)."""
    wanted = list(dict.fromkeys(ids))
    cursor = await conn.execute(
        "SELECT id, state::text, held, next_attempt_at, owner, lease_expires, dispatching "
        "FROM mqd_entry WHERE id = ANY(%s) FOR UPDATE",
        (wanted,),
    )
    rows = {row[0]: row for row in await cursor.fetchall()}
    for entry_id in wanted:
        if entry_id not in rows:
            raise unknown(entry_id)
    busy = [i for i in wanted if rows[i][6] and is_leased(rows[i][4], rows[i][5], now)]
    if busy:
        raise EntryBusy(
            f"cannot delete {', '.join(busy)}: being delivered right now; try again in a "
            "moment (or 'mqd queue hold' it first)"
        )
    await conn.execute("DELETE FROM mqd_entry WHERE id = ANY(%s)", (wanted,))
    await conn.execute("DELETE FROM mqd_body WHERE id = ANY(%s)", (wanted,))
    return [entry_from(rows[i][1], rows[i][2], rows[i][3]) for i in wanted]


_COUNTS = """
SELECT
    count(*) FILTER (WHERE leased),
    count(*) FILTER (WHERE NOT leased AND held),
    count(*) FILTER (WHERE NOT leased AND NOT held AND attempts > 0),
    count(*) FILTER (WHERE NOT leased AND NOT held AND attempts = 0 AND NOT later),
    count(*) FILTER (WHERE NOT leased AND NOT held AND attempts = 0 AND later),
    coalesce(sum(size), 0),
    min(created_at),
    min(created_at) FILTER (WHERE NOT held AND (leased OR attempts > 0 OR NOT later)),
    count(*) FILTER (WHERE NOT leased AND NOT held AND next_attempt_at <= %(now)s)
FROM (
    SELECT *, (owner IS NOT NULL AND lease_expires >= %(now)s) AS leased,
        (send_at IS NOT NULL AND send_at > %(now)s) AS later
    FROM mqd_entry
) e
"""
_BY_RELAY = "SELECT r, count(*) FROM mqd_entry, unnest(relays) AS r GROUP BY r"


async def counts(conn: Conn, now: float) -> QueueCounts:
    """The queue in numbers: two queries sent together (pipeline mode)."""
    async with conn.pipeline():
        totals = await conn.execute(_COUNTS, {"now": now})
        relays = await conn.execute(_BY_RELAY)
    row = await totals.fetchone()
    assert row is not None  # an aggregate always has a row
    active, held, deferred, waiting, later, size, oldest, unheld, due = row
    by_state = {
        EntryState.ACTIVE: int(active),
        EntryState.HELD: int(held),
        EntryState.DEFERRED: int(deferred),
        EntryState.WAITING: int(waiting),
        EntryState.SCHEDULED: int(later),
    }
    return QueueCounts(
        by_state,
        int(size),
        oldest,
        unheld,
        {name: int(n) for name, n in await relays.fetchall()},
        due=int(due),
    )


def with_redispatched(counts: QueueCounts, redispatched: int) -> QueueCounts:
    return dataclasses.replace(counts, redispatched=redispatched)
