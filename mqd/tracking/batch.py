"""What a batch of records writes: each event's row, and the row each message and recipient ends
with, folded as recording the events one by one would leave it; with the portable SQL
(``ON CONFLICT`` upserts, as SQLite and PostgreSQL both spell them) that writes them.

Writing a batch set-wise (a few statements for the whole batch, each row once) rather than
several statements per event is what keeps the tracker cheap; folding must therefore end where
the upserts applied event by event would (tests/test_tracking_batches.py checks it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mqd.tracking.records import Record
from mqd.tracking.vocabulary import RANK

__all__ = [
    "EVENT_COLUMNS",
    "EVENT_KEEP",
    "MESSAGE_COLUMNS",
    "MESSAGE_TOLD",
    "MESSAGE_UNTOLD",
    "QUEUED_COLUMNS",
    "QUEUED_KEEP",
    "RECIPIENT_COLUMNS",
    "RECIPIENT_UPSERT",
    "STATUS_COLUMNS",
    "STATUS_UPDATE",
    "Folded",
    "MessageRow",
    "chunks",
    "event_row",
    "fold",
]

T = TypeVar("T")

EVENT_COLUMNS = (
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
#: A provider's event seen before (by its key) is not recorded again.
EVENT_KEEP = "ON CONFLICT (event_key) DO NOTHING"
MESSAGE_COLUMNS = (
    "id",
    "message_id",
    "sender",
    "status",
    "created_at",
    "updated_at",
    "subject",
    "not_a_message",
    "account",
)
QUEUED_COLUMNS = ("message", "address", "status", "rank", "updated_at")
RECIPIENT_COLUMNS = (*QUEUED_COLUMNS, "relay", "provider_id", "reply")
STATUS_COLUMNS = ("id", "status", "created_at", "updated_at")

# A message's row: what its first event says, then its sender and Message-ID once known.
_MESSAGE_SET = (
    "ON CONFLICT (id) DO UPDATE SET message_id = COALESCE(excluded.message_id, messages.message_id)"
    ", subject = COALESCE(excluded.subject, messages.subject)"
    ", not_a_message = COALESCE(excluded.not_a_message, messages.not_a_message)"
    ", account = COALESCE(excluded.account, messages.account)"
)
# An event that tells nothing new (most: a delivery's) leaves the row alone: an update that
# changes nothing is still a new row version, and its indexes' entries, on PostgreSQL.
_TELLS = (
    "excluded.message_id IS NOT NULL OR excluded.subject IS NOT NULL"
    " OR excluded.not_a_message IS NOT NULL OR excluded.account IS NOT NULL"
)
MESSAGE_UNTOLD = f"{_MESSAGE_SET} WHERE {_TELLS}"
MESSAGE_TOLD = (
    f"{_MESSAGE_SET}, sender = excluded.sender WHERE {_TELLS} OR excluded.sender <> messages.sender"
)
STATUS_UPDATE = (
    "ON CONFLICT (id) DO UPDATE SET status = excluded.status, updated_at = CASE WHEN "
    "excluded.updated_at > messages.updated_at THEN excluded.updated_at "
    "ELSE messages.updated_at END"
)
#: A recipient named when queued: a row if it has none yet.
QUEUED_KEEP = "ON CONFLICT (message, address) DO NOTHING"
RECIPIENT_UPSERT = (
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


def event_row(r: Record) -> tuple[Any, ...]:
    """``r`` as the values of ``EVENT_COLUMNS``."""
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


def chunks(items: list[T], most: int) -> Iterator[list[T]]:
    """``items`` in slices of powers of two (``most`` is one), the largest first."""
    start = 0
    while start < len(items):
        size = min(most, 1 << ((len(items) - start).bit_length() - 1))
        yield items[start : start + size]
        start += size


@dataclass(slots=True)
class MessageRow:
    """A message's row after a batch's events: as its first event made it, with the sender
    and the Message-ID the last events that told them said."""

    id: str
    status: str
    created_at: float
    message_id: str | None
    sender: str | None
    last_at: float
    subject: str | None = None
    not_a_message: str | None = None
    account: str | None = None

    @classmethod
    def of(cls, r: Record) -> MessageRow:
        return cls(
            r.message,
            r.status.value,
            r.at,
            r.message_id or None,
            r.sender,
            r.at,
            r.subject or None,
            r.not_a_message,
            r.account,
        )

    def then(self, r: Record) -> MessageRow:
        self.message_id = r.message_id or self.message_id
        self.subject = r.subject or self.subject
        self.not_a_message = r.not_a_message or self.not_a_message
        self.account = r.account or self.account
        self.sender = self.sender if r.sender is None else r.sender
        self.last_at = max(self.last_at, r.at)
        return self

    def values(self) -> tuple[Any, ...]:
        """The values of ``MESSAGE_COLUMNS``."""
        return (
            self.id,
            self.message_id,
            self.sender or "",
            self.status,
            self.created_at,
            self.created_at,
            self.subject,
            self.not_a_message,
            self.account,
        )


def _recipient_then(
    row: tuple[Any, ...] | None, key: tuple[str, str], r: Record
) -> tuple[Any, ...]:
    """A recipient's row values after ``r``, by the rules of ``RECIPIENT_UPSERT``: folding a
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


@dataclass
class Folded:
    """The rows new events write, each once: ``messages`` by id; ``queued`` (the recipients a
    message was queued for, ``QUEUED_COLUMNS``) and ``recipients`` (those an event was about,
    ``RECIPIENT_COLUMNS``) by (message, lower-cased address)."""

    messages: dict[str, MessageRow] = field(default_factory=dict)
    queued: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    recipients: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)

    def told(self) -> list[tuple[Any, ...]]:
        """The messages' rows whose sender an event told (``MESSAGE_TOLD``)."""
        return [row.values() for row in self.messages.values() if row.sender is not None]

    def untold(self) -> list[tuple[Any, ...]]:
        """The others' (``MESSAGE_UNTOLD``: the sender stays as it was)."""
        return [row.values() for row in self.messages.values() if row.sender is None]


def fold(records: Sequence[Record]) -> Folded:
    """The rows ``records`` (new events, in order) leave."""
    folded = Folded()
    messages, queued, recipients = folded.messages, folded.queued, folded.recipients
    for r in records:
        row = messages.get(r.message)
        messages[r.message] = row.then(r) if row else MessageRow.of(r)
        for address in r.recipients:
            key = (r.message, address.lower())
            queued.setdefault(key, (*key, r.status.value, RANK[r.status], r.at))
        if r.recipient is not None:
            key = (r.message, r.recipient.lower())
            recipients[key] = _recipient_then(recipients.get(key), key, r)
    return folded
