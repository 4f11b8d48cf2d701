"""``PostgresEventStore``: the event store in the queue's PostgreSQL database, shared by every
node of a fleet, so that history, the API, the web view and the notifications read it from any.

Its tables (``mqd_track_*``) come with the queue's schema (``mqd db upgrade``, version 2 in
``mqd.queue.postgresql.schema``); a store refuses a database whose schema this mqd does not
know. It runs the same upserts as the SQLite store (``mqd.tracking.batch``), a batch in one
transaction, and is as synchronous: the tracker calls it from its writer thread.

The feed (``events_after``, the cursors) is ``mqd.tracking.pgfeed``'s: it is read in an order
that events committed out of ``seq`` order between nodes cannot break.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg.errors import DeadlockDetected, SerializationFailure, UndefinedTable
from psycopg.rows import dict_row

from mqd.queue.postgresql.connect import Database
from mqd.queue.postgresql.schema import SchemaStatus
from mqd.tracking import pgfeed as feed
from mqd.tracking.activity import Activity, Window
from mqd.tracking.answers import (
    FeedEvent,
    MessageSummary,
    RecipientStatus,
    TimelineEvent,
    event_fields,
    timeline_order,
)
from mqd.tracking.batch import (
    EVENT_COLUMNS,
    EVENT_KEEP,
    MESSAGE_COLUMNS,
    MESSAGE_TOLD,
    MESSAGE_UNTOLD,
    QUEUED_COLUMNS,
    QUEUED_KEEP,
    RECIPIENT_COLUMNS,
    RECIPIENT_UPSERT,
    STATUS_COLUMNS,
    STATUS_UPDATE,
    chunks,
    event_row,
    fold,
)
from mqd.tracking.eventstore import EventStore
from mqd.tracking.records import BAD, FINAL, Record, message_status
from mqd.tracking.sqliteactivity import collect, statements
from mqd.tracking.vocabulary import ProviderEvent, Status

__all__ = ["PostgresEventStore", "schema_version"]

ROWS_PER_STATEMENT = 64
#: A batch that met another node's in a deadlock (PostgreSQL aborted it) is tried again.
TRIES = 3

_EVENTS = "mqd_track_event"
_MESSAGES = "mqd_track_message"
_RECIPIENTS = "mqd_track_recipient"
# The upserts of mqd.tracking.batch name the tables as SQLite's store does: aliases here.
_ALIAS = {_EVENTS: "events", _MESSAGES: "messages", _RECIPIENTS: "recipients"}
_SUMMARY_COLUMNS = (
    "id, message_id, sender, status, created_at, updated_at, subject, not_a_message, account"
)
_BAD = sorted(s.value for s in BAD)
_FINAL = sorted(s.value for s in FINAL)
_ACTIVITY = statements(
    events=_EVENTS,
    messages=_MESSAGES,
    mark=lambda name: f"%({name})s",
    bucket="FLOOR(({at} - {start}) / {step})::bigint",
)


class PostgresEventStore(EventStore):
    """The store on ``conn`` (autocommit: each batch takes a transaction of its own)."""

    def __init__(self, conn: psycopg.Connection[Any], *, where: str = "") -> None:
        self._conn = conn
        self.where = where
        self._leading: set[str] = set()

    @classmethod
    def connect(cls, database: Database, *, readonly: bool = False) -> PostgresEventStore:
        """A store on a connection of its own. Raises psycopg's errors when the database cannot
        be reached, and ``QueueSchemaError`` when its schema is not this mqd's."""
        conn = psycopg.connect(database.dsn, autocommit=True, **database.kwargs())
        try:
            if readonly:
                conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            schema_version(conn).require()
        except BaseException:
            conn.close()
            raise
        return cls(conn, where=database.shown)

    # -- writing ----------------------------------------------------------------------------------

    def record(self, records: Sequence[Record]) -> list[Record]:
        for attempt in range(1, TRIES + 1):
            try:
                with self._conn.transaction():
                    return self._record(records)
            except (DeadlockDetected, SerializationFailure):
                if attempt == TRIES:
                    raise
        raise AssertionError("unreachable")

    def _record(self, records: Sequence[Record]) -> list[Record]:
        if all(record.event_key is None for record in records):
            self._insert(_EVENTS, EVENT_COLUMNS, EVENT_KEEP, map(event_row, records))
            new = list(records)
        else:
            new = [record for record in records if self._insert_event(record)]
        if new:
            self._apply(new)
        return new

    def _insert_event(self, r: Record) -> bool:
        cursor = self._conn.execute(
            _insert_sql(_EVENTS, EVENT_COLUMNS, EVENT_KEEP, 1), event_row(r)
        )
        return cursor.rowcount == 1

    def _apply(self, records: Sequence[Record]) -> None:
        folded = fold(records)
        # In key order, so that two nodes' batches touching the same rows lock them in the same
        # order (a deadlock is still possible across statements: the batch is tried again).
        self._insert(_MESSAGES, MESSAGE_COLUMNS, MESSAGE_TOLD, sorted(folded.told()))
        self._insert(_MESSAGES, MESSAGE_COLUMNS, MESSAGE_UNTOLD, sorted(folded.untold()))
        self._insert(_RECIPIENTS, QUEUED_COLUMNS, QUEUED_KEEP, _by_key(folded.queued))
        self._insert(_RECIPIENTS, RECIPIENT_COLUMNS, RECIPIENT_UPSERT, _by_key(folded.recipients))
        touched = {row.id: row.last_at for row in folded.messages.values()}
        ids = sorted(touched)
        recipients: dict[str, list[Status]] = {}
        finals: dict[str, Status] = {}
        for message, status in self._conn.execute(
            f"SELECT message, status FROM {_RECIPIENTS} WHERE message = ANY(%s)",  # noqa: S608
            (ids,),
        ):
            recipients.setdefault(message, []).append(Status(status))
        for message, status in self._conn.execute(
            f"SELECT message, status FROM {_EVENTS} WHERE message = ANY(%s) "  # noqa: S608
            "AND recipient IS NULL AND status = ANY(%s) ORDER BY seq",
            (ids, _FINAL),
        ):
            finals[message] = Status(status)  # the last one stays
        rows = [
            (
                message,
                message_status(recipients.get(message, ()), finals.get(message)).value,
                at,
                at,
            )
            for message, at in sorted(touched.items())
            if message in recipients or message in finals
        ]
        self._insert(_MESSAGES, STATUS_COLUMNS, STATUS_UPDATE, rows)

    def _insert(
        self, table: str, columns: Sequence[str], conflict: str, rows: Iterable[Sequence[Any]]
    ) -> None:
        for chunk in chunks(list(rows), ROWS_PER_STATEMENT):
            self._conn.execute(
                _insert_sql(table, columns, conflict, len(chunk)),
                [value for row in chunk for value in row],
            )

    def set_cursor(self, name: str, position: int) -> None:
        feed.set_cursor(self._conn, name, position)

    def prune(self, before: float) -> int:
        with self._conn.transaction():
            gone = self._conn.execute(
                f"DELETE FROM {_EVENTS} WHERE at < %s",  # noqa: S608
                (before,),
            ).rowcount
            self._conn.execute(
                f"DELETE FROM {_RECIPIENTS} WHERE message IN "  # noqa: S608
                f"(SELECT id FROM {_MESSAGES} WHERE updated_at < %s)",
                (before,),
            )
            self._conn.execute(
                f"DELETE FROM {_MESSAGES} WHERE updated_at < %s",  # noqa: S608
                (before,),
            )
        return int(gone)

    # -- matching ---------------------------------------------------------------------------------

    def match(self, source: str, event: ProviderEvent) -> str | None:
        if event.mqd_id:
            row = self._one(f"SELECT id FROM {_MESSAGES} WHERE id = %s", (event.mqd_id,))  # noqa: S608
            if row:
                return str(row[0])
        if event.provider_id:
            args: tuple[str, ...] = (event.provider_id,)
            query = f"SELECT message FROM {_RECIPIENTS} WHERE provider_id = %s"  # noqa: S608
            if event.recipient:
                query += " ORDER BY CASE WHEN address = %s THEN 0 ELSE 1 END"
                args += (event.recipient.lower(),)
            row = self._one(query + " LIMIT 1", args)
            if row:
                return str(row[0])
            # A message sent in several calls (SES: 50 recipients a call) has its ids joined.
            pid = event.provider_id.replace("%", "").replace("_", "")
            if pid == event.provider_id:
                row = self._one(
                    f"SELECT message FROM {_RECIPIENTS} WHERE provider_id LIKE %s "  # noqa: S608
                    "OR provider_id LIKE %s OR provider_id LIKE %s LIMIT 1",
                    (f"{pid},%", f"%,{pid}", f"%,{pid},%"),
                )
                if row:
                    return str(row[0])
        return None

    def _one(self, query: str, args: Sequence[Any]) -> tuple[Any, ...] | None:
        return self._conn.execute(query.encode(), args).fetchone()

    # -- reading ----------------------------------------------------------------------------------

    def find_messages(
        self,
        *,
        ids: Sequence[str] = (),
        message_ids: Sequence[str] = (),
        sender: str | None = None,
        recipient: str | None = None,
        limit: int,
    ) -> list[MessageSummary]:
        conditions: list[str] = []
        args: list[Any] = []
        if ids:
            conditions.append("id = ANY(%s)")
            args.append(list(ids))
        if message_ids:
            conditions.append("message_id = ANY(%s)")
            args.append(list(message_ids))
        if sender is not None:
            conditions.append("lower(sender) = %s")
            args.append(sender.lower())
        if recipient is not None:
            conditions.append(f"id IN (SELECT message FROM {_RECIPIENTS} WHERE address = %s)")  # noqa: S608
            args.append(recipient.lower())
        if not conditions:
            return []
        return self._summaries(" OR ".join(conditions), args, limit)

    def recent_messages(
        self, *, status: Status | None = None, account: str | None = None, limit: int
    ) -> list[MessageSummary]:
        where, args = ["true"], []
        if status is not None:
            where.append("status = %s")
            args.append(status.value)
        if account is not None:
            where.append("account = %s")
            args.append(account)
        return self._summaries(" AND ".join(where), args, limit)

    def failed_messages(self, *, since: float | None = None, limit: int) -> list[MessageSummary]:
        where = (
            f"(status = ANY(%s) OR id IN (SELECT message FROM {_RECIPIENTS} "  # noqa: S608
            "WHERE status = ANY(%s)))"
        )
        args: list[Any] = [_BAD, _BAD]
        if since is not None:
            where += " AND updated_at >= %s"
            args.append(since)
        return self._summaries(where, args, limit)

    def _summaries(self, where: str, args: list[Any], limit: int) -> list[MessageSummary]:
        # ``where`` is one of this class's conditions; values are always bound.
        with self._conn.cursor(row_factory=dict_row) as cursor:
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

    def events_of(self, message: str) -> list[TimelineEvent]:
        with self._conn.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(
                f"SELECT {feed.EVENT_FIELDS} FROM {_EVENTS} e WHERE message = %s "  # noqa: S608
                "ORDER BY at, seq".encode(),
                (message,),
            ).fetchall()
        return sorted((TimelineEvent(**event_fields(row)) for row in rows), key=timeline_order)

    def events_after(self, position: int, limit: int) -> list[FeedEvent]:
        return feed.events_after(self._conn, position, limit)

    def last_position(self, back: int = 0) -> int:
        return feed.last_position(self._conn, back)

    def cursor(self, name: str) -> int:
        return feed.cursor(self._conn, name)

    def lead(self, name: str) -> bool:
        # A session lock: held while this connection lives, so that a node that dies or loses
        # the database hands the cursor on (its notifications resume from the cursor).
        if name not in self._leading:
            row = self._one(
                "SELECT pg_try_advisory_lock(hashtextextended("
                "'mqd-cursor:' || current_schema() || ':' || %s, 0))",
                (name,),
            )
            if row and row[0]:
                self._leading.add(name)
        return name in self._leading

    def activity(self, window: Window) -> Activity:
        params = {"start": window.start, "end": window.end, "step": window.step}
        return collect(
            window, _ACTIVITY, lambda query: self._conn.execute(query.encode(), params).fetchall()
        )

    def close(self) -> None:
        self._conn.close()


def schema_version(conn: psycopg.Connection[Any]) -> SchemaStatus:
    """The schema version of the database ``conn`` is on."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT value FROM mqd_meta WHERE key = 'schema_version'").fetchone()
    except UndefinedTable:
        return SchemaStatus(0)
    return SchemaStatus(int(str(row[0])) if row is not None else 0)


def _by_key(rows: dict[tuple[str, str], tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [rows[key] for key in sorted(rows)]


def _insert_sql(table: str, columns: Sequence[str], conflict: str, n: int) -> bytes:
    """``INSERT`` of ``n`` rows (column names and placeholders only: every value is bound)."""
    marks = "(" + ", ".join(["%s"] * len(columns)) + ")"
    return (
        f"INSERT INTO {table} AS {_ALIAS[table]} ({', '.join(columns)}) VALUES "  # noqa: S608
        f"{', '.join([marks] * n)} {conflict}"
    ).encode()
