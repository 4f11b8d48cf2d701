"""Events: every state change of a message, fanned out to ``mqd_track_event`` implementations
(the tracker, the metrics, progress bars, plugins).

One frozen dataclass per kind, each with the typed fields of that kind; they share ``Event``'s
``message_id`` (mqd's queue id) and ``time`` (Unix time, from the emitter's clock), and name
their kind in the class constant ``kind``. A consumer tells them apart by class
(``isinstance(event, Delivered)``, ``case Delivered(recipient=r):``) or by ``event.kind``::

    Event
    ├── Claimed                 taken from a spool
    ├── Rejected                refused at intake: in the failed folder, no bounce
    ├── Attempted               a delivery attempt ended: each relay called, when, and its answer
    ├── MessageEvent            about the whole message, as its queue entry describes it
    │   ├── Queued              durable in the queue
    │   ├── Failed              finished with failures: moved to the failed folder
    │   ├── Completed           every recipient delivered: left the queue
    │   └── Deleted             removed by the administrator: not delivered
    └── RecipientEvent          about one recipient, after a relay's answer
        ├── Delivered           accepted by the relay
        ├── Deferred            failed transiently: retried later
        ├── Bounced             failed permanently: a DSN queued (when one may be sent)
        └── Suppressed          not sent: on the suppression list (no DSN)

The fields are what the emitters know at that moment; this module imports nothing of mqd, so
that every part may publish and observe events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar, Protocol, Self

__all__ = [
    "EVENT_TYPES",
    "Attempted",
    "Bounced",
    "Claimed",
    "Completed",
    "Deferred",
    "Deleted",
    "Delivered",
    "Event",
    "EventKind",
    "EventSink",
    "Failed",
    "MessageEvent",
    "Queued",
    "RecipientEvent",
    "Rejected",
    "RelayCall",
    "Suppressed",
]


class EventKind(StrEnum):
    CLAIMED = "claimed"  # taken from a spool
    REJECTED = "rejected"  # refused at intake (bad input or policy): in failed/, no bounce
    QUEUED = "queued"  # accepted: durable in the queue
    ATTEMPTED = "attempted"  # a delivery attempt ended (before its recipients' events)
    DELIVERED = "delivered"  # a recipient was accepted by the relay
    DEFERRED = "deferred"  # a recipient failed transiently; retried later
    BOUNCED = "bounced"  # a recipient failed permanently; a DSN was queued (if allowed)
    FAILED = "failed"  # the message finished with failures and was moved to failed/
    COMPLETED = "completed"  # every recipient delivered; the entry left the queue
    DELETED = "deleted"  # removed by the administrator (mqd queue delete): not delivered
    SUPPRESSED = "suppressed"  # a recipient on the suppression list: not sent, no bounce


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """What every event has. Abstract: an event is one of the subclasses, which set ``kind``."""

    #: The kind of every event of this class.
    kind: ClassVar[EventKind]
    #: mqd's queue id of the message.
    message_id: str
    #: When it happened (Unix time), read from the emitter's clock.
    time: float

    def payload(self) -> dict[str, Any]:
        """This kind's own fields (not ``kind``, ``message_id`` or ``time``) as a dict, for
        code that treats events generically (logging them as JSON) or was written against the
        old ``event.data`` mapping. New code reads the fields."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _COMMON}


_COMMON = frozenset({"message_id", "time"})


@dataclass(frozen=True, kw_only=True, slots=True)
class Claimed(Event):
    """A file was taken from a spool into intake's claim area (its id is new)."""

    kind: ClassVar[EventKind] = EventKind.CLAIMED
    #: Its file name in the spool.
    file: str
    #: The spool's directory.
    spool: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Rejected(Event):
    """Intake refused the message: it is in the failed folder, and no bounce was sent (or, from
    a broker's mailbox, it was rejected to the queue's dead-letter exchange)."""

    kind: ClassVar[EventKind] = EventKind.REJECTED
    #: Where it was refused: ``"intake"`` (unreadable, malformed) or ``"policy"``.
    stage: str
    #: Why, for a person.
    reason: str
    #: The spool's directory, and the message's file name there; for a mailbox, the source
    #: (``"mailbox[0]"``) and the delivery's AMQP message_id.
    spool: str
    file: str
    #: The envelope sender (``""`` for the null sender); None when it could not be parsed.
    sender: str | None
    #: Its recipients (none when it could not be parsed).
    recipients: tuple[str, ...]
    #: Its Subject, decoded; None when it could not be parsed or has none.
    subject: str | None = None


