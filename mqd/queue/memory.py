"""A queue store in memory, for tests: the protocol with nothing in the way.

What would be durable lives in a ``MemoryDisk``; a new ``MemoryStore`` on the same disk is the
store after a crash (its leases are gone, its entries due again). Entries cross the interface
as copies, so a caller that relies on sharing the store's objects fails here first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.errors import QueueLockedError
from mqd.queue.entry import QueueEntry
from mqd.queue.failed import FailedError, FailedFolder, FailedMessage, FailureRecord, no_lock
from mqd.queue.keys import Handed, KeyIndex, split_batch
from mqd.queue.schedule import Schedule, ambiguous, unknown
from mqd.queue.store import (
    Bounce,
    Incoming,
    Lease,
    Listed,
    QueueCounts,
    QueueStore,
    Refused,
)

__all__ = ["MemoryDisk", "MemoryStore"]


@dataclass
class MemoryDisk:
    """What a memory store keeps "durably": a new store on the same disk recovers from it."""

    entries: dict[str, bytes] = field(default_factory=dict)
    bodies: dict[str, bytes] = field(default_factory=dict)
    failed: dict[str, tuple[float, FailureRecord, bytes | None]] = field(default_factory=dict)
    state: dict[str, bytes] = field(default_factory=dict)
    #: The hand-over keys, recorded with their entries.
    keys: KeyIndex = field(default_factory=KeyIndex)
    #: Held by the store that opened it last (one store per disk, as one daemon per queue dir).
    holder: object | None = None


def _copy(entry: QueueEntry) -> QueueEntry:
    return QueueEntry.from_json(entry.to_json())


class MemoryStore(QueueStore):
    def __init__(
        self, disk: MemoryDisk | None = None, *, node: str = "memory", clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.disk = disk if disk is not None else MemoryDisk()
        self.node = node
        self.clock = clock
        self.failed = _MemoryFailed(self.disk)
        self._schedule = Schedule(node, clock=clock)

    async def open(self) -> list[str]:
        if self.disk.holder is not None and self.disk.holder is not self:
            raise QueueLockedError("this memory disk is held by another store (close it first)")
        self.disk.holder = self
        for raw in self.disk.entries.values():
            self._schedule.add(QueueEntry.from_json(raw))
        return []

    async def close(self) -> None:
        if self.disk.holder is self:
            self.disk.holder = None

    def subscribe(self, wake: Callable[[], None]) -> None:
        self._schedule.subscribe(wake)

    # -- intake -----------------------------------------------------------------------------------

    async def accept(self, batch: Sequence[Incoming]) -> dict[str, Handed]:
        now = self.clock.time()
        keys = self.disk.keys
        keys.prune(now)
        fresh, repeats = split_batch(((i, i.entry.id, i.key) for i in batch), keys, now)
        for item in fresh:
            if item.key is not None:
                keys.put(item.key, item.entry.id)
            if item.entry.id in self.disk.entries:
                continue  # accepted before a crash: idempotent
            self._write(item.entry)
            self.disk.bodies[item.entry.id] = item.body
            self._schedule.add(_copy(item.entry))
        return repeats

    async def refuse(self, batch: Sequence[Refused]) -> None:
        for item in batch:
            self.disk.failed[item.entry_id] = (self.clock.time(), item.record, item.body)

    def _write(self, entry: QueueEntry) -> None:
        self.disk.entries[entry.id] = entry.to_json()

    # -- the schedule -----------------------------------------------------------------------------

    async def lease(self, limit: int) -> list[Lease]:
        return [_handed(lease) for lease in self._schedule.due(limit)]

    async def lease_ids(self, ids: Sequence[str]) -> list[Lease]:
        return [_handed(lease) for lease in self._schedule.lease_ids(ids)]

    async def next_due(self) -> float | None:
        return self._schedule.next_due()

    async def body(self, entry: QueueEntry) -> bytes:
        return self.disk.bodies[entry.id]

    async def dispatching(self, lease: Lease) -> None:
        self._schedule.dispatching(lease)

    async def checkpoint(self, lease: Lease, entry: QueueEntry) -> None:
        self._schedule.check(lease)
        self._write(entry)

    async def save(self, lease: Lease, entry: QueueEntry, *, bounce: Bounce | None = None) -> None:
        self._schedule.check(lease)
        if bounce is not None:
            self._add_bounce(bounce)
        kept = _copy(entry)
        self._schedule.end(lease, kept, keep=True)
        self._write(kept)

    async def complete(self, lease: Lease, entry: QueueEntry) -> None:
        self._schedule.end(lease, entry, keep=False)
        self._forget(entry.id)

    async def fail(
        self,
        lease: Lease,
        entry: QueueEntry,
        record: FailureRecord,
        *,
        bounce: Bounce | None = None,
    ) -> None:
        self._schedule.check(lease)
        if bounce is not None:
            self._add_bounce(bounce)
        self._schedule.end(lease, entry, keep=False)
        self.disk.failed[entry.id] = (self.clock.time(), record, self.disk.bodies.get(entry.id))
        self._forget(entry.id)

    async def release(self, lease: Lease, *, not_before: float | None = None) -> None:
        stored = self._schedule.entries.get(lease.entry.id)
        if stored is not None:
            self._schedule.give_back(Lease(stored, lease.token, lease.node), not_before)

    def _add_bounce(self, bounce: Bounce) -> None:
        self.disk.bodies[bounce.entry.id] = bounce.body
        self._write(bounce.entry)
        self._schedule.add(_copy(bounce.entry))

    def _forget(self, entry_id: str) -> None:
        self.disk.entries.pop(entry_id, None)
        self.disk.bodies.pop(entry_id, None)

    # -- administration ---------------------------------------------------------------------------

    def _listed(self, entry: QueueEntry) -> Listed:
        schedule = self._schedule
        return Listed(_copy(entry), schedule.state(entry), schedule.holder(entry.id))

    async def entries(self) -> list[Listed]:
        entries = sorted(self._schedule, key=lambda e: (e.created_at, e.id))
        return [self._listed(entry) for entry in entries]

    async def find(self, wanted: Sequence[str]) -> dict[str, str]:
        found = {}
        for given in wanted:
            matches = self._schedule.matching(given)
            if len(matches) > 1:
                raise ambiguous(given, len(matches))
            if matches:
                found[given] = matches[0]
        return found

    async def get(self, entry_id: str) -> Listed:
        entry = self._schedule.entries.get(entry_id)
        if entry is None:
            raise unknown(entry_id)
        return self._listed(entry)

    def _entries(self, ids: Sequence[str]) -> list[QueueEntry]:
        entries = []
        for entry_id in dict.fromkeys(ids):
            entry = self._schedule.entries.get(entry_id)
            if entry is None:
                raise unknown(entry_id)
            entries.append(entry)
        return entries

    async def hold(self, ids: Sequence[str]) -> list[str]:
        for entry in self._entries(ids):
            if not entry.held and self._schedule.hold(entry):
                self._write(entry)
        return list(dict.fromkeys(ids))

    async def unhold(self, ids: Sequence[str] | None) -> list[str]:
        chosen = self._entries(ids) if ids is not None else list(self._schedule)
        done = []
        for entry in chosen:
            if entry.held:
                self._schedule.unhold(entry)
                self._write(entry)
                done.append(entry.id)
        return done

    async def retry(self, ids: Sequence[str] | None, *, relay: str | None = None) -> list[str]:
        if ids is not None:
            chosen = self._entries(ids)
        else:
            now = self.clock.time()  # a message for later keeps its time unless it is named
            chosen = [
                e
                for e in self._schedule
                if (relay is None or relay in e.relays) and not e.scheduled(now)
            ]
        done = []
        for entry in chosen:
            if entry.held:
                continue
            if self._schedule.retry(entry):
                self._write(entry)
            done.append(entry.id)
        return done

    async def delete(self, ids: Sequence[str]) -> list[QueueEntry]:
        entries = self._entries(ids)
        self._schedule.check_deletable(entries)
        for entry in entries:
            self._schedule.delete(entry)
            self._forget(entry.id)
        return [_copy(entry) for entry in entries]

    async def queued(self) -> int:
        return len(self._schedule)

    async def counts(self) -> QueueCounts:
        return self._schedule.counts()

    async def load_state(self, name: str) -> bytes | None:
        return self.disk.state.get(name)

    async def save_state(self, name: str, data: bytes) -> None:
        self.disk.state[name] = data


def _handed(lease: Lease) -> Lease:
    return Lease(_copy(lease.entry), lease.token, lease.node)


class _MemoryFailed(FailedFolder):
    def __init__(self, disk: MemoryDisk) -> None:
        self.disk = disk

    def _message(self, entry_id: str) -> FailedMessage:
        failed_at, record, body = self.disk.failed[entry_id]
        return FailedMessage(entry_id, failed_at, record, "memory" if body is not None else None)

    async def messages(self) -> list[FailedMessage]:
        found = [self._message(entry_id) for entry_id in self.disk.failed]
        return sorted(found, key=lambda m: (m.failed_at, m.id))

    async def find(self, ids: Sequence[str]) -> list[FailedMessage]:
        chosen: dict[str, FailedMessage] = {}
        for wanted in ids:
            matches = [k for k in self.disk.failed if k == wanted] or [
                k for k in self.disk.failed if wanted and k.startswith(wanted)
            ]
            if not matches:
                raise FailedError(f"no message {wanted!r} in the failed folder")
            if len(matches) > 1:
                raise FailedError(f"{wanted!r} is the start of {len(matches)} failed ids")
            chosen.setdefault(matches[0], self._message(matches[0]))
        return list(chosen.values())

    async def read(self, message: FailedMessage) -> bytes:
        body = self.disk.failed.get(message.id, (0.0, None, None))[2]
        if body is None:
            raise FailedError(f"the message of {message.id} is missing (only its record is left)")
        return body

    async def remove(self, message: FailedMessage) -> None:
        self.disk.failed.pop(message.id, None)

    async def count(self) -> int:
        return len(self.disk.failed)

    def changing(self) -> contextlib.AbstractAsyncContextManager[None]:
        return no_lock()
