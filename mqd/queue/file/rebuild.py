"""Entries rebuilt from bodies: the file store keeps no entry for a message never attempted (its
body is its whole record), so after a restart it asks intake to make the entry again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mqd.queue.entry import QueueEntry
from mqd.queue.failed import FailureRecord

__all__ = ["Rebuild", "Unread"]


@dataclass(frozen=True, slots=True)
class Unread:
    """A body in the store with no entry yet (accepted, never attempted, then a restart)."""

    source: str
    entry_id: str
    body: bytes


#: Intake's rebuilding of an entry from its body: the entry, or why it must go to failed/.
Rebuild = Callable[[Unread], "QueueEntry | FailureRecord"]
