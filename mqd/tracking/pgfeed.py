"""The PostgreSQL event store's feed: reading events in an order no later commit can break, and
the readers' cursors.

``seq`` comes from a sequence, and two nodes' transactions can commit in the other order than
they took their numbers: a reader that remembered the last ``seq`` it saw would skip the event
committed late with a lower one. Each event therefore records its transaction's id (``txid``,
``xid8``, ``pg_current_xact_id()``), and ``events_after`` reads, in (``txid``, ``seq``) order,
only the events below the *horizon* ``pg_snapshot_xmin(pg_current_snapshot())``, the oldest
transaction still running: every transaction below it has committed or rolled back, and every
one to come gets a larger id, so nothing can ever appear behind a position once read. The
horizon is taken in the same statement (the same snapshot) as the rows, so every event below
it is visible to the read. A position is the pair in one int (``txid << 64 | seq``); a cursor
keeps the pair in ``mqd_track_cursor``. See docs/scale-out.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from mqd.tracking.answers import FeedEvent, event_fields

__all__ = [
    "EVENT_FIELDS",
    "cursor",
    "events_after",
    "last_position",
    "position",
    "set_cursor",
    "split",
]

#: Below it, every transaction has ended: what is there now is there for good.
HORIZON = "pg_snapshot_xmin(pg_current_snapshot())"
EVENT_FIELDS = (
    "e.seq, e.message, e.recipient, e.status, e.at, e.source, e.relay, e.provider_id, "
    "e.reply, e.detail"
)
_LOW = (1 << 64) - 1


def position(txid: int, seq: int) -> int:
    """The feed position of the event ``seq`` written by the transaction ``txid``."""
    return (txid << 64) | seq


def split(at: int) -> tuple[int, int]:
    """A position's (txid, seq)."""
    at = max(at, 0)
    return at >> 64, at & _LOW


def events_after(conn: psycopg.Connection[Any], at: int, limit: int) -> list[FeedEvent]:
    """At most ``limit`` events after the position ``at``, below the horizon."""
    txid, seq = split(at)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {EVENT_FIELDS}, e.txid::text AS txid, m.message_id, m.sender "  # noqa: S608
            "FROM mqd_track_event e LEFT JOIN mqd_track_message m ON m.id = e.message "
            f"WHERE (e.txid, e.seq) > (%s::text::xid8, %s) AND e.txid < {HORIZON} "
            "ORDER BY e.txid, e.seq LIMIT %s".encode(),
            (str(txid), seq, limit),
        ).fetchall()
    return [
        FeedEvent(
            **event_fields(row),
            message_id=row["message_id"],
            sender=row["sender"],
            position=position(int(row["txid"]), int(row["seq"])),
        )
        for row in rows
    ]


def last_position(conn: psycopg.Connection[Any], back: int = 0) -> int:
    """The position ``back`` events before the newest one below the horizon (0: none)."""
    row = _one(
        conn,
        f"SELECT txid::text, seq FROM mqd_track_event WHERE txid < {HORIZON} "  # noqa: S608
        "ORDER BY txid DESC, seq DESC LIMIT 1 OFFSET %s",
        (back,),
    )
    return position(int(row[0]), int(row[1])) if row else 0


def cursor(conn: psycopg.Connection[Any], name: str) -> int:
    row = _one(conn, "SELECT txid::text, seq FROM mqd_track_cursor WHERE name = %s", (name,))
    return position(int(row[0]), int(row[1])) if row else -1


def set_cursor(conn: psycopg.Connection[Any], name: str, at: int) -> None:
    txid, seq = split(at)
    conn.execute(
        "INSERT INTO mqd_track_cursor (name, txid, seq) VALUES (%s, %s::text::xid8, %s) "
        "ON CONFLICT (name) DO UPDATE SET txid = excluded.txid, seq = excluded.seq",
        (name, str(txid), seq),
    )


def _one(conn: psycopg.Connection[Any], query: str, args: Sequence[Any]) -> tuple[Any, ...] | None:
    return conn.execute(query.encode(), args).fetchone()
