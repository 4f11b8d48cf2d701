"""The queue store interface. The file store implements it; a PostgreSQL store will too.

Contract, for every implementation:

* ``add_many`` returns only when the entries would survive a crash (for a claimed body, the body
  alone may be the record: ``open`` then gives it back in ``Recovery.unaccepted``, to be taken
  in again as at intake).
* ``save`` is durable on return; a crash leaves the old state or the new one, never a torn one.
* ``remove`` and ``fail`` are the only ways an entry leaves the queue.
* ``open`` takes an exclusive lock (one daemon per store) and recovers what is there.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqd.queue.entry import QueueEntry

__all__ = ["QueueStore", "Recovery"]


@dataclass
class Recovery:
    """What ``QueueStore.open`` found."""

    #: Accepted entries, to schedule.
    entries: list[QueueEntry] = field(default_factory=list)
    #: Claimed bodies with no state file, by spool key: messages accepted and never attempted
    #: or deferred (a state file is written at the first change), or claimed by an intake that
    #: a crash interrupted. Both are taken in again from the body.
    unaccepted: dict[str, list[Path]] = field(default_factory=dict)
    #: What recovery did that an operator should hear about.
    notes: list[str] = field(default_factory=list)


class QueueStore(abc.ABC):
    #: A stable id of this queue, used to name its claim area in spools on other filesystems.
    queue_key: str

    @abc.abstractmethod
    async def open(self) -> Recovery:
        """Lock the store (QueueLockedError if another daemon holds it) and recover."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the lock."""

    @abc.abstractmethod
    def staging_path(self, source: str, entry_id: str) -> Path:
        """Where a file claimed from the spool with key ``source`` is renamed to.

        A body already at this path (and fsynced) needs no copy when its entry is added.
        """

    @abc.abstractmethod
    async def add_many(self, items: list[tuple[QueueEntry, bytes | None]]) -> None:
        """Make entries durable. A body of None is already at ``staging_path`` and fsynced."""

    @abc.abstractmethod
    async def load_body(self, entry: QueueEntry) -> bytes:
        """The message bytes of ``entry``, as they were claimed."""

    @abc.abstractmethod
    async def save(self, entry: QueueEntry) -> None:
        """Persist ``entry``'s state durably."""

    @abc.abstractmethod
    async def remove(self, entry: QueueEntry) -> None:
        """``entry`` is finished (every recipient delivered): forget it."""

    @abc.abstractmethod
    async def fail(self, entry: QueueEntry, reason: dict[str, Any]) -> Path:
        """Move ``entry``'s message and ``reason`` to the failed folder; returns where."""

    @abc.abstractmethod
    async def reject(self, entry_id: str, claimed: Path, reason: dict[str, Any]) -> Path:
        """Move a claimed file that was never accepted to the failed folder with ``reason``."""
