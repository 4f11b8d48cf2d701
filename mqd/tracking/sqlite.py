"""``SQLiteStore``: the event store in one SQLite file, the default.

The file lives in the queue directory in WAL mode, so that readers (``mqd history``, another
worker) never block the daemon's writer. It is synchronous: the tracker calls it from one
writer thread, and ``mqd history`` opens it read-only for one command. What happens when the
file is damaged is ``mqd.tracking.sqlitefile``'s business, not this module's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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
from mqd.tracking.schema import META, VERSION_QUERY, upgrade
from mqd.tracking.sqliteactivity import read_activity
from mqd.tracking.vocabulary import ProviderEvent, Status

__all__ = ["ROWS_PER_STATEMENT", "SQLiteStore"]

#: At most this many rows go in one INSERT (and ids in one IN list), whatever SQLite allows.
#: Statements take a power of two of rows up to it (100 rows go as 64 + 32 + 4): sqlite3 keeps
#: the last 128 statements it prepared, by their text, and a statement for each batch size
#: would fill that cache with large ones and compile every new size anew (300 batches of 1-170
#: messages: 17 MB more memory and 2.5 s of CPU that way, 3 MB and 1.9 s this way).
ROWS_PER_STATEMENT = 64

# Column names and placeholders only: every value is bound.
_INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))}) {EVENT_KEEP}"
)
_SUMMARY_COLUMNS = (
    "id, message_id, sender, status, created_at, updated_at, subject, not_a_message, account"
)
_BAD = sorted(s.value for s in BAD)
_FINAL = sorted(s.value for s in FINAL)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SQLiteStore(EventStore):
    """The store in ``path``: created (with its directory) and brought to the current schema
    unless ``readonly``; ``readonly`` needs the file to exist (FileNotFoundError otherwise).

    Raises ``sqlite3.Error`` when the file cannot be opened or is not a database, and
    ``TrackingError`` when its schema is newer than this mqd's.
    """

    def __init__(self, path: Path, *, readonly: bool = False, timeout: float = 10.0) -> None:
        self.path = path
        self.readonly = readonly
        if readonly:
            if not path.exists():
                raise FileNotFoundError(path)
            uri = f"{path.resolve().as_uri()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=timeout)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=timeout)
        try:
            if readonly:
                self._db.execute(VERSION_QUERY).fetchone()  # a damaged file says so now
            else:
                self._prepare()
        except BaseException:
            self._db.close()
            raise
        self._db.row_factory = sqlite3.Row
        self._max_parameters = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)

    def _prepare(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL: a power loss may lose the last events, never corrupt
        # the file. The queue, not this store, is what guarantees the mail.
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._db:
            # IMMEDIATE: workers starting together create or upgrade the schema one at a time.
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(META)
            row = self._db.execute(VERSION_QUERY).fetchone()
            for statement in upgrade(None if row is None else str(row[0]), path=self.path):
                self._db.execute(statement)

    # -- writing ----------------------------------------------------------------------------------

    def record(self, records: Sequence[Record]) -> list[Record]:
        # Set-wise: a few statements for the whole batch (its events, then each message's row
        # and each recipient's row once, then the statuses), not several per event. SQLite runs
        # each statement without the GIL, so every statement also costs a hand-over of the GIL
        # to and from the event loop. Each row appears once in a statement, as PostgreSQL's
        # upsert requires. mqd's own events have no de-duplication key, so every one is new; a
        # provider's go in one by one, to learn which were new.
        with self._db:
            if all(record.event_key is None for record in records):
                self._insert("events", EVENT_COLUMNS, EVENT_KEEP, map(event_row, records))
                new = list(records)
            else:
                new = [record for record in records if self._insert_event(record)]
            if new:
                self._apply(new)
        return new

    def _insert_event(self, r: Record) -> bool:
        return bool(self._db.execute(_INSERT_EVENT, event_row(r)).rowcount == 1)

    def _apply(self, records: Sequence[Record]) -> None:
        """The messages' and the recipients' rows for new events: each row written once, as
        it would be after the events one by one."""
        folded = fold(records)
        self._insert("messages", MESSAGE_COLUMNS, MESSAGE_TOLD, folded.told())
        self._insert("messages", MESSAGE_COLUMNS, MESSAGE_UNTOLD, folded.untold())
        self._insert("recipients", QUEUED_COLUMNS, QUEUED_KEEP, folded.queued.values())
        self._insert("recipients", RECIPIENT_COLUMNS, RECIPIENT_UPSERT, folded.recipients.values())
        self._refresh_statuses({row.id: row.last_at for row in folded.messages.values()})

    def _refresh_statuses(self, touched: dict[str, float]) -> None:
        """Each touched message's status, from its recipients' and its last final event."""
        recipients: dict[str, list[Status]] = {}
        finals: dict[str, Status] = {}
        for chunk in chunks(list(touched), self._rows_of(1)):
            marks = _marks(len(chunk))
            for message, status in self._db.execute(
                f"SELECT message, status FROM recipients WHERE message IN ({marks})",  # noqa: S608
                chunk,
            ):
                recipients.setdefault(message, []).append(Status(status))
            for message, status in self._db.execute(
                f"SELECT message, status FROM events WHERE message IN ({marks}) "  # noqa: S608
                f"AND recipient IS NULL AND status IN ({_marks(len(_FINAL))}) ORDER BY seq",
                [*chunk, *_FINAL],
            ):
                finals[message] = Status(status)  # the last one stays
        rows = [
            (
                message,
                message_status(recipients.get(message, ()), finals.get(message)).value,
                at,
                at,
            )
            for message, at in touched.items()
            # Only "accepted" so far: the row's own status stands.
            if message in recipients or message in finals
        ]
        # Every row exists (_apply wrote it): the insert is only ever an update.
        self._insert("messages", STATUS_COLUMNS, STATUS_UPDATE, rows)

    def _insert(
        self,
        table: str,
        columns: Sequence[str],
        conflict: str,
        rows: Iterable[Sequence[Any]],
    ) -> None:
        """``INSERT`` the rows, as many to a statement as SQLite takes."""
        row_marks = f"({_marks(len(columns))})"
        for chunk in chunks(list(rows), self._rows_of(len(columns))):
            self._db.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608
                f"{', '.join([row_marks] * len(chunk))} {conflict}",
                [value for row in chunk for value in row],
            )

    def _rows_of(self, width: int) -> int:
        """How many rows of ``width`` values one statement may bind (a power of two)."""
        return 1 << (
            max(1, min(ROWS_PER_STATEMENT, self._max_parameters // width)).bit_length() - 1
        )

    def set_cursor(self, name: str, position: int) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO cursors (name, seq) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
                (name, position),
            )

    def prune(self, before: float) -> int:
        with self._db:
            gone = self._db.execute("DELETE FROM events WHERE at < ?", (before,)).rowcount
            self._db.execute(
                "DELETE FROM recipients WHERE message IN "
                "(SELECT id FROM messages WHERE updated_at < ?)",
                (before,),
            )
            self._db.execute("DELETE FROM messages WHERE updated_at < ?", (before,))
        return int(gone)

    # -- matching ---------------------------------------------------------------------------------

    def match(self, source: str, event: ProviderEvent) -> str | None:
        if event.mqd_id:
            row = self._db.execute(
                "SELECT id FROM messages WHERE id = ?", (event.mqd_id,)
            ).fetchone()
            if row:
                return str(row[0])
        if event.provider_id:
            args: tuple[str, ...] = (event.provider_id,)
            query = "SELECT message FROM recipients WHERE provider_id = ?"
            if event.recipient:
                query += " ORDER BY CASE WHEN address = ? THEN 0 ELSE 1 END"
                args += (event.recipient.lower(),)
            row = self._db.execute(query + " LIMIT 1", args).fetchone()
            if row:
                return str(row[0])
            # A message sent in several calls (SES: 50 recipients a call) has its ids joined
            # with commas.
            pid = event.provider_id.replace("%", "").replace("_", "")
            if pid == event.provider_id:
                row = self._db.execute(
                    "SELECT message FROM recipients WHERE provider_id LIKE ? "
                    "OR provider_id LIKE ? OR provider_id LIKE ? LIMIT 1",
                    (f"{pid},%", f"%,{pid}", f"%,{pid},%"),
                ).fetchone()
                if row:
                    return str(row[0])
        return None

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
            conditions.append(f"id IN ({_marks(len(ids))})")
            args += ids
        if message_ids:
            conditions.append(f"message_id IN ({_marks(len(message_ids))})")
            args += message_ids
        if sender is not None:
            conditions.append("LOWER(sender) = ?")
            args.append(sender.lower())
        if recipient is not None:
            conditions.append("id IN (SELECT message FROM recipients WHERE address = ?)")
            args.append(recipient.lower())
        if not conditions:
            return []
        return self._summaries(" OR ".join(conditions), args, limit)

    def recent_messages(
        self, *, status: Status | None = None, account: str | None = None, limit: int
    ) -> list[MessageSummary]:
        where, args = ["1 = 1"], []
        if status is not None:
            where.append("status = ?")
            args.append(status.value)
        if account is not None:
            where.append("account = ?")
            args.append(account)
        return self._summaries(" AND ".join(where), args, limit)

    def failed_messages(self, *, since: float | None = None, limit: int) -> list[MessageSummary]:
        marks = _marks(len(_BAD))
        where = (  # placeholders only: the statuses are bound as values
            f"(status IN ({marks}) OR id IN "  # noqa: S608
            f"(SELECT message FROM recipients WHERE status IN ({marks})))"
        )
        args: list[Any] = [*_BAD, *_BAD]
        if since is not None:
            where += " AND updated_at >= ?"
            args.append(since)
        return self._summaries(where, args, limit)

    def _summaries(self, where: str, args: list[Any], limit: int) -> list[MessageSummary]:
        # ``where`` is one of this class's conditions; values are always bound.
        rows = self._db.execute(
            f"SELECT {_SUMMARY_COLUMNS} FROM messages WHERE {where} "  # noqa: S608
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        result = []
        for row in rows:
            recipients = self._db.execute(
                "SELECT address, status, updated_at, relay, provider_id, reply FROM recipients "
                "WHERE message = ? ORDER BY address",
                (row["id"],),
            ).fetchall()
            result.append(
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
                    recipients=[
                        RecipientStatus(
                            address=r["address"],
                            status=Status(r["status"]),
                            updated_at=r["updated_at"],
                            relay=r["relay"],
                            provider_id=r["provider_id"],
                            reply=r["reply"],
                        )
                        for r in recipients
                    ],
                )
            )
        return result

    def events_of(self, message: str) -> list[TimelineEvent]:
        rows = self._db.execute(
            "SELECT * FROM events WHERE message = ? ORDER BY at, seq", (message,)
        ).fetchall()
        return sorted((TimelineEvent(**event_fields(row)) for row in rows), key=timeline_order)

    def events_after(self, position: int, limit: int) -> list[FeedEvent]:
        # One writer at a time: seq order is commit order, and the position is the seq. With
        # the message's Message-ID and sender: what an application correlates by.
        rows = self._db.execute(
            "SELECT events.*, messages.message_id AS message_id, messages.sender AS sender "
            "FROM events LEFT JOIN messages ON messages.id = events.message "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (position, limit),
        ).fetchall()
        return [
            FeedEvent(
                **event_fields(row),
                message_id=row["message_id"],
                sender=row["sender"],
                position=row["seq"],
            )
            for row in rows
        ]

    def last_position(self, back: int = 0) -> int:
        row = self._db.execute(
            "SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?", (back,)
        ).fetchone()
        return int(row[0]) if row else 0

    def lead(self, name: str) -> bool:
        return True  # one daemon's workers: the first one runs the notifier

    def cursor(self, name: str) -> int:
        row = self._db.execute("SELECT seq FROM cursors WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else -1

    def activity(self, window: Window) -> Activity:
        return read_activity(self._db, window)

    def close(self) -> None:
        self._db.close()
