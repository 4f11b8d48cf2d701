"""What a lease holder writes: leases from the rows that took them, and an attempt's outcome
fenced on the token, with its bounce and its failed-folder copy, in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mqd.queue.entry import QueueEntry
from mqd.queue.postgresql import statements as q
from mqd.queue.postgresql.connect import Conn
from mqd.queue.postgresql.rows import delivered_json, entry_from, insert_entries, merge_delivered
from mqd.queue.store import Bounce, Lease, LeaseLost

__all__ = ["MAY_HAVE_GONE", "leases_from", "lost", "remember_delivered", "write_outcome"]

MAY_HAVE_GONE = (
    "taken over from a node that stopped while sending it: it may have gone out already, "
    "and goes out again (at least once)"
)
#: The same for an entry its own node gives back when it could not write the outcome.
UNSURE = (
    "its outcome could not be written after it was handed to a relay: it may have gone out "
    "already, and goes out again (at least once)"
)


def leases_from(rows: Sequence[tuple[Any, ...]], node: str) -> tuple[list[Lease], list[str]]:
    """The leases of ``q.LEASE``'s rows, oldest due first, and the ids among them taken over
    from a node that had marked them dispatching (they may have gone out)."""
    leases = []
    taken_over = []
    for entry_id, state, held, due, token, was_dispatching, delivered in rows:
        entry = entry_from(state, held, due)
        merge_delivered(entry, delivered)
        if was_dispatching:
            taken_over.append(entry_id)
        leases.append(Lease(entry, int(token), node))
    leases.sort(key=lambda lease: (lease.entry.next_attempt_at, lease.entry.id))
    return leases, taken_over


async def write_outcome(
    conn: Conn,
    statement: str,
    params: dict[str, object],
    now: float,
    *,
    bounce: Bounce | None,
    channel: str,
) -> bool:
    """Run the fenced ``statement`` (``q.SAVE`` or ``q.FAIL``: one statement
    each) and queue the bounce with it; False, having written nothing, when the lease is lost."""
    cursor = await conn.execute(statement, params)
    if await cursor.fetchone() is None:
        return False
    if bounce is not None:
        await insert_entries(conn, [(bounce.entry, bounce.body)], now)
        await conn.execute(q.NOTIFY, (channel,))
    return True


async def remember_delivered(conn: Conn, entry: QueueEntry) -> None:
    """Keep the recipients a holder delivered after it lost its lease: whoever holds the entry
    now never sends to them again."""
    rows = [{"id": entry.id, "address": a, "r": r} for a, r in delivered_json(entry)]
    async with conn.cursor() as cursor:
        await cursor.executemany(q.REMEMBER, rows)  # one pipeline


def lost(lease: Lease) -> LeaseLost:
    return LeaseLost(
        f"{lease.entry.id}: its lease was revoked or taken by another node (deleted meanwhile, "
        "or this node did not renew it in time)"
    )
