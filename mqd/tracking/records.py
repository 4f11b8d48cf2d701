"""What the tracker writes to an event store: ``Record`` (one event), and the rule by which a
message's status follows from its recipients' (``message_status``).

Shared by every event store (SQLite today, PostgreSQL later) and by the queries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mqd.tracking.vocabulary import RANK, Status

__all__ = ["BAD", "FINAL", "Record", "message_status"]

#: Statuses that mean something went wrong for a recipient or the message: they are what a
#: message shows (rather than its slowest recipient's progress) and what ``failures`` lists.
BAD = frozenset({Status.BOUNCED, Status.DROPPED, Status.COMPLAINED, Status.FAILED, Status.REJECTED})
#: Message-level statuses that end the story whatever the recipients say.
FINAL = frozenset({Status.REJECTED, Status.FAILED, Status.DELETED})


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
    subject: str | None = None
    #: Why the file is not a message (intake could not parse it): a rejection's reason.
    not_a_message: str | None = None
    #: The [[account]] its sender belongs to.
    account: str | None = None


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
