"""The queue stores the contract suite (tests/test_queue_contract.py) runs against: memory,
file and PostgreSQL.

A ``StoreKit`` makes a store on fresh durable state, and the same store "after a crash": a new
store on the same durable state while the old one is abandoned without ``close`` (its leases and
in-memory state die with it). A third store joins the suite by adding its kit to ``KITS``.
"""

from __future__ import annotations

import abc
from pathlib import Path

from pgfixtures import PgSchema

from mqd.clock import ManualClock
from mqd.message.envelope import parse_message
from mqd.queue.entry import QueueEntry, RecipientState, new_message_id
from mqd.queue.failed import FailureRecord
from mqd.queue.file.rebuild import Unread
from mqd.queue.file.store import FileStore
from mqd.queue.memory import MemoryDisk, MemoryStore
from mqd.queue.postgresql.connect import Database
from mqd.queue.postgresql.store import PostgresStore
from mqd.queue.store import QueueStore

__all__ = ["KITS", "StoreKit", "body_for", "new_entry"]


def body_for(entry: QueueEntry) -> bytes:
    """A message whose envelope lines state ``entry``'s (so a store can rebuild it)."""
    lines = [f"X-Sender: {entry.sender}"] + [f"X-Receiver: {r.address}" for r in entry.recipients]
    lines += [f"From: {entry.sender}", "Subject: contract", "", "Hello."]
    return ("\r\n".join(lines) + "\r\n").encode()


def new_entry(
    clock: ManualClock, *, sender: str = "app@example.com", relays: tuple[str, ...] = ("r1",)
) -> QueueEntry:
    now = clock.time()
    entry = QueueEntry(
        id=new_message_id(),
        sender=sender,
        recipients=[RecipientState("alice@example.net"), RecipientState("bob@example.net")],
        relay=relays[0],
        route=list(relays) if len(relays) > 1 else [],
        source="spoolkey",
        created_at=now,
        next_attempt_at=now,
    )
    entry.size = len(body_for(entry))
    return entry


def rebuild(unread: Unread) -> QueueEntry | FailureRecord:
    """What intake does for the file store after a restart, reduced to the envelope lines."""
    try:
        parsed = parse_message(unread.body)
    except Exception as exc:
        return FailureRecord("intake", str(exc))
    return QueueEntry(
        id=unread.entry_id,
        sender=parsed.sender,
        recipients=[RecipientState(a) for a in parsed.recipients],
        relay="r1",
        source=unread.source,
        created_at=0.0,
        next_attempt_at=0.0,
        size=len(unread.body),
    )


class StoreKit(abc.ABC):
    name: str

    def __init__(self, root: Path, clock: ManualClock) -> None:
        self.root = root
        self.clock = clock

    @abc.abstractmethod
    def make(self) -> QueueStore:
        """A store on this kit's durable state (fresh the first time)."""

    @abc.abstractmethod
    def abandon(self, store: QueueStore) -> None:
        """What a crash does to ``store``: gone, without a word (its lock is let go)."""

    def other(self) -> QueueStore | None:
        """Another node on the same durable state, for a store shared by nodes (None: a store
        one process holds, whose leases end with it)."""
        return None

    def close(self) -> None:  # noqa: B027 (most kits have nothing to remove)
        """Remove this kit's durable state (a database's schema), when the test ends."""


class MemoryKit(StoreKit):
    name = "memory"

    def __init__(self, root: Path, clock: ManualClock) -> None:
        super().__init__(root, clock)
        self.disk = MemoryDisk()

    def make(self) -> QueueStore:
        return MemoryStore(self.disk, clock=self.clock)

    def abandon(self, store: QueueStore) -> None:
        self.disk.holder = None


class FileKit(StoreKit):
    name = "file"

    def make(self) -> QueueStore:
        return FileStore(self.root / "queue", rebuild=rebuild, clock=self.clock)

    def abandon(self, store: QueueStore) -> None:
        assert isinstance(store, FileStore)
        if store._reader is not None:
            store._reader.cancel()
        store.layout.unlock()


class PostgresKit(StoreKit):
    """A schema of its own on the test server (tests/pgfixtures.py); every store made here is
    the same node, as a daemon restarted on one machine is."""

    name = "postgresql"

    def __init__(self, root: Path, clock: ManualClock) -> None:
        super().__init__(root, clock)
        self.schema = PgSchema()

    def make(self, node: str = "node-1") -> PostgresStore:
        return PostgresStore(Database(self.schema.dsn), node=node, clock=self.clock, pool_size=4)

    def abandon(self, store: QueueStore) -> None:
        assert isinstance(store, PostgresStore)
        store.abandon()

    def other(self) -> QueueStore:
        return self.make(node="node-2")

    def close(self) -> None:
        self.schema.drop()


KITS: dict[str, type[StoreKit]] = {
    "memory": MemoryKit,
    "file": FileKit,
    "postgresql": PostgresKit,
}