class _Recipient(Protocol):
    @property
    def address(self) -> str: ...


class _Entry(Protocol):
    """What ``MessageEvent.of`` reads of a queue entry (``mqd.QueueEntry``)."""

    @property
    def id(self) -> str: ...
    @property
    def sender(self) -> str: ...
    @property
    def recipients(self) -> Sequence[_Recipient]: ...
    @property
    def relay(self) -> str: ...
    @property
    def relays(self) -> Sequence[str]: ...
    @property
    def message_id(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def attempts(self) -> int: ...
    @property
    def traceparent(self) -> str: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageEvent(Event):
    """An event about a whole message, described by its queue entry."""

    #: The envelope sender (``""`` for the null sender: a bounce).
    sender: str
    #: Every recipient, whatever its status.
    recipients: tuple[str, ...]
    #: The relay it is tried on first, and its whole failover route (``relay`` first).
    relay: str
    route: tuple[str, ...]
    #: Its ``Message-ID`` header; None when it has none.
    message_id_header: str | None
    #: When intake took it (Unix time: the claim from the spool); None when not known.
    accepted_at: float | None = None
    #: Delivery attempts made so far.
    attempts: int = 0
    #: The W3C ``traceparent`` it was handed over with; None when none.
    traceparent: str | None = None
    #: Its Subject, decoded (RFC 2047); None when it has none.
    subject: str | None = None
    #: The ``[[account]]`` its sender belongs to; None for none.
    account: str | None = None

    @classmethod
    def of(cls, entry: _Entry, time: float) -> Self:
        """The event about ``entry`` (a ``QueueEntry``) at ``time``."""
        return cls(
            message_id=entry.id,
            time=time,
            sender=entry.sender,
            recipients=tuple(r.address for r in entry.recipients),
            relay=entry.relay,
            route=tuple(entry.relays),
            message_id_header=entry.message_id or None,
            accepted_at=entry.created_at,
            attempts=entry.attempts,
            traceparent=entry.traceparent or None,
            subject=getattr(entry, "subject", "") or None,
            account=getattr(entry, "account", None),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Queued(MessageEvent):
    """The message is durable in the queue (once per message: after its ``Claimed`` when it came
    from a spool; a source that hands messages over in memory names itself in ``source``)."""

    kind: ClassVar[EventKind] = EventKind.QUEUED
    #: The source that handed it over (``"smtpd[0]"``); None for a spool (its ``Claimed`` names
    #: it).
    source: str | None = None
    #: The login the producer authenticated as (SMTP AUTH); None without one.
    login: str | None = None
    #: Who handed it over, as the source knows it (an SMTP client's ``"127.0.0.1:51234"``).
    peer: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Failed(MessageEvent):
    """Every recipient is final and some failed: the message is in the failed folder."""

    kind: ClassVar[EventKind] = EventKind.FAILED


@dataclass(frozen=True, kw_only=True, slots=True)
class Completed(MessageEvent):
    """Every recipient was delivered: the message left the queue."""

    kind: ClassVar[EventKind] = EventKind.COMPLETED


@dataclass(frozen=True, kw_only=True, slots=True)
class Deleted(MessageEvent):
    """The administrator deleted the message (``mqd queue delete``): its pending recipients
    are not delivered and get no bounce."""

    kind: ClassVar[EventKind] = EventKind.DELETED


@dataclass(frozen=True, kw_only=True, slots=True)
class RelayCall:
    """One relay's part of an attempt (``Attempted.calls``): a failover route calls several."""

    #: The relay's name in the config.
    relay: str
    #: The host that answered (``"smtp.example.net:587"``); None when none did (the connection
    #: failed) or the relay does not say.
    remote: str | None
    #: When the call started and ended (Unix time).
    started: float
    ended: float
    #: The recipients handed to it, and its reply for the first of them.
    recipients: tuple[str, ...]
    reply: str
    #: How its reply classifies: ``"delivered"``, ``"transient"``, ``"permanent"``, or
    #: ``"mixed"`` when the recipients' replies differ.
    outcome: str
    #: The provider's id for the message, when it gave one.
    provider_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Attempted(Event):
    """A delivery attempt ended (``time``): the relays of the route it called, in order, each
    with its times and answer. Published before the recipients' ``Delivered``, ``Deferred`` or
    ``Bounced`` of the same attempt. An attempt that called no relay (all held back by a circuit
    or a quota) is not one: it is not counted and has no event."""

    kind: ClassVar[EventKind] = EventKind.ATTEMPTED
    #: Which attempt this was (1 for the first).
    attempt: int
    #: When it started (Unix time).
    started: float
    #: Since when the message had been waiting for it: its acceptance, or the end of the
    #: previous attempt.
    waiting_since: float
    #: The relays called, in route order.
    calls: tuple[RelayCall, ...]
    #: The W3C ``traceparent`` the message was handed over with; None when none.
    traceparent: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RecipientEvent(Event):
    """An event about one recipient of a message, after an attempt (or an administrator's
    bounce)."""

    #: The recipient's address.
    recipient: str
    #: The reply that decided it (``"250 2.0.0 OK"``, ``"550 5.1.1 no such user"``).
    reply: str | None
    #: The relay that last answered for it (with failover, not always the route's first); None
    #: when none has (a recipient returned by ``mqd queue bounce`` before any attempt).
    relay: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Delivered(RecipientEvent):
    """The relay accepted the recipient: it is never sent to again."""

    kind: ClassVar[EventKind] = EventKind.DELIVERED
    #: The provider's id for the message (for matching its webhooks), when it gave one.
    provider_id: str | None
    #: Seconds the attempt took (the relays of a failover route included).
    elapsed: float
    #: Seconds from the message's acceptance into the queue to this delivery.
    age: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Deferred(RecipientEvent):
    """The recipient failed transiently: it is tried again at ``next_attempt_at``."""

    kind: ClassVar[EventKind] = EventKind.DEFERRED
    #: When the next attempt is due (Unix time).
    next_attempt_at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Bounced(RecipientEvent):
    """The recipient failed permanently (a 5xx, retries exhausted, or the administrator's
    ``mqd queue bounce``)."""

    kind: ClassVar[EventKind] = EventKind.BOUNCED
    #: The enhanced status code of the failure (``"5.1.1"``, ``"4.4.7"``), when known.
    status_code: str | None
    #: Whether a DSN went to the sender (not for the null sender or a delivery report).
    dsn_sent: bool
    #: The queue id of that DSN; None when none was sent.
    dsn_id: str | None = None
    #: The W3C ``traceparent`` the message was handed over with; None when none.
    traceparent: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Suppressed(RecipientEvent):
    """The recipient is on the suppression list: it was not sent to, and no DSN goes for it.
    ``reply`` says why it was suppressed (the original bounce or complaint)."""

    kind: ClassVar[EventKind] = EventKind.SUPPRESSED
    #: "bounce", "complaint" or "manual".
    suppression: str
    #: When it was suppressed (Unix time).
    since: float


#: The class of each kind of event.
EVENT_TYPES: dict[EventKind, type[Event]] = {
    cls.kind: cls
    for cls in (
        Claimed,
        Rejected,
        Queued,
        Attempted,
        Delivered,
        Deferred,
        Bounced,
        Suppressed,
        Failed,
        Completed,
        Deleted,
    )
}

#: What the daemon calls to publish an event (the plugin manager's isolated hook call).
EventSink = Callable[[Event], None]
