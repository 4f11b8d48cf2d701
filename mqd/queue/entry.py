"""The state of one queued message: envelope, per-recipient status, attempts, schedule."""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

__all__ = [
    "DSN_SOURCE",
    "STATE_VERSION",
    "QueueEntry",
    "RcptStatus",
    "RecipientState",
    "id_time",
    "message_id_maker",
    "new_message_id",
]

#: The ``source`` of entries mqd generates itself (bounces).
DSN_SOURCE = "dsn"
#: Bumped when the on-disk state format changes incompatibly (new fields with defaults are not).
STATE_VERSION = 1
#: Attempt records kept per entry.
HISTORY_LIMIT = 50


def new_message_id() -> str:
    """A new queue id: sortable by creation time (ms, hex), then random."""
    return message_id_maker(1)()


def message_id_maker(count: int) -> Callable[[], str]:
    """A maker of new queue ids whose random parts are drawn ``count`` at a time: one system
    call for an intake batch rather than one per file (in the intake thread, each system call
    also waits for the event loop to hand back the GIL). It draws more when they run out."""
    count = max(1, count)
    randoms: list[str] = []

    def make() -> str:
        if not randoms:
            drawn = secrets.token_hex(5 * count)
            randoms.extend(drawn[i : i + 10] for i in range(len(drawn) - 10, -1, -10))
        return f"{int(time.time() * 1000):011x}{randoms.pop()}"

    return make


def id_time(entry_id: str) -> float | None:
    """When ``entry_id`` was made by ``new_message_id`` (None for an id of another form): a body
    recovered without its state file keeps its age, so its expiry does not restart."""
    try:
        return int(entry_id[:11], 16) / 1000 if len(entry_id) == 21 else None
    except ValueError:
        return None


class RcptStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    #: On the suppression list: not sent, no bounce (final, like delivered and failed).
    SUPPRESSED = "suppressed"


@dataclass(slots=True)  # slots: 100,000 queued entries are held in memory
class RecipientState:
    address: str
    status: RcptStatus = RcptStatus.PENDING
    #: The last reply for this recipient ("250 2.0.0 OK", "550 5.1.1 no such user").
    reply: str | None = None
    #: Enhanced status code of that reply (or derived from it), for DSNs.
    status_code: str | None = None
    #: The host that gave that reply.
    remote: str | None = None
    #: The relay that gave that reply (with failover, not always the route's first).
    relay: str | None = None
    #: True once a DSN has been queued for this failed recipient.
    notified: bool = False


@dataclass(slots=True)
class QueueEntry:
    """One message in the queue. Times are Unix timestamps (wall clock, persisted)."""

    id: str
    sender: str
    recipients: list[RecipientState]
    #: The preferred relay: the first of ``route``.
    relay: str
    #: Where the body lives: a spool's key, or "dsn" for bounces mqd generated.
    source: str
    created_at: float
    next_attempt_at: float
    size: int = 0
    attempts: int = 0
    last_attempt_at: float | None = None
    last_reply: str | None = None
    #: The message is itself a delivery report: it never bounces.
    is_report: bool = False
    #: How many DSNs were queued for this message (their ids derive from it, so a retry after a
    #: crash regenerates the same DSN id instead of a second bounce).
    bounces: int = 0
    #: The file name it had in the spool, and its Message-ID header, for logs.
    spool_name: str = ""
    message_id: str = ""
    #: Its W3C ``traceparent`` header as handed over ("" when none): the application's trace,
    #: which the message's spans continue (``mqd.message.tracecontext``, docs/tracing.md).
    traceparent: str = ""
    #: Its Subject, decoded (RFC 2047) into one line of text; "" when it has none.
    subject: str = ""
    #: Data plugins keep with the message (e.g. a provider's message id); persisted as JSON.
    extra: dict[str, Any] = field(default_factory=dict)
    #: Held by the administrator (``mqd queue hold``): never attempted until released.
    held: bool = False
    #: The failover chain chosen at intake (by route or spool); empty means just ``relay``.
    route: list[str] = field(default_factory=list)
    #: Send later: the time ``X-Mqd-Send-At`` named (its first attempt, and where its lifetime
    #: starts); None for a message that goes as soon as it can.
    send_at: float | None = None
    #: The ``[[account]]`` its sender belongs to (its limits apply), None for none.
    account: str | None = None
    #: One record per relay used, newest last (at most ``HISTORY_LIMIT``): when, which relay,
    #: for which recipients, and what came back.
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def relays(self) -> list[str]:
        """The relays to try, in order."""
        return self.route or [self.relay]

    def record(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        del self.history[:-HISTORY_LIMIT]

    @property
    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status is RcptStatus.PENDING]

    @property
    def unnotified_failures(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status is RcptStatus.FAILED and not r.notified]

    def scheduled(self, now: float) -> bool:
        """Never attempted and to go later than ``now`` (send later)."""
        return not self.attempts and self.send_at is not None and self.send_at > now

    @property
    def is_done(self) -> bool:
        return not self.pending

    @property
    def has_failures(self) -> bool:
        return any(r.status is RcptStatus.FAILED for r in self.recipients)

    @property
    def may_bounce(self) -> bool:
        """False for the null sender and for delivery reports: no bounce loops (RFC 3464)."""
        return bool(self.sender) and not self.is_report

    def to_json(self) -> bytes:
        # What dataclasses.asdict() gives, built by hand: asdict deep-copies every value on the
        # way, which made it the dearest step of writing a state file.
        data = {name: getattr(self, name) for name in _ENTRY_FIELDS}
        data["recipients"] = [
            {name: getattr(r, name) for name in _RECIPIENT_FIELDS} for r in self.recipients
        ]
        data["version"] = STATE_VERSION
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> QueueEntry:
        """Parse a state file; ValueError (with the reason) when it is not a valid one."""
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        version = data.pop("version", None)
        if version != STATE_VERSION:
            raise ValueError(f"state version {version!r}, this mqd reads {STATE_VERSION}")
        try:
            rcpts = [
                RecipientState(**{**_interned(r), "status": RcptStatus(r["status"])})
                for r in data.pop("recipients")
            ]
            data["history"] = [_interned(record) for record in data.get("history", ())]
            entry = cls(recipients=rcpts, **_interned(data))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"missing or unexpected fields ({exc})") from None
        if not entry.id or not entry.recipients:
            raise ValueError("no id or no recipients")
        return entry


#: Fields whose values repeat across a queue's entries (ids, addresses and Message-IDs do not).
_REPEATING = frozenset(
    {"sender", "relay", "source", "last_reply", "reply", "status_code", "remote", "outcome"}
)


def _interned(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its keys, and the short values of its repeating fields, interned: the
    relay names, replies and senders a large queue holds thousands of times over are then held
    once (a state file read makes new strings of each)."""
    return {
        sys.intern(key): sys.intern(value)
        if key in _REPEATING and type(value) is str and len(value) < 200
        else value
        for key, value in record.items()
    }


_ENTRY_FIELDS = tuple(f.name for f in fields(QueueEntry))
_RECIPIENT_FIELDS = tuple(f.name for f in fields(RecipientState))
