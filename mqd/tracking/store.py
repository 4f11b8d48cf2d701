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
from typing import Any

from .vocabulary import RANK, ProviderEvent, Status

__all__ = ["BAD", "EventStore", "Record", "SQLiteStore", "message_status"]

SCHEMA_VERSION = 1

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


_INSERT_EVENT = (
    "INSERT INTO events (message, recipient, status, at, source, relay, provider_id, reply, "
    "detail, event_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_key) DO NOTHING"
)


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
        json.dumps(r.detail, separators=(",", ":"), default=str),
        r.event_key,
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

    # -- writing ----------------------------------------------------------------------------------

    def record(self, records: Sequence[Record]) -> list[Record]:
        # A batch is most of a message's story (claimed, queued, delivered within the tracker's
        # flush delay), so its message row is written once per batch and its status worked out
        # once per batch: 9 statements for a message delivered at once, not 12.
        new: list[Record] = []
        touched: dict[str, float] = {}
        # mqd's own events have no de-duplication key, so every one is new: they go in with one
        # executemany (the daemon's batches), a provider's one by one, to learn which were new.
        own = all(record.event_key is None for record in records)
        with self._db:
            if own:
                self._db.executemany(_INSERT_EVENT, map(_event_row, records))
            for record in records:
                if not own and not self._insert_event(record):
                    continue
                new.append(record)
                self._apply(record, first=record.message not in touched)
                touched[record.message] = max(record.at, touched.get(record.message, 0.0))
            for message, at in touched.items():
                self._refresh_status(message, at)
        return new

    def _insert_event(self, r: Record) -> bool:
        return self._db.execute(_INSERT_EVENT, _event_row(r)).rowcount == 1

    def _apply(self, r: Record, *, first: bool) -> None:
        """The message's and the recipients' rows for one new event. ``first``: the batch's
        first event of this message (its row may not exist yet; after it, it does)."""
        db = self._db
        if r.sender is not None or r.message_id:
            db.execute(
                "INSERT INTO messages (id, message_id, sender, status, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "sender = COALESCE(?, messages.sender), "
                "message_id = COALESCE(?, messages.message_id)",
                (
                    r.message,
                    r.message_id or None,
                    r.sender or "",
                    r.status.value,
                    r.at,
                    r.at,
                    r.sender,
                    r.message_id or None,
                ),
            )
        elif first:
            db.execute(
                "INSERT INTO messages (id, message_id, sender, status, created_at, updated_at) "
                "VALUES (?, NULL, '', ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (r.message, r.status.value, r.at, r.at),
            )
        for address in r.recipients:
            db.execute(
                "INSERT INTO recipients (message, address, status, rank, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (message, address) DO NOTHING",
                (r.message, address.lower(), r.status.value, RANK[r.status], r.at),
            )
        if r.recipient is None:
            return
        address = r.recipient.lower()
        rank = RANK[r.status]
        db.execute(
            "INSERT INTO recipients (message, address, status, rank, updated_at, relay, "
            "provider_id, reply) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
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
            "reply = COALESCE(excluded.reply, recipients.reply)",
            (r.message, address, r.status.value, rank, r.at, r.relay, r.provider_id, r.reply),
        )

    def _refresh_status(self, message: str, at: float) -> None:
        # The recipients' statuses and the message's last final event in one query: the final
        # event, if any, is the row with final = 1.
        rows = self._db.execute(
            "SELECT status, 0 AS final FROM recipients WHERE message = ? "
            "UNION ALL SELECT * FROM (SELECT status, 1 AS final FROM events WHERE message = ? "
            "AND recipient IS NULL AND status IN ('rejected', 'failed', 'deleted') "
            "ORDER BY seq DESC LIMIT 1) AS last_final",
            (message, message),
        ).fetchall()
        recipients = [Status(row[0]) for row in rows if not row[1]]
        final = next((Status(row[0]) for row in rows if row[1]), None)
        if final is None and not recipients:
            return  # only "accepted" so far: the row's own status stands
        status = message_status(recipients, final)
        self._db.execute(
            "UPDATE messages SET status = ?, updated_at = CASE WHEN ? > updated_at THEN ? "
            "ELSE updated_at END WHERE id = ?",
            (status.value, at, at, message),
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
