"""``Idempotency-Key``: the answers already given, per submit token, for ``idempotency_for``.

A key's record (the queue id and the Message-ID its first request was answered with, and a
fingerprint of that request) is kept in the queue store's small state, under
``submit-keys.<scope>.<0-f>`` (``scope``: a hash of the token, never the token; the last
part: a hash of the key, sixteen blobs so that a save rewrites a sixteenth of the records), so it
survives a restart. Records made together are saved together: while one save of a blob is
written, the next ones gather (one rewrite, one fsync, for a burst of requests). Expired
records are dropped on each save; at most ``MAX_KEYS`` are kept a token.

Requests with the same key take turns (``hold``): the second waits for the first's answer and
then gets it, so two concurrent requests never both queue. The record is written once the
message is durable and before the answer goes: a crash between the two (a moment) leaves a
message queued whose key is not known; its producer, never answered, sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import astuple, dataclass

from mqd.clock import Clock
from mqd.intake.source import HandOver

__all__ = ["MAX_KEYS", "MAX_KEY_LENGTH", "SHARDS", "IdempotencyKeys", "Record"]

log = logging.getLogger("mqd.intake")

#: The longest key taken (characters); a UUID is 36.
MAX_KEY_LENGTH = 255
#: The records of a token are kept in this many blobs (by a hash of the key), so that a save
#: rewrites a sixteenth of them.
SHARDS = 16
#: The most keys remembered a token (about 100 bytes each); beyond it the oldest are forgotten
#: early, and the log says so.
MAX_KEYS = 200_000


@dataclass(frozen=True)
class Record:
    """The first answer to a key's request."""

    expires: float
    #: A hash of the first request (its body, type and envelope): the same key with another
    #: request is refused rather than answered for the first one.
    fingerprint: str
    id: str
    message_id: str


class _Shard:
    """The records of one blob, and its saving: records made together are saved together."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.records: dict[str, Record] = {}
        self.version = 0
        self.durable = 0
        self.writing: asyncio.Future[None] | None = None


class IdempotencyKeys:
    def __init__(self, handover: HandOver, scope: str, keep_for: float, clock: Clock) -> None:
        self.handover = handover
        self.keep_for = keep_for
        self.clock = clock
        self._shards = [_Shard(f"submit-keys.{scope}.{n:x}") for n in range(SHARDS)]
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return sum(len(shard.records) for shard in self._shards)

    def _shard(self, key: str) -> _Shard:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        return self._shards[digest[0] % SHARDS]

    async def load(self) -> None:
        """Read the records kept (those not expired); a damaged blob is said and ignored."""
        blobs = await asyncio.gather(*(self.handover.load_state(s.name) for s in self._shards))
        now = self.clock.time()
        for shard, raw in zip(self._shards, blobs, strict=True):
            if raw is None:
                continue
            try:
                records = {key: Record(*values) for key, values in json.loads(raw).items()}
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("the idempotency keys %s cannot be read: %s", shard.name, exc)
                continue
            shard.records = {k: r for k, r in records.items() if r.expires > now}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold ``key``: requests with it take turns."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def get(self, key: str) -> Record | None:
        record = self._shard(key).records.get(key)
        if record is None or record.expires <= self.clock.time():
            return None
        return record

    async def put(self, key: str, fingerprint: str, queue_id: str, message_id: str) -> None:
        """Remember the answer; returns once it is durable (raises what the store raised)."""
        shard = self._shard(key)
        expires = self.clock.time() + self.keep_for
        shard.records[key] = Record(expires, fingerprint, queue_id, message_id)
        shard.version += 1
        version = shard.version
        while shard.durable < version:
            if shard.writing is None or shard.writing.done():
                shard.writing = asyncio.ensure_future(self._write(shard))
            await asyncio.shield(shard.writing)

    async def _write(self, shard: _Shard) -> None:
        await asyncio.sleep(0)  # the records of this turn of the loop join this save
        version = shard.version
        now = self.clock.time()
        records = {k: r for k, r in shard.records.items() if r.expires > now}
        if len(records) > MAX_KEYS // SHARDS:  # the oldest go first
            kept = sorted(records.items(), key=lambda item: item[1].expires)
            records = dict(kept[len(kept) - MAX_KEYS // SHARDS :])
            log.warning(
                "the submit API remembers at most %d idempotency keys a token: the oldest are "
                "forgotten before idempotency_for",
                MAX_KEYS,
            )
        shard.records = records
        data = json.dumps({k: astuple(r) for k, r in records.items()}, separators=(",", ":"))
        await self.handover.save_state(shard.name, data.encode())
        shard.durable = max(shard.durable, version)
