"""Events: every state change of a message, fanned out to ``mqd_track_event`` implementations."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Event", "EventKind", "EventSink"]


class EventKind(StrEnum):
    CLAIMED = "claimed"  # taken from a spool
    REJECTED = "rejected"  # refused at intake (bad input or policy): in failed/, no bounce
    QUEUED = "queued"  # accepted: durable in the queue
    DELIVERED = "delivered"  # a recipient was accepted by the relay
    DEFERRED = "deferred"  # a recipient failed transiently; retried later
    BOUNCED = "bounced"  # a recipient failed permanently; a DSN was queued (if allowed)
    FAILED = "failed"  # the message finished with failures and was moved to failed/
    COMPLETED = "completed"  # every recipient delivered; the entry left the queue
    DELETED = "deleted"  # removed by the administrator (mqd queue delete): not delivered


@dataclass(frozen=True)
class Event:
    kind: EventKind
    #: mqd's queue id of the message.
    message_id: str
    data: Mapping[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


#: What the daemon calls to publish an event (the plugin manager's isolated hook call).
EventSink = Callable[[Event], None]
