"""Entries to rows and back, and the statements that insert them.

An entry's row keeps its state as JSON (``QueueEntry.to_json``) plus the columns the schedule
and the counts need. ``held`` and ``next_attempt_at`` are the columns' to say (an administrator
changes them while a node may hold the entry); the rest is the JSON's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mqd.queue.entry import QueueEntry, RcptStatus
from mqd.queue.postgresql.arrays import bool_array, number_array, text_array
from mqd.queue.postgresql.connect import Conn
from mqd.queue.store import EntryState, Listed

__all__ = [
    "LISTED",
    "delivered_json",
    "entry_from",
    "insert_entries",
    "is_leased",
    "listed_from",
    "merge_delivered",
]

#: The columns ``listed_from`` reads, in order.
LISTED = "id, state::text, held, next_attempt_at, owner, lease_expires"

#: Idempotent on the id: an id accepted lately (``mqd_accepted``) is never queued again, even
#: when it was delivered and removed meanwhile.
#: The states and bodies go in binary (``%b``): psycopg's text form of a bytea[] or jsonb[]
#: array escapes every byte, ten to twenty times the cost (most of intake's CPU on this store);
#: the other columns as text built by ``arrays`` (psycopg adapts a list element by element).
#: An entry's relays come from its state: its route, or its one relay.
_INSERT = """
WITH batch AS (
    SELECT * FROM unnest(
        %(ids)s::text[], %(created)s::float8[], %(due)s::float8[], %(held)s::bool[],
        %(attempts)s::int4[], %(sizes)s::int8[], %(states)b::jsonb[], %(bodies)b::bytea[]
    ) AS b(id, created_at, next_attempt_at, held, attempts, size, state, body)
),
fresh AS (
    INSERT INTO mqd_accepted (id, accepted_at)
    SELECT id, %(now)s FROM batch
    ON CONFLICT (id) DO NOTHING
    RETURNING id
),
bodies AS (
    INSERT INTO mqd_body (id, body)
    SELECT b.id, b.body FROM batch b JOIN fresh USING (id)
    ON CONFLICT (id) DO NOTHING
)
INSERT INTO mqd_entry (
    id, created_at, next_attempt_at, send_at, held, attempts, size, relays, state
)
SELECT b.id, b.created_at, b.next_attempt_at, (b.state ->> 'send_at')::float8, b.held,
    b.attempts, b.size,
    ARRAY(SELECT jsonb_array_elements_text(CASE WHEN jsonb_array_length(b.state -> 'route') > 0
        THEN b.state -> 'route' ELSE jsonb_build_array(b.state -> 'relay') END)),
    b.state
FROM batch b JOIN fresh USING (id)
ON CONFLICT (id) DO NOTHING
"""


async def insert_entries(conn: Conn, items: Sequence[tuple[QueueEntry, bytes]], now: float) -> None:
    """Queue ``items`` (entry, body) in one statement, in ``conn``'s transaction."""
    if not items:
        return
    entries = [entry for entry, _ in items]
    await conn.execute(
        _INSERT,
        {
            "ids": text_array(e.id for e in entries),
            "created": number_array(e.created_at for e in entries),
            "due": number_array(e.next_attempt_at for e in entries),
            "held": bool_array(e.held for e in entries),
            "attempts": number_array(e.attempts for e in entries),
            "sizes": number_array(e.size for e in entries),
            "states": [e.to_json().decode() for e in entries],
            "bodies": [body for _, body in items],
            "now": now,
        },
    )


def entry_from(state: str, held: bool, next_attempt_at: float) -> QueueEntry:
    entry = QueueEntry.from_json(state.encode())
    entry.held = held
    entry.next_attempt_at = next_attempt_at
    return entry


def merge_delivered(entry: QueueEntry, delivered: str | None) -> None:
    """Mark delivered the recipients a holder that lost its lease delivered (JSON list of
    recipients): they are never sent to again."""
    if not delivered:
        return
    done: dict[str, dict[str, Any]] = {r["address"]: r for r in json.loads(delivered)}
    for recipient in entry.recipients:
        record = done.get(recipient.address)
        if record is not None and recipient.status is RcptStatus.PENDING:
            recipient.status = RcptStatus.DELIVERED
            recipient.reply = record.get("reply")
            recipient.status_code = record.get("status_code")
            recipient.remote = record.get("remote")
            recipient.relay = record.get("relay")


def delivered_json(entry: QueueEntry) -> list[tuple[str, str]]:
    """(address, recipient as JSON) of each delivered recipient of ``entry``."""
    return [
        (
            r.address,
            json.dumps(
                {
                    "address": r.address,
                    "reply": r.reply,
                    "status_code": r.status_code,
                    "remote": r.remote,
                    "relay": r.relay,
                }
            ),
        )
        for r in entry.recipients
        if r.status is RcptStatus.DELIVERED
    ]


def is_leased(owner: str | None, expires: float | None, now: float) -> bool:
    return owner is not None and expires is not None and expires >= now


def listed_from(row: tuple[Any, ...], now: float) -> Listed:
    """A ``LISTED`` row as administration sees it."""
    _id, state, held, due, owner, expires = row
    entry = entry_from(state, held, due)
    if is_leased(owner, expires, now):
        return Listed(entry, EntryState.ACTIVE, owner)
    if held:
        return Listed(entry, EntryState.HELD)
    if entry.attempts:
        return Listed(entry, EntryState.DEFERRED)
    return Listed(entry, EntryState.SCHEDULED if entry.scheduled(now) else EntryState.WAITING)
