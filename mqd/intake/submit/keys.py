"""``Idempotency-Key``: the answers already given, per submit token, for ``idempotency_for``.

A key's record (the queue id and the Message-ID its first request was answered with, and a
fingerprint of that request) is kept in the queue store's small state, under
``submit-keys.<scope>`` (``scope``: a hash of the token, never the token), so it survives a
restart. Records made together are saved together: while one save is written, the next ones
gather (one blob rewrite, one fsync, for a burst of requests). Expired records are dropped on
each save.

Requests with the same key take turns (``hold``): the second waits for the first's answer and
then gets it, so two concurrent requests never both queue. The record is written once the
message is durable and before the answer goes: a crash between the two (a moment) leaves a
message queued whose key is not known; its producer, never answered, sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import astuple, dataclass

from mqd.clock import Clock
from mqd.intake.source import HandOver

__all__ = ["MAX_KEY_LENGTH", "IdempotencyKeys", "Record"]

log = logging.getLogger("mqd.intake")

#: The longest key taken (characters); a UUID is 36.
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Record:
    """The first answer to a key's request."""

    expires: float
    #: A hash of the first request (its body, type and envelope): the same key with another
    #: request is refused rather than answered for the first one.
    fingerprint: str
    id: str
    message_id: str


class IdempotencyKeys:
    def __init__(self, handover: HandOver, scope: str, keep_for: float, clock: Clock) -> None:
        self.handover = handover
        self.name = f"submit-keys.{scope}"
        self.keep_for = keep_for
        self.clock = clock
        self._records: dict[str, Record] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._version = 0
        self._durable = 0
        self._writing: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._records)

    async def load(self) -> None:
        """Read the records kept (those not expired); a damaged blob is said and ignored."""
        raw = await self.handover.load_state(self.name)
        if raw is None:
            return
        now = self.clock.time()
        try:
            data = json.loads(raw)
            records = {key: Record(*values) for key, values in data.items()}
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("the submit API's idempotency keys (%s) cannot be read: %s", self.name, exc)
            return
        self._records = {k: r for k, r in records.items() if r.expires > now}

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
        record = self._records.get(key)
        if record is None or record.expires <= self.clock.time():
            return None
        return record

    async def put(self, key: str, fingerprint: str, queue_id: str, message_id: str) -> None:
        """Remember the answer; returns once it is durable (raises what the store raised)."""
        expires = self.clock.time() + self.keep_for
        self._records[key] = Record(expires, fingerprint, queue_id, message_id)
        self._version += 1
        version = self._version
        while self._durable < version:
            if self._writing is None or self._writing.done():
                self._writing = asyncio.ensure_future(self._write())
            await asyncio.shield(self._writing)

    async def _write(self) -> None:
        await asyncio.sleep(0)  # the records of this turn of the loop join this save
        version = self._version
        now = self.clock.time()
        self._records = {k: r for k, r in self._records.items() if r.expires > now}
        data = json.dumps(
            {k: astuple(r) for k, r in self._records.items()}, separators=(",", ":")
        ).encode()
        await self.handover.save_state(self.name, data)
        self._durable = max(self._durable, version)
