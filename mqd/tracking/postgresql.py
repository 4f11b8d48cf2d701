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

import functools
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
from psycopg.errors import DeadlockDetected, SerializationFailure, UndefinedTable
from psycopg.rows import dict_row

from mqd.queue.postgresql.connect import Database
from mqd.queue.postgresql.schema import SchemaStatus
from mqd.tracking import pgfeed as feed
from mqd.tracking import pgread as read
from mqd.tracking.activity import Activity, Window
from mqd.tracking.answers import (
    FeedEvent,
    MessageSummary,
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
    event_row,
    fold,
)
from mqd.tracking.eventstore import CommitInDoubt, EventStore
from mqd.tracking.pgwrite import insert_rows
from mqd.tracking.records import BAD, FINAL, Record, message_status
from mqd.tracking.sqliteactivity import collect, statements
from mqd.tracking.vocabulary import ProviderEvent, Status

__all__ = ["PostgresEventStore", "schema_version"]

P = ParamSpec("P")
T = TypeVar("T")

#: A batch that met another node's in a deadlock (PostgreSQL aborted it) is tried again.
TRIES = 3

#: A batch's transaction id, and index lookups for its statements: each reads or upserts rows by
#: their key, but on a table whose statistics are missing or stale (a new one growing fast, before
#: autovacuum's first analyze) the planner chose to read the whole table, at each batch, a cost
#: that grew with the table (most of the server's CPU for tracking in benchmarks/fleet.py).
_BEGIN_BATCH = "SELECT pg_current_xact_id()::text, set_config('enable_seqscan', 'off', true)"

_EVENTS = "mqd_track_event"
_MESSAGES = "mqd_track_message"
_RECIPIENTS = "mqd_track_recipient"
# The upserts of mqd.tracking.batch name the tables as SQLite's store does: aliases here.
_ALIAS = {_EVENTS: "events", _MESSAGES: "messages", _RECIPIENTS: "recipients"}
_BAD = sorted(s.value for s in BAD)
_FINAL = sorted(s.value for s in FINAL)
_ACTIVITY = statements(
    events=_EVENTS,
    messages=_MESSAGES,
    mark=lambda name: f"%({name})s",
    bucket="FLOOR(({at} - {start}) / {step})::bigint",
)


