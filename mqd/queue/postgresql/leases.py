"""A node's leases on the PostgreSQL queue: taken with their messages' bodies, marked, renewed,
and ended by writes fenced on their tokens.

A lease batch brings each entry's body in the same statement; the holder keeps it until the
delivery asks for it (``body``) or the lease ends, so a delivery costs no read of its own (the
bodies kept are those of the leases in flight: at most ``queue.concurrency`` of them). The
dispatching marks, the completions and the saves (those without a bounce) of concurrent
deliveries are written together (``groupcommit``): one statement, one transaction for all those
that came in while the last was in flight, each caller told whether its own lease held. Marks
and completions share their group: in a drain one delivery's mark and another's completion go in
the same transaction.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import psycopg

from mqd.clock import Clock
from mqd.errors import QueueError
from mqd.queue.entry import QueueEntry
from mqd.queue.failed import FailureRecord
from mqd.queue.postgresql import admin
from mqd.queue.postgresql import statements as q
from mqd.queue.postgresql.arrays import bool_array, number_array, text_array
from mqd.queue.postgresql.connect import Conn
from mqd.queue.postgresql.groupcommit import GroupCommit
from mqd.queue.postgresql.outcomes import (
    MAY_HAVE_GONE,
    UNSURE,
    leases_from,
    lost,
    remember_delivered,
    write_outcome,
)
from mqd.queue.postgresql.rows import delivered_json
from mqd.queue.postgresql.wake import Waker
from mqd.queue.store import Bounce, Lease

__all__ = ["LeaseHolder"]

log = logging.getLogger("mqd.daemon")

#: A connection named for the errors: in a transaction (the store's ``_tx``), or for one
#: statement that is its own (``_statement``).
Transaction = Callable[[str], AbstractAsyncContextManager[Conn]]

#: Bodies kept at the most (or twice a lease batch): more than a node's leases in flight only when
#: some lease ended in a way that did not let go of its body (a release that failed); the oldest go
#: first (a body let go of is read from the database if it is asked for after all).
MAX_KEPT = 256

#: A grouped write that deadlocked with an administrator's (rows locked in another order) is
#: rolled back whole: it is written again, this many times in all.
DEADLOCK_TRIES = 3


@dataclass(frozen=True, slots=True)
class _Fence:
    id: str
    token: int


@dataclass(frozen=True, slots=True)
class _Step(_Fence):
    """A dispatching mark, or a completion (the entry leaves the queue)."""

    completes: bool


@dataclass(frozen=True, slots=True)
class _Saved(_Fence):
    state: str
    attempts: int
    size: int
    due: float


class LeaseHolder:
    """The lease holder's side of ``PostgresStore`` (the store delegates to it)."""

    def __init__(
        self,
        tx: Transaction,
        statement: Transaction,
        *,
        node: str,
        clock: Clock,
        waker: Waker,
        lease_time: float,
    ) -> None:
        #: A transaction for several statements; a connection for one (its own transaction).
        self._tx = tx
        self._statement = statement
        self.node = node
        self.clock = clock
        self.waker = waker
        self.lease_time = lease_time
        #: The NOTIFY channel (known once the store's session is open).
        self.channel = ""
        #: Entries taken over with the dispatching mark set since the store opened.
        self.redispatched = 0
        #: The bodies that came with the leases in flight, until their delivery reads them.
        self._bodies: dict[str, bytes] = {}
        #: Dispatching marks and completions, written together.
        self.steps: GroupCommit[_Step, bool] = GroupCommit(self._mark_and_complete)
        self.saves: GroupCommit[_Saved, bool] = GroupCommit(self._save)

    async def close(self) -> None:
        await self.steps.close()
        await self.saves.close()
        self._bodies.clear()

    def abandon(self) -> None:
        self.steps.abandon()
        self.saves.abandon()
        self._bodies.clear()

    @property
    def kept_bodies(self) -> int:
        """How many bodies came with leases and were not read yet (bounded by the leases)."""
        return len(self._bodies)

    def _fence(self, lease: Lease, **extra: object) -> dict[str, object]:
        return {"id": lease.entry.id, "token": lease.token, "node": self.node, **extra}

    def _ended(self, lease: Lease) -> None:
        self._bodies.pop(lease.entry.id, None)

    # -- taking leases ----------------------------------------------------------------------------

    async def lease(self, limit: int) -> list[Lease]:
        if limit <= 0:
            return []
        now = self.clock.time()
        params = {"now": now, "limit": limit, "node": self.node, "expires": now + self.lease_time}
        async with self._statement("leasing due entries") as conn:
            # Binary rows: a body in bytea's text form is hex, twice its size, to decode.
            rows = await (await conn.execute(q.LEASE, params, binary=True)).fetchall()
        for row in rows:
            if row[-1] is not None:  # missing: ``body`` says so when the delivery asks
                self._bodies[row[0]] = bytes(row[-1])
        most = max(MAX_KEPT, 2 * limit)
        for stale in list(self._bodies)[: max(0, len(self._bodies) - most)]:
            del self._bodies[stale]
        leases = self._leases([row[:-1] for row in rows])
        self.waker.found(bool(leases))
        return leases

    def _leases(self, rows: Sequence[tuple[Any, ...]]) -> list[Lease]:
        leases, taken_over = leases_from(rows, self.node)
        for entry_id in taken_over:
            self.redispatched += 1
            log.warning("%s: %s", entry_id, MAY_HAVE_GONE)
        return leases

    async def lease_ids(self, ids: Sequence[str]) -> list[Lease]:
        wanted = list(dict.fromkeys(ids))
        now = self.clock.time()
        async with self._tx("leasing entries") as conn:
            await admin.lock_for_lease(conn, wanted, now)
            params = {"ids": wanted, "node": self.node, "expires": now + self.lease_time}
            rows = await (await conn.execute(q.LEASE_IDS, params)).fetchall()
        by_id = {lease.entry.id: lease for lease in self._leases(rows)}
        return [by_id[entry_id] for entry_id in wanted]

    async def renew(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        async with self._statement("renewing leases") as conn:
            await conn.execute(
                q.RENEW,
                {
                    "expires": self.clock.time() + self.lease_time,
                    "ids": [lease.entry.id for lease in leases],
                    "tokens": [lease.token for lease in leases],
                    "node": self.node,
                },
            )

    async def next_due(self) -> float | None:
        async with self._statement("reading the schedule") as conn:
            cursor = await conn.execute(q.NEXT_DUE, (self.node,))
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def body(self, entry: QueueEntry) -> bytes:
        """The body that came with the lease (once: the holder lets go of it), else read."""
        kept = self._bodies.pop(entry.id, None)
        if kept is not None:
            return kept
        async with self._statement("reading a message") as conn:
            cursor = await conn.execute("SELECT body FROM mqd_body WHERE id = %s", (entry.id,))
            row = await cursor.fetchone()
        if row is None:
            raise QueueError(f"{entry.id}: its message is missing from the queue database")
        return bytes(row[0])

    # -- the holder's writes ----------------------------------------------------------------------

    async def dispatching(self, lease: Lease) -> None:
        if not await self.steps.submit(_Step(lease.entry.id, lease.token, completes=False)):
            # Held since it was leased (else deleted or taken over: the release finds nothing):
            # given back now, due when it is released, rather than when the lease expires.
            with contextlib.suppress(QueueError):
                await self.release(lease)
            self._ended(lease)
            raise lost(lease)

    async def _mark_and_complete(self, steps: Sequence[_Step]) -> list[bool]:
        return await self._grouped(
            "marking entries as being sent, removing delivered ones",
            q.MARK_AND_COMPLETE,
            steps,
            completes=bool_array(step.completes for step in steps),
            expires=self.clock.time() + self.lease_time,
        )

    async def _grouped(
        self, what: str, statement: str, fences: Sequence[_Fence], **extra: object
    ) -> list[bool]:
        """Run the fenced ``statement`` for ``fences`` (it returns the ids whose lease held; it
        takes ``ids`` and ``tokens`` as text: ``%(ids)s::text[]``)."""
        params = {
            "ids": text_array(f.id for f in fences),
            "tokens": number_array(f.token for f in fences),
            "node": self.node,
            **extra,
        }
        for tried in range(1, DEADLOCK_TRIES + 1):
            try:
                async with self._statement(what) as conn:
                    rows = await (await conn.execute(statement, params)).fetchall()
                break
            except QueueError as exc:
                deadlock = isinstance(exc.__cause__, psycopg.errors.DeadlockDetected)
                if not deadlock or tried == DEADLOCK_TRIES:
                    raise
        kept = {row[0] for row in rows}
        return [f.id in kept for f in fences]

    def _state(self, entry: QueueEntry, **extra: object) -> dict[str, object]:
        state = entry.to_json().decode()
        return {"state": state, "attempts": entry.attempts, "size": entry.size, **extra}

    async def checkpoint(self, lease: Lease, entry: QueueEntry) -> None:
        async with self._statement("saving an entry") as conn:
            cursor = await conn.execute(q.CHECKPOINT, {**self._fence(lease), **self._state(entry)})
            if await cursor.fetchone() is None:
                self._ended(lease)
                raise lost(lease)

    async def save(self, lease: Lease, entry: QueueEntry, *, bounce: Bounce | None = None) -> None:
        if bounce is not None:  # in one transaction with its bounce
            now = self.clock.time()
            params = {
                **self._fence(lease),
                **self._state(entry, due=entry.next_attempt_at, now=now),
            }
            await self._fenced(lease, entry, q.SAVE, params, bounce)
            return
        self._ended(lease)
        saved = _Saved(
            lease.entry.id,
            lease.token,
            entry.to_json().decode(),
            entry.attempts,
            entry.size,
            entry.next_attempt_at,
        )
        if not await self.saves.submit(saved):
            await self._lost(lease, entry)
        self.waker.wake()

    async def _save(self, saved: Sequence[_Saved]) -> list[bool]:
        return await self._grouped(
            "saving entries",
            q.SAVE_GROUP,
            saved,
            states=[s.state for s in saved],
            attempts=[s.attempts for s in saved],
            sizes=[s.size for s in saved],
            dues=[s.due for s in saved],
            now=self.clock.time(),
        )

    async def complete(self, lease: Lease, entry: QueueEntry) -> None:
        self._ended(lease)
        if not await self.steps.submit(_Step(lease.entry.id, lease.token, completes=True)):
            await self._lost(lease, entry)
        self.waker.wake()

    async def fail(
        self,
        lease: Lease,
        entry: QueueEntry,
        record: FailureRecord,
        *,
        bounce: Bounce | None = None,
    ) -> None:
        params = self._fence(lease, now=self.clock.time(), record=json.dumps(record.to_dict()))
        await self._fenced(lease, entry, q.FAIL, params, bounce)

    async def _fenced(
        self,
        lease: Lease,
        entry: QueueEntry,
        statement: str,
        params: dict[str, object],
        bounce: Bounce | None = None,
    ) -> None:
        """Write the outcome fenced on ``lease``, with its bounce, in one transaction. A lost
        lease writes nothing but the delivered recipients, and raises LeaseLost."""
        self._ended(lease)
        now = self.clock.time()
        async with self._tx("saving an entry") as conn:
            kept = await write_outcome(
                conn, statement, params, now, bounce=bounce, channel=self.channel
            )
        if not kept:
            await self._lost(lease, entry)
        self.waker.wake()

    async def _lost(self, lease: Lease, entry: QueueEntry) -> None:
        """The lease was gone when its outcome came: keep what was delivered, then say so."""
        if delivered_json(entry):
            async with self._tx("keeping delivered recipients") as conn:
                await remember_delivered(conn, entry)
        raise lost(lease)

    async def release(self, lease: Lease, *, not_before: float | None = None) -> None:
        self._ended(lease)
        params = self._fence(lease, now=self.clock.time(), due=not_before)
        async with self._statement("giving an entry back") as conn:
            row = await (await conn.execute(q.RELEASE, params)).fetchone()
        if row is not None and row[0]:
            self.redispatched += 1
            log.warning("%s: %s", lease.entry.id, UNSURE)
        self.waker.wake()

    async def give_back(self, leases: Sequence[Lease]) -> None:
        for lease in leases:
            self._ended(lease)
        ids, tokens = [lease.entry.id for lease in leases], [lease.token for lease in leases]
        async with self._statement("giving entries back") as conn:
            params = {"ids": ids, "tokens": tokens, "node": self.node}
            rows = await (await conn.execute(q.GIVE_BACK, params)).fetchall()
        for entry_id, was_dispatching in rows:
            if was_dispatching:
                self.redispatched += 1
                log.warning("%s: %s", entry_id, UNSURE)
        self.waker.wake()
