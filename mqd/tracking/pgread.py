"""The PostgreSQL event store's reads of more than one statement: matching a provider's event to
a message, and messages' summaries with their recipients (two statements, not one a message:
the database is across a network)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from mqd.tracking.answers import MessageSummary, RecipientStatus
from mqd.tracking.vocabulary import ProviderEvent, Status

__all__ = ["match", "summaries"]

_MESSAGES = "mqd_track_message"
_RECIPIENTS = "mqd_track_recipient"
_SUMMARY_COLUMNS = (
    "id, message_id, sender, status, created_at, updated_at, subject, not_a_message, account"
)


def match(conn: psycopg.Connection[Any], event: ProviderEvent) -> str | None:
    """The mqd id ``event`` belongs to (by its ``mqd_id``, else its ``provider_id``), or None."""
    if event.mqd_id:
        row = _one(conn, f"SELECT id FROM {_MESSAGES} WHERE id = %s", (event.mqd_id,))  # noqa: S608
        if row:
            return str(row[0])
    if event.provider_id:
        args: tuple[str, ...] = (event.provider_id,)
        query = f"SELECT message FROM {_RECIPIENTS} WHERE provider_id = %s"  # noqa: S608
        if event.recipient:
            query += " ORDER BY CASE WHEN address = %s THEN 0 ELSE 1 END"
            args += (event.recipient.lower(),)
        row = _one(conn, query + " LIMIT 1", args)
        if row:
            return str(row[0])
        # A message sent in several calls (SES: 50 recipients a call) has its ids joined.
        pid = event.provider_id.replace("%", "").replace("_", "")
        if pid == event.provider_id:
            row = _one(
                conn,
                f"SELECT message FROM {_RECIPIENTS} WHERE provider_id LIKE %s "  # noqa: S608
                "OR provider_id LIKE %s OR provider_id LIKE %s LIMIT 1",
                (f"{pid},%", f"%,{pid}", f"%,{pid},%"),
            )
            if row:
                return str(row[0])
    return None


def summaries(
    conn: psycopg.Connection[Any], where: str, args: list[Any], limit: int
) -> list[MessageSummary]:
    """Summaries of the messages ``where`` (a condition of the store's, its values bound from
    ``args``) says, newest first."""
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            f"SELECT {_SUMMARY_COLUMNS} FROM {_MESSAGES} WHERE {where} "  # noqa: S608
            "ORDER BY created_at DESC, id DESC LIMIT %s".encode(),
            (*args, limit),
        ).fetchall()
        found: dict[str, list[RecipientStatus]] = {row["id"]: [] for row in rows}
        for r in cursor.execute(
            "SELECT message, address, status, updated_at, relay, provider_id, reply "  # noqa: S608
            f"FROM {_RECIPIENTS} WHERE message = ANY(%s) ORDER BY message, address",
            (list(found),),
        ):
            found[r["message"]].append(
                RecipientStatus(
                    address=r["address"],
                    status=Status(r["status"]),
                    updated_at=r["updated_at"],
                    relay=r["relay"],
                    provider_id=r["provider_id"],
                    reply=r["reply"],
                )
            )
    return [
        MessageSummary(
            id=row["id"],
            message_id=row["message_id"],
            sender=row["sender"],
            subject=row["subject"],
            not_a_message=row["not_a_message"],
            account=row["account"],
            status=Status(row["status"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            recipients=found[row["id"]],
        )
        for row in rows
    ]


def _one(conn: psycopg.Connection[Any], query: str, args: Any) -> tuple[Any, ...] | None:
    return conn.execute(query.encode(), args).fetchone()