def _healing(
    method: Callable[Concatenate[PostgresEventStore, P], T],
) -> Callable[Concatenate[PostgresEventStore, P], T]:
    """``method`` once more on a new connection when the store's was lost (the server restarted,
    a failover, an idle connection cut): before the call, or during it when nothing can have
    been committed (a batch's commit that failed is not tried again: it may have gone
    through)."""

    def run(self: PostgresEventStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        self._heal()
        try:
            return method(self, *args, **kwargs)
        except psycopg.OperationalError:
            committing, self._committing = self._committing, False
            if committing or self._reopen is None or not self._conn.broken:
                raise
            self._heal()
            return method(self, *args, **kwargs)

    return run


class PostgresEventStore(EventStore):
    """The store on ``conn`` (autocommit: each batch takes a transaction of its own); with
    ``reopen``, a lost connection is replaced by ``reopen()`` (see ``_healing``)."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        where: str = "",
        reopen: Callable[[], psycopg.Connection[Any]] | None = None,
    ) -> None:
        self._conn = conn
        self.where = where
        self._reopen = reopen
        self._leading: set[str] = set()
        self._committing = False

    @classmethod
    def connect(cls, database: Database, *, readonly: bool = False) -> PostgresEventStore:
        """A store on a connection of its own. Raises psycopg's errors when the database cannot
        be reached, and ``QueueSchemaError`` when its schema is not this mqd's."""
        return cls(
            _connect(database, readonly),
            where=database.shown,
            reopen=functools.partial(_connect, database, readonly),
        )

    def _heal(self) -> None:
        if self._reopen is not None and (self._conn.broken or self._conn.closed):
            self._conn.close()
            self._leading.clear()  # the session's locks went with it
            self._conn = self._reopen()

    # -- writing ----------------------------------------------------------------------------------

    @_healing
    def record(self, records: Sequence[Record]) -> list[Record]:
        for attempt in range(1, TRIES + 1):
            try:
                return self._record_once(records)
            except (DeadlockDetected, SerializationFailure):
                if attempt == TRIES:
                    raise
        raise AssertionError("unreachable")

    def _record_once(self, records: Sequence[Record]) -> list[Record]:
        """One transaction; its id is taken first, so that a commit that fails on a lost
        connection can be asked about (``committed``) rather than written twice."""
        txid = ""
        try:
            with self._conn.transaction():
                row = self._one(_BEGIN_BATCH, ())
                txid = str(row[0]) if row else ""
                new = self._record(records)
                self._committing = True
        except psycopg.OperationalError as exc:
            committing, self._committing = self._committing, False
            if committing and txid:
                raise CommitInDoubt(txid, str(exc).strip() or type(exc).__name__) from exc
            raise
        self._committing = False
        return new

    @_healing
    def committed(self, token: object) -> bool | None:
        row = self._one("SELECT pg_xact_status(%s::text::xid8)", (str(token),))
        status = row[0] if row else None
        if status == "in progress":
            return None
        return status == "committed"

    def _record(self, records: Sequence[Record]) -> list[Record]:
        if all(record.event_key is None for record in records):
            self._insert(_EVENTS, EVENT_COLUMNS, EVENT_KEEP, [event_row(r) for r in records])
            new = list(records)
        else:
            new = [record for record in records if self._insert_event(record)]
        if new:
            self._apply(new)
        return new

    def _insert_event(self, r: Record) -> bool:
        return self._insert(_EVENTS, EVENT_COLUMNS, EVENT_KEEP, [event_row(r)]) == 1

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
        self, table: str, columns: Sequence[str], conflict: str, rows: Sequence[Sequence[Any]]
    ) -> int:
        return insert_rows(self._conn, table, _ALIAS[table], columns, conflict, rows)

    @_healing
    def set_cursor(self, name: str, position: int) -> None:
        feed.set_cursor(self._conn, name, position)

    @_healing
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

    def _one(self, query: str, args: Sequence[Any]) -> tuple[Any, ...] | None:
        return self._conn.execute(query.encode(), args).fetchone()

    # -- reading ----------------------------------------------------------------------------------

    @_healing
    def match(self, source: str, event: ProviderEvent) -> str | None:
        return read.match(self._conn, event)

    @_healing
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
        return read.summaries(self._conn, " OR ".join(conditions), args, limit)

    @_healing
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
        return read.summaries(self._conn, " AND ".join(where), args, limit)

    @_healing
    def failed_messages(self, *, since: float | None = None, limit: int) -> list[MessageSummary]:
        where = (
            f"(status = ANY(%s) OR id IN (SELECT message FROM {_RECIPIENTS} "  # noqa: S608
            "WHERE status = ANY(%s)))"
        )
        args: list[Any] = [_BAD, _BAD]
        if since is not None:
            where += " AND updated_at >= %s"
            args.append(since)
        return read.summaries(self._conn, where, args, limit)

    @_healing
    def events_of(self, message: str) -> list[TimelineEvent]:
        with self._conn.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(
                f"SELECT {feed.EVENT_FIELDS} FROM {_EVENTS} e WHERE message = %s "  # noqa: S608
                "ORDER BY at, seq".encode(),
                (message,),
            ).fetchall()
        return sorted((TimelineEvent(**event_fields(row)) for row in rows), key=timeline_order)

    @_healing
    def events_after(self, position: int, limit: int) -> list[FeedEvent]:
        return feed.events_after(self._conn, position, limit)

    @_healing
    def last_position(self, back: int = 0) -> int:
        return feed.last_position(self._conn, back)

    @_healing
    def cursor(self, name: str) -> int:
        return feed.cursor(self._conn, name)

    @_healing
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

    @_healing
    def activity(self, window: Window) -> Activity:
        params = {"start": window.start, "end": window.end, "step": window.step}
        return collect(
            window, _ACTIVITY, lambda query: self._conn.execute(query.encode(), params).fetchall()
        )

    def close(self) -> None:
        self._conn.close()


def _connect(database: Database, readonly: bool) -> psycopg.Connection[Any]:
    conn = psycopg.connect(database.dsn, autocommit=True, **database.kwargs())
    try:
        if readonly:
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        schema_version(conn).require()
    except BaseException:
        conn.close()
        raise
    return conn


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
