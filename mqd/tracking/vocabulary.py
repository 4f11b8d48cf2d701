"""The status vocabulary of the event store: one set of words for mqd's own events and for every
provider's (docs/tracking.md has the table of how SendGrid's and SES's event names map onto it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["RANK", "ProviderEvent", "Status"]


class Status(StrEnum):
    """mqd's status vocabulary (docs/tracking.md): a message's, a recipient's, an event's."""

    # mqd's own, in the order a message meets them
    ACCEPTED = "accepted"  # claimed from a spool
    REJECTED = "rejected"  # refused at intake (malformed, sender not allowed): in failed/
    QUEUED = "queued"  # durable in the queue
    DEFERRED = "deferred"  # a transient failure (mqd's relay, or the provider's retry); retried
    DISPATCHED = "dispatched"  # the relay (SMTP server, provider API) took it for a recipient
    DELIVERED = "delivered"  # the recipient's mail server accepted it (reported by a provider)
    BOUNCED = "bounced"  # failed permanently for a recipient (mqd's relay or the provider)
    DROPPED = "dropped"  # the provider refused to send it (suppression list, invalid address)
    FAILED = "failed"  # the message finished with failures: moved to failed/
    DELETED = "deleted"  # removed by the administrator (mqd queue delete)
    SUPPRESSED = "suppressed"  # on the suppression list: not sent, no bounce
    # what providers report after delivery
    OPENED = "opened"
    CLICKED = "clicked"
    COMPLAINED = "complained"  # marked as spam by the recipient
    UNSUBSCRIBED = "unsubscribed"


#: A recipient's (or message's) current status is its highest-ranked one, so that a late or
#: reordered webhook (a "delivered" arriving after the "open") never moves it backwards.
RANK: Mapping[Status, int] = {
    Status.ACCEPTED: 0,
    Status.QUEUED: 1,
    Status.DEFERRED: 2,
    Status.DISPATCHED: 3,
    Status.DELIVERED: 4,
    Status.OPENED: 5,
    Status.CLICKED: 6,
    Status.UNSUBSCRIBED: 7,
    Status.BOUNCED: 8,
    Status.DROPPED: 8,
    Status.REJECTED: 8,
    Status.FAILED: 8,
    Status.DELETED: 8,
    Status.SUPPRESSED: 8,
    Status.COMPLAINED: 9,
}


@dataclass(frozen=True)
class ProviderEvent:
    """One event a provider reported through its webhook, already verified and normalised.

    The core matches it to a message by ``mqd_id`` (sent with the message as SendGrid's
    ``custom_args.mqd_id`` or SES's ``mqd_id`` tag) and, failing that, by ``provider_id`` (the id
    the provider answered the send with, as the relay returned it in ``DeliveryResult``).
    """

    status: Status
    #: When the provider says it happened (seconds since the epoch).
    at: float
    #: Unique per event at the provider (SendGrid's ``sg_event_id``; SNS's MessageId plus the
    #: recipient): a duplicate delivery of the same event is recorded once.
    event_id: str
    recipient: str | None = None
    mqd_id: str | None = None
    provider_id: str | None = None
    #: A human-readable reason: a bounce's diagnostic, a deferral's response.
    reply: str | None = None
    #: The provider's own fields worth keeping (its event name, bounce type, clicked URL, ...).
    detail: Mapping[str, Any] = field(default_factory=dict)
