"""What the event store answers: a message's summary, its history, its recipients' statuses
and its events, as typed values.

The queries (``mqd.tracking.queries``) return them; the API, the web view and ``mqd history``
show them. ``to_dict`` is their JSON form, which the API serves and ``mqd history --json``
prints; the OpenAPI schemas of that form are generated from these classes
(``mqd.http.schema``), so a field added here is in the document too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mqd.tracking.vocabulary import Status

__all__ = [
    "FeedEvent",
    "MessageHistory",
    "MessageSummary",
    "RecipientStatus",
    "TimelineEvent",
    "event_fields",
    "timeline_order",
]


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient's current status: the highest-ranked it has reached."""

    #: The address, in lower case.
    address: str
    status: Status
    #: When it reached its status (seconds since the epoch, UTC).
    updated_at: float
    #: The relay that last handled it.
    relay: str | None
    #: The id the provider answered the send with.
    provider_id: str | None
    #: The last reply or reason.
    reply: str | None


@dataclass(frozen=True)
class TimelineEvent:
    """One recorded event of a message."""

    #: The event's number in the store.
    seq: int
    #: mqd's queue id of the message.
    message: str
    #: The recipient it is about; null for a message-level event.
    recipient: str | None
    status: Status
    #: When it happened (seconds since the epoch, UTC).
    at: float
    #: Who reported it: "mqd", or a provider ("sendgrid", "ses" ...).
    source: str
    relay: str | None
    provider_id: str | None
    reply: str | None
    #: More about the event (a bounce's type, a clicked URL, the spool).
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FeedEvent(TimelineEvent):
    """An event as ``mqd events`` and the notifications read it: with what an application
    correlates by (null when its message was pruned)."""

    #: The message's Message-ID header, with <>.
    message_id: str | None
    #: The message's envelope sender.
    sender: str | None
    #: Where it is in the feed (``EventStore.events_after``): opaque, ordered.
    position: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        found = asdict(self)
        del found["position"]
        return found


@dataclass(frozen=True)
class MessageSummary:
    """A message: what it is, where it got, and each recipient's status."""

    #: mqd's queue id.
    id: str
    #: The Message-ID header, with <>.
    message_id: str | None
    #: The envelope sender; empty for a bounce (and for a file that is not a message:
    #: ``not_a_message`` says so).
    sender: str
    #: Its Subject, decoded (RFC 2047); null when it has none or was never read.
    subject: str | None
    #: Why the file handed to mqd is not a message it could read (empty, binary, no header
    #: block ...): set only for such a file, which intake rejected.
    not_a_message: str | None
    #: The ``[[account]]`` its sender belongs to; null for none.
    account: str | None
    #: A final status (failed, rejected, deleted) when it has one, else a recipient's bad one
    #: (bounced, dropped, complained), else its slowest recipient's.
    status: Status
    #: When mqd accepted it (seconds since the epoch, UTC).
    created_at: float
    #: When it last changed (seconds since the epoch, UTC).
    updated_at: float
    #: Each recipient's status, by address.
    recipients: list[RecipientStatus]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MessageHistory(MessageSummary):
    """A message's summary and every event."""

    #: Every event, in the order they happened.
    events: list[TimelineEvent]

    @classmethod
    def of(cls, summary: MessageSummary, events: list[TimelineEvent]) -> MessageHistory:
        """``summary`` with its ``events``."""
        return cls(**{f.name: getattr(summary, f.name) for f in fields(summary)}, events=events)


def timeline_order(event: TimelineEvent) -> tuple[int, bool, float, int]:
    """In the order things happened. Providers give whole seconds, so within one second mqd's
    own events (which caused the provider's) come first."""
    return (int(event.at), event.source != "mqd", event.at, event.seq)


def event_fields(row: Any) -> dict[str, Any]:
    """A row of a store's events (by column name: ``sqlite3.Row``, a dict) as
    ``TimelineEvent``'s fields."""
    return {
        "seq": row["seq"],
        "message": row["message"],
        "recipient": row["recipient"],
        "status": Status(row["status"]),
        "at": row["at"],
        "source": row["source"],
        "relay": row["relay"],
        "provider_id": row["provider_id"],
        "reply": row["reply"],
        "detail": json.loads(row["detail"] or "{}"),
    }
