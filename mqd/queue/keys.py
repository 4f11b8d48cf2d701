"""Hand-over keys: a producer's own name for a message (an HTTP ``Idempotency-Key``, an AMQP
``message_id``), so that a message handed over twice (a retried request, a redelivery) is
queued once.

A source gives its key with the message (``Incoming.key``); the store records key -> queue id
in the same durable write as the entry, and an ``accept`` whose key it knows (not expired)
queues nothing and answers with the first hand-over (``Handed``). The memory and file stores
keep their keys in a ``KeyIndex``; the PostgreSQL store in a table of its own.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Handed", "HandoverKey", "KeyIndex", "KeyRecord", "split_batch"]

T = TypeVar("T")

log = logging.getLogger("mqd.queue")

#: How often (seconds of the store's clock) a ``KeyIndex`` drops its expired keys.
PRUNE_EVERY = 600.0
#: The most keys a ``KeyIndex`` keeps a scope (about 200 bytes each in memory): beyond it the
#: oldest are forgotten before they expire, and the log says so.
MAX_KEYS = 200_000


@dataclass(frozen=True, slots=True)
class HandoverKey:
    """A message's key among those of ``scope`` (``"submit.<token hash>"``,
    ``"mailbox.<broker and queue hash>"``), remembered until ``expires``."""

    scope: str
    key: str
    #: Until when the store remembers it (the store's clock).
    expires: float
    #: What the source keeps with it to answer a repeat as it answered the first (the submit
    #: API: the request's fingerprint and the Message-ID it gave).
    note: str = ""


@dataclass(frozen=True, slots=True)
class Handed:
    """What a hand-over became: its queue id and its key's note."""

    id: str
    note: str = ""
    #: An earlier hand-over's answer: nothing was queued this time.
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key a store knows: the entry it was first accepted as."""

    id: str
    note: str
    expires: float


class KeyIndex:
    """The keys of a store of one process, in memory: lookups, and expiry."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], KeyRecord] = {}
        self._next_prune = 0.0

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[tuple[tuple[str, str], KeyRecord]]:
        return iter(self.records.items())

    def get(self, key: HandoverKey, now: float) -> KeyRecord | None:
        record = self.records.get((key.scope, key.key))
        return record if record is not None and record.expires > now else None

    def put(self, key: HandoverKey, entry_id: str) -> None:
        self.records[(key.scope, key.key)] = KeyRecord(entry_id, key.note, key.expires)

    def forget(self, keys: Iterable[HandoverKey]) -> None:
        for key in keys:
            self.records.pop((key.scope, key.key), None)

    def prune(self, now: float) -> bool:
        """Drop the expired keys, and the oldest of a scope beyond ``MAX_KEYS``, at most every
        ``PRUNE_EVERY``; True when it did."""
        if now < self._next_prune:
            return False
        self._next_prune = now + PRUNE_EVERY
        self.records = {k: r for k, r in self.records.items() if r.expires > now}
        for scope, count in Counter(scope for scope, _ in self.records).items():
            if count <= MAX_KEYS:
                continue
            log.warning(
                "%d hand-over keys of %s: the oldest %d are forgotten before they expire "
                "(at most %d are kept a source)",
                count,
                scope,
                count - MAX_KEYS,
                MAX_KEYS,
            )
            mine = sorted((r.expires, k) for k, r in self.records.items() if k[0] == scope)
            for _, key in mine[: count - MAX_KEYS]:
                del self.records[key]
        return True


def split_batch(
    items: Iterable[tuple[T, str, HandoverKey | None]], known: KeyIndex, now: float
) -> tuple[list[T], dict[str, Handed]]:
    """Sort ``items`` (item, its entry id, its key) into those to queue and the repeats: an
    item whose key ``known`` has for another entry, or that an earlier item of the batch has,
    is a repeat ({its entry id: the first}). The caller records the keys of those it queued."""
    fresh: list[T] = []
    repeats: dict[str, Handed] = {}
    first: dict[tuple[str, str], Handed] = {}
    for item, entry_id, key in items:
        if key is None:
            fresh.append(item)
            continue
        record = known.get(key, now)
        if record is not None and record.id != entry_id:
            repeats[entry_id] = Handed(record.id, record.note, replayed=True)
            continue
        earlier = first.get((key.scope, key.key))
        if earlier is not None:
            repeats[entry_id] = earlier
            continue
        first[(key.scope, key.key)] = Handed(entry_id, key.note, replayed=True)
        fresh.append(item)
    return fresh, repeats
