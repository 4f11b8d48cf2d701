"""The event store: messages, their recipients' current status and every event, in SQLite.

``EventStore`` is the interface the tracker uses; ``SQLiteStore`` is the default, a database in
the queue directory in WAL mode (readers such as ``mqd history`` never block the daemon's writer).
The SQL is kept portable (no SQLite-only functions, ``ON CONFLICT`` as PostgreSQL spells it) so
that a PostgreSQL store can follow with the same statements.

It is synchronous: the tracker calls it from one writer thread, and readers open their own
connection per call.
"""

from __future__ import annotations

import abc
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mqd.tracking.vocabulary import RANK, ProviderEvent, Status

__all__ = ["BAD", "EventStore", "Record", "SQLiteStore", "message_status"]

SCHEMA_VERSION = 1

T = TypeVar("T")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS messages (
        id TEXT PRIMARY KEY,
        message_id TEXT,
        sender TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS messages_message_id ON messages (message_id)",
    "CREATE INDEX IF NOT EXISTS messages_sender ON messages (sender)",
    "CREATE INDEX IF NOT EXISTS messages_updated_at ON messages (updated_at)",
    """CREATE TABLE IF NOT EXISTS recipients (
        message TEXT NOT NULL,
        address TEXT NOT NULL,
        status TEXT NOT NULL,
        rank INTEGER NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        relay TEXT,
        provider_id TEXT,
        reply TEXT,
        PRIMARY KEY (message, address)
    )""",
    "CREATE INDEX IF NOT EXISTS recipients_address ON recipients (address)",
    "CREATE INDEX IF NOT EXISTS recipients_provider_id ON recipients (provider_id)",
    # seq: INTEGER PRIMARY KEY is SQLite's rowid; PostgreSQL spells it BIGSERIAL.
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY,
        message TEXT NOT NULL,
        recipient TEXT,
        status TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        source TEXT NOT NULL,
        relay TEXT,
        provider_id TEXT,
        reply TEXT,
        detail TEXT NOT NULL DEFAULT '{}',
        event_key TEXT UNIQUE
    )""",
    "CREATE INDEX IF NOT EXISTS events_message ON events (message, seq)",
    "CREATE INDEX IF NOT EXISTS events_at ON events (at)",
    """CREATE TABLE IF NOT EXISTS cursors (
        name TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS meta (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
)

#: Statuses that mean something went wrong for a recipient or the message: they are what a
#: message shows (rather than its slowest recipient's progress) and what ``failures`` lists.
BAD = frozenset({Status.BOUNCED, Status.DROPPED, Status.COMPLAINED, Status.FAILED, Status.REJECTED})
#: Message-level statuses that end the story whatever the recipients say.
_FINAL = frozenset({Status.REJECTED, Status.FAILED, Status.DELETED})


@dataclass(frozen=True)
class Record:
    """One event to record: mqd's own (``source="mqd"``) or a provider's, already matched."""

    message: str
    status: Status
    at: float
    source: str = "mqd"
    recipient: str | None = None
    relay: str | None = None
    provider_id: str | None = None
    reply: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    #: De-duplication key (a provider's event id); None for mqd's own events.
    event_key: str | None = None
    # What the first events of a message carry about it.
    sender: str | None = None
    message_id: str | None = None
    recipients: tuple[str, ...] = ()


def message_status(recipients: Iterable[Status], final: Status | None) -> Status:
    """What a message shows: a final message-level status; else a recipient's bad status (the
    worst); else its slowest recipient's progress."""
    if final is not None:
        return final
    statuses = list(recipients)
    if not statuses:
        return Status.ACCEPTED
    bad = [s for s in statuses if s in BAD]
    if bad:
        return max(bad, key=RANK.__getitem__)
    return min(statuses, key=RANK.__getitem__)


class EventStore(abc.ABC):
    """What the tracker needs of a store. Every method may be called from a worker thread."""

    @abc.abstractmethod
    def record(self, records: Sequence[Record]) -> list[Record]:
        """Record ``records`` in one transaction; return those that were new (not duplicates)."""

    @abc.abstractmethod
    def match(self, source: str, event: ProviderEvent) -> str | None:
        """The mqd id a provider's event belongs to, or None."""

    @abc.abstractmethod
    def messages(self, where: str, args: Sequence[Any], limit: int) -> list[dict[str, Any]]:
        """Message summaries (see ``summary``), newest first."""

    @abc.abstractmethod
    def events_of(self, message: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def events_after(self, seq: int, limit: int) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def cursor(self, name: str) -> int: ...

    @abc.abstractmethod
    def set_cursor(self, name: str, seq: int) -> None: ...

    @abc.abstractmethod
    def prune(self, before: float) -> int:
        """Delete events older than ``before`` and messages with nothing newer; return how
        many events went."""

    @abc.abstractmethod
    def close(self) -> None: ...


#: At most this many rows go in one INSERT (and ids in one IN list), whatever SQLite allows.
#: Statements take a power of two of rows up to it (100 rows go as 64 + 32 + 4): sqlite3 keeps
#: the last 128 statements it prepared, by their text, and a statement for each batch size
#: would fill that cache with large ones and compile every new size anew (300 batches of 1-170
#: messages: 17 MB more memory and 2.5 s of CPU that way, 3 MB and 1.9 s this way).
ROWS_PER_STATEMENT = 64

_EVENT_COLUMNS = (
    "message",
    "recipient",
    "status",
    "at",
    "source",
    "relay",
    "provider_id",
    "reply",
    "detail",
    "event_key",
)
_MESSAGE_COLUMNS = ("id", "message_id", "sender", "status", "created_at", "updated_at")
_QUEUED_COLUMNS = ("message", "address", "status", "rank", "updated_at")
_RECIPIENT_COLUMNS = (*_QUEUED_COLUMNS, "relay", "provider_id", "reply")

_INSERT_EVENT = (
    "INSERT INTO events (message, recipient, status, at, source, relay, provider_id, reply, "
    "detail, event_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_key) DO NOTHING"
)
# A message's row: what its first event says, then its sender and Message-ID once known.
_MESSAGE_UNTOLD = (
    "ON CONFLICT (id) DO UPDATE SET message_id = COALESCE(excluded.message_id, messages.message_id)"
)
_MESSAGE_TOLD = _MESSAGE_UNTOLD + ", sender = excluded.sender"
_STATUS_UPDATE = (
    "ON CONFLICT (id) DO UPDATE SET status = excluded.status, updated_at = CASE WHEN "
    "excluded.updated_at > messages.updated_at THEN excluded.updated_at "
    "ELSE messages.updated_at END"
)
_RECIPIENT_UPSERT = (
    "ON CONFLICT (message, address) DO UPDATE SET "
    # A late or reordered event never moves the status backwards.
    "status = CASE WHEN excluded.rank >= recipients.rank THEN excluded.status "
    "ELSE recipients.status END, "
    "rank = CASE WHEN excluded.rank >= recipients.rank THEN excluded.rank "
    "ELSE recipients.rank END, "
    "updated_at = CASE WHEN excluded.updated_at > recipients.updated_at "
    "THEN excluded.updated_at ELSE recipients.updated_at END, "
    "relay = COALESCE(excluded.relay, recipients.relay), "
    "provider_id = COALESCE(excluded.provider_id, recipients.provider_id), "
    "reply = COALESCE(excluded.reply, recipients.reply)"
)


#: One encoder for every event's detail (``json.dumps`` with options builds one per call).
_detail_json = json.JSONEncoder(separators=(",", ":"), default=str).encode


def _event_row(r: Record) -> tuple[Any, ...]:
    return (
        r.message,
        r.recipient,
        r.status.value,
        r.at,
        r.source,
        r.relay,
        r.provider_id,
        r.reply,
        _detail_json(r.detail) if r.detail else "{}",
        r.event_key,
    )


def _chunks(items: list[T], most: int) -> Iterator[list[T]]:
    """``items`` in slices of powers of two (``most`` is one), the largest first."""
    start = 0
    while start < len(items):
        size = min(most, 1 << ((len(items) - start).bit_length() - 1))
        yield items[start : start + size]
        start += size


@dataclass(slots=True)
class _MessageRow:
    """A message's row after a batch's events: as its first event made it, with the sender
    and the Message-ID the last events that told them said."""

    id: str
    status: str
    created_at: float
    message_id: str | None
    sender: str | None
    last_at: float

    @classmethod
    def of(cls, r: Record) -> _MessageRow:
        return cls(r.message, r.status.value, r.at, r.message_id or None, r.sender, r.at)

    def then(self, r: Record) -> _MessageRow:
        self.message_id = r.message_id or self.message_id
        self.sender = self.sender if r.sender is None else r.sender
        self.last_at = max(self.last_at, r.at)
        return self

    def values(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.message_id,
            self.sender or "",
            self.status,
            self.created_at,
            self.created_at,
        )


def _recipient_then(
    row: tuple[Any, ...] | None, key: tuple[str, str], r: Record
) -> tuple[Any, ...]:
    """A recipient's row values after ``r``, by the rules of ``_RECIPIENT_UPSERT``: folding a
    batch's events into one row, then upserting it, ends where upserting each would."""
    rank = RANK[r.status]
    if row is None:
        return (*key, r.status.value, rank, r.at, r.relay, r.provider_id, r.reply)
    _, _, status, best, at, relay, provider_id, reply = row
    if rank >= best:
        status, best = r.status.value, rank
    return (
        *key,
        status,
        best,
        max(at, r.at),
        relay if r.relay is None else r.relay,
        provider_id if r.provider_id is None else r.provider_id,
        reply if r.reply is None else r.reply,
    )


class SQLiteStore(EventStore):
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        if readonly:
            if not path.exists():
                raise FileNotFoundError(path)
            uri = f"{path.resolve().as_uri()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=10)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=NORMAL: a power loss may lose the last events, never corrupt
            # the file. The queue, not this store, is what guarantees the mail.
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._db:
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO meta (name, value) VALUES ('schema', ?) ON CONFLICT (name) "
                    "DO NOTHING",
                    (str(SCHEMA_VERSION),),
                )
        self._db.row_factory = sqlite3.Row
        self._max_parameters = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)

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
                self._insert(
                    "events",
                    _EVENT_COLUMNS,
                    "ON CONFLICT (event_key) DO NOTHING",
                    map(_event_row, records),
                )
                new = list(records)
            else:
                new = [record for record in records if self._insert_event(record)]
            if new:
                self._apply(new)
        return new

    def _insert_event(self, r: Record) -> bool:
        return self._db.execute(_INSERT_EVENT, _event_row(r)).rowcount == 1

    def _apply(self, records: Sequence[Record]) -> None:
        """The messages' and the recipients' rows for new events: each row written once, as
        it would be after the events one by one."""
        messages: dict[str, _MessageRow] = {}
        queued: dict[tuple[str, str], tuple[Any, ...]] = {}
        recipients: dict[tuple[str, str], tuple[Any, ...]] = {}
        for r in records:
            row = messages.get(r.message)
            messages[r.message] = row.then(r) if row else _MessageRow.of(r)
            for address in r.recipients:
                key = (r.message, address.lower())
                queued.setdefault(key, (*key, r.status.value, RANK[r.status], r.at))
            if r.recipient is not None:
                key = (r.message, r.recipient.lower())
                recipients[key] = _recipient_then(recipients.get(key), key, r)
        told = [row for row in messages.values() if row.sender is not None]
        untold = [row for row in messages.values() if row.sender is None]
        self._insert("messages", _MESSAGE_COLUMNS, _MESSAGE_TOLD, map(_MessageRow.values, told))
        self._insert("messages", _MESSAGE_COLUMNS, _MESSAGE_UNTOLD, map(_MessageRow.values, untold))
        self._insert(
            "recipients",
            _QUEUED_COLUMNS,
            "ON CONFLICT (message, address) DO NOTHING",
            queued.values(),
        )
        self._insert("recipients", _RECIPIENT_COLUMNS, _RECIPIENT_UPSERT, recipients.values())
        self._refresh_statuses({row.id: row.last_at for row in messages.values()})

    def _refresh_statuses(self, touched: dict[str, float]) -> None:
        """Each touched message's status, from its recipients' and its last final event."""
        recipients: dict[str, list[Status]] = {}
        finals: dict[str, Status] = {}
        for chunk in _chunks(list(touched), self._rows_of(1)):
            marks = ", ".join("?" * len(chunk))
            for message, status in self._db.execute(
                f"SELECT message, status FROM recipients WHERE message IN ({marks})",  # noqa: S608
                chunk,
            ):
                recipients.setdefault(message, []).append(Status(status))
            for message, status in self._db.execute(
                f"SELECT message, status FROM events WHERE message IN ({marks}) "  # noqa: S608
                "AND recipient IS NULL AND status IN ('rejected', 'failed', 'deleted') "
                "ORDER BY seq",
                chunk,
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
        self._insert("messages", ("id", "status", "created_at", "updated_at"), _STATUS_UPDATE, rows)

    def _insert(
        self,
        table: str,
        columns: Sequence[str],
        conflict: str,
        rows: Iterable[Sequence[Any]],
    ) -> None:
        """``INSERT`` the rows, as many to a statement as SQLite takes."""
        row_marks = "(" + ", ".join("?" * len(columns)) + ")"
        for chunk in _chunks(list(rows), self._rows_of(len(columns))):
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

    def set_cursor(self, name: str, seq: int) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO cursors (name, seq) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
                (name, seq),
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
        return gone

    # -- reading ----------------------------------------------------------------------------------

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

    def messages(self, where: str, args: Sequence[Any], limit: int) -> list[dict[str, Any]]:
        # ``where`` is one of queries.py's constant conditions; values are always bound.
        rows = self._db.execute(
            "SELECT id, message_id, sender, status, created_at, updated_at FROM messages "  # noqa: S608
            f"WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?",
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
                {
                    "id": row["id"],
                    "message_id": row["message_id"],
                    "sender": row["sender"],
                    "status": row["status"],
                    "created_at": row["created_at"],
                    "updated_at": row["updated_at"],
                    "recipients": [dict(r) for r in recipients],
                }
            )
        return result

    def events_of(self, message: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM events WHERE message = ? ORDER BY at, seq", (message,)
        ).fetchall()
        return sorted((_event(row) for row in rows), key=_timeline_order)

    def events_after(self, seq: int, limit: int) -> list[dict[str, Any]]:
        # With the message's Message-ID and sender: what an application correlates by.
        rows = self._db.execute(
            "SELECT events.*, messages.message_id AS message_id, messages.sender AS sender "
            "FROM events LEFT JOIN messages ON messages.id = events.message "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        ).fetchall()
        return [_event(row) for row in rows]

    def last_seq(self) -> int:
        row = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def cursor(self, name: str) -> int:
        row = self._db.execute("SELECT seq FROM cursors WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else -1

    def close(self) -> None:
        self._db.close()


def _timeline_order(event: dict[str, Any]) -> tuple[int, bool, float, int]:
    """In the order things happened. Providers give whole seconds, so within one second mqd's
    own events (which caused the provider's) come first."""
    at = float(event["at"])
    return (int(at), event["source"] != "mqd", at, int(event["seq"]))


def _event(row: sqlite3.Row) -> dict[str, Any]:
    event = {key: row[key] for key in row.keys() if key != "event_key"}  # noqa: SIM118
    event["detail"] = json.loads(event["detail"] or "{}")
    return event


@contextmanager
def reading(path: Path) -> Iterator[SQLiteStore]:
    """A read-only store for one query (``mqd history``, the API), closed after it."""
    with closing(SQLiteStore(path, readonly=True)) as store:
        yield store
