"""The PostgreSQL store: one queue shared by many nodes, leases fenced by tokens, a mark before
each send (taken over or given back with it: counted, logged). See docs/scale-out.md; ``schema``
has the tables, ``statements`` the SQL, ``admin`` the administrator's acts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.errors import QueueError
from mqd.queue.entry import QueueEntry
from mqd.queue.failed import FailureRecord
from mqd.queue.postgresql import admin
from mqd.queue.postgresql import statements as q
from mqd.queue.postgresql.connect import Conn, Database, fresh_pool, translated, unavailable
from mqd.queue.postgresql.failed import PgFailedFolder, insert_failed
from mqd.queue.postgresql.fleet import PgFleet
from mqd.queue.postgresql.keys import Handed, PgKeys
from mqd.queue.postgresql.outcomes import (
    MAY_HAVE_GONE,
    UNSURE,
    leases_from,
    lost,
    remember_delivered,
    write_outcome,
)
from mqd.queue.postgresql.rows import delivered_json
from mqd.queue.postgresql.schema import schema_status
from mqd.queue.postgresql.wake import NodeSession, Waker
from mqd.queue.store import (
    AcceptError,
    Bounce,
    Incoming,
    Lease,
    Listed,
    QueueCounts,
    QueueStore,
    Refused,
)

__all__ = ["ACCEPTED_RETENTION", "LEASE_TIME", "PostgresStore"]

log = logging.getLogger("mqd.daemon")

#: A lease not renewed for this long expires: another node may take the entry.
LEASE_TIME = 60.0
#: Accepted ids are remembered this long (a crash between intake's commit and the removal of
#: its claimed files is caught up with much sooner).
ACCEPTED_RETENTION = 7 * 86400.0


class PostgresStore(QueueStore):
    def __init__(
        self,
        database: Database,
        *,
        node: str,
        clock: Clock = SYSTEM_CLOCK,
        pool_size: int = 10,
        lease_time: float = LEASE_TIME,
    ) -> None:
        self.database = database
        self.node = node
        self.clock = clock
        self.lease_time = lease_time
        self.lease_renewal = lease_time / 3
        self.pool_size = pool_size
        self.waker = Waker()
        self.session = NodeSession(database, node, self.waker)
        self.failed = PgFailedFolder(database, clock=clock, connection=self._connection)
        self.channel = ""
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._abandoned: list[asyncio.Task[None]] = []
        #: Entries taken over with the dispatching mark set since this store opened.
        self.redispatched = 0
        self._fleet = PgFleet(node, self._tx)
        self.keys = PgKeys()

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> list[str]:
        # Connected, this node's name is ours, the schema is the one this mqd knows.
        self.channel = await self.session.open(self._check_schema)
        try:
            return await self._recover()
        except BaseException:
            await self.close()
            raise

    async def _check_schema(self, conn: Conn) -> None:
        async with translated(self.database, "reading the schema version"):
            (await schema_status(conn)).require()

    async def _recover(self) -> list[str]:
        pool = self.database.pool(max_size=self.pool_size)
        try:
            await pool.open(wait=True, timeout=30.0)
        except Exception as exc:
            raise unavailable(self.database, exc) from exc
        self._pool = pool
        notes: list[str] = []
        async with self._tx("recovering this node's leases") as conn:
            cursor = await conn.execute(q.RECOVER, (self.node,))
            given_back = await cursor.fetchall()
            await conn.execute(q.PRUNE_ACCEPTED, (self.clock.time() - ACCEPTED_RETENTION,))
        if given_back:
            notes.append(
                f"{len(given_back)} entry(ies) this node ({self.node}) held when it stopped "
                "are due again"
            )
        for entry_id, was_dispatching in given_back:
            if was_dispatching:
                self.redispatched += 1
                log.warning("%s: %s", entry_id, MAY_HAVE_GONE)
        self._poller = asyncio.create_task(self.waker.poll(), name="mqd-queue-poll")
        return notes

    async def close(self) -> None:
        await self._stop_poller()
        await self.session.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _stop_poller(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    def abandon(self) -> None:
        """What a crash does (for tests): the connections drop, nothing is written."""
        if self._poller is not None:
            self._poller.cancel()
        self._abandoned = [self.session.abandon()]
        if self._pool is not None:
            pool, self._pool = self._pool, None
            self._abandoned.append(asyncio.get_running_loop().create_task(pool.close(timeout=0)))

    def subscribe(self, wake: Callable[[], None]) -> None:
        self.waker.subscribe(wake)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        if self._pool is None:
            raise QueueError("the queue store is not open")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:  # a server back after an outage is used at once, not in a minute
            stale, keep = self._pool, self._abandoned
            self._pool = await fresh_pool(self.database, self.pool_size, stale, keep)
            raise
        except psycopg.OperationalError:  # the server went away: its idle connections with it
            self._abandoned.append(asyncio.get_running_loop().create_task(self._pool.check()))
            raise

    @contextlib.asynccontextmanager
    async def _tx(self, what: str) -> AsyncIterator[Conn]:
        """A connection in a transaction (committed at the end, else rolled back), mqd's errors."""
        async with translated(self.database, what), self._connection() as conn:
            yield conn

    async def _notify(self, conn: Conn) -> None:
        """One NOTIFY for this transaction's batch (sent when it commits)."""
        await conn.execute(q.NOTIFY, (self.channel,))

    # -- intake -----------------------------------------------------------------------------------

    async def accept(self, batch: Sequence[Incoming]) -> dict[str, Handed]:
        if not batch:
            return {}
        try:
            async with self._tx("queueing a batch") as conn:
                repeats = await self.keys.queue(conn, batch, self.clock.time(), self.channel)
        except QueueError as exc:
            raise AcceptError(f"cannot queue {len(batch)} message(s): {exc}") from exc
        self.waker.notified()
        return repeats

    async def refuse(self, batch: Sequence[Refused]) -> None:
        if not batch:
            return
        async with self._tx("writing to the failed folder") as conn:
            await insert_failed(conn, self.clock.time(), batch)

    # -- the schedule -----------------------------------------------------------------------------

    async def lease(self, limit: int) -> list[Lease]:
        if limit <= 0:
            return []
        now = self.clock.time()
        params = {"now": now, "limit": limit, "node": self.node, "expires": now + self.lease_time}
        async with self._tx("leasing due entries") as conn:
            rows = await (await conn.execute(q.LEASE, params)).fetchall()
        leases = self._leases(rows)
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
        async with self._tx("renewing leases") as conn:
            await conn.execute(
                q.RENEW,
                (
                    self.clock.time() + self.lease_time,
                    [lease.entry.id for lease in leases],
                    [lease.token for lease in leases],
                    self.node,
                ),
            )

    async def next_due(self) -> float | None:
        async with self._tx("reading the schedule") as conn:
            cursor = await conn.execute(q.NEXT_DUE, (self.node,))
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def body(self, entry: QueueEntry) -> bytes:
        async with self._tx("reading a message") as conn:
            cursor = await conn.execute("SELECT body FROM mqd_body WHERE id = %s", (entry.id,))
            row = await cursor.fetchone()
        if row is None:
            raise QueueError(f"{entry.id}: its message is missing from the queue database")
        return bytes(row[0])

    def _fence(self, lease: Lease, **extra: object) -> dict[str, object]:
        return {"id": lease.entry.id, "token": lease.token, "node": self.node, **extra}

    async def dispatching(self, lease: Lease) -> None:
        now = self.clock.time()
        async with self._tx("marking an entry as being sent") as conn:
            cursor = await conn.execute(
                q.DISPATCHING, self._fence(lease, expires=now + self.lease_time)
            )
            if await cursor.fetchone() is None:
                raise lost(lease)

    def _state(self, entry: QueueEntry, **extra: object) -> dict[str, object]:
        state = entry.to_json().decode()
        return {"state": state, "attempts": entry.attempts, "size": entry.size, **extra}

    async def checkpoint(self, lease: Lease, entry: QueueEntry) -> None:
        async with self._tx("saving an entry") as conn:
            cursor = await conn.execute(q.CHECKPOINT, {**self._fence(lease), **self._state(entry)})
            if await cursor.fetchone() is None:
                raise lost(lease)

    async def save(self, lease: Lease, entry: QueueEntry, *, bounce: Bounce | None = None) -> None:
        now = self.clock.time()
        params = {**self._fence(lease), **self._state(entry, due=entry.next_attempt_at, now=now)}
        await self._fenced(lease, entry, q.SAVE, params, bounce)

    async def complete(self, lease: Lease, entry: QueueEntry) -> None:
        await self._fenced(lease, entry, q.COMPLETE, self._fence(lease))

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
        now = self.clock.time()
        async with self._tx("saving an entry") as conn:
            kept = await write_outcome(
                conn, statement, params, now, bounce=bounce, channel=self.channel
            )
        if not kept:
            if delivered_json(entry):
                async with self._tx("keeping delivered recipients") as conn:
                    await remember_delivered(conn, entry)
            raise lost(lease)
        self.waker.wake()

    async def release(self, lease: Lease, *, not_before: float | None = None) -> None:
        params = self._fence(lease, now=self.clock.time(), due=not_before)
        async with self._tx("giving an entry back") as conn:
            row = await (await conn.execute(q.RELEASE, params)).fetchone()
        if row is not None and row[0]:
            self.redispatched += 1
            log.warning("%s: %s", lease.entry.id, UNSURE)
        self.waker.wake()

    async def give_back(self, leases: Sequence[Lease]) -> None:
        ids, tokens = [lease.entry.id for lease in leases], [lease.token for lease in leases]
        async with self._tx("giving entries back") as conn:
            rows = await (await conn.execute(q.GIVE_BACK, (ids, tokens, self.node))).fetchall()
        for entry_id, was_dispatching in rows:
            if was_dispatching:
                self.redispatched += 1
                log.warning("%s: %s", entry_id, UNSURE)
        self.waker.wake()

    # -- administration ---------------------------------------------------------------------------

    async def entries(self) -> list[Listed]:
        async with self._tx("listing the queue") as conn:
            return await admin.entries(conn, self.clock.time())

    async def find(self, wanted: Sequence[str]) -> dict[str, str]:
        async with self._tx("finding entries") as conn:
            return await admin.find(conn, wanted)

    async def get(self, entry_id: str) -> Listed:
        async with self._tx("reading an entry") as conn:
            return await admin.get(conn, entry_id, self.clock.time())

    async def hold(self, ids: Sequence[str]) -> list[str]:
        async with self._tx("holding entries") as conn:
            return await admin.hold(conn, ids)

    async def unhold(self, ids: Sequence[str] | None) -> list[str]:
        async with self._tx("releasing entries") as conn:
            done = await admin.unhold(conn, ids, self.clock.time())
            if done:
                await self._notify(conn)
        if done:
            self.waker.wake()
        return done

    async def retry(self, ids: Sequence[str] | None, *, relay: str | None = None) -> list[str]:
        async with self._tx("retrying entries") as conn:
            done = await admin.retry(conn, ids, relay, self.clock.time())
            if done:
                await self._notify(conn)
        if done:
            self.waker.wake()
        return done

    async def delete(self, ids: Sequence[str]) -> list[QueueEntry]:
        async with self._tx("deleting entries") as conn:
            return await admin.delete(conn, ids, self.clock.time())

    async def counts(self) -> QueueCounts:
        async with self._tx("counting the queue") as conn:
            counts = await admin.counts(conn, self.clock.time())
        return admin.with_redispatched(counts, self.redispatched)

    async def queued(self) -> int:
        async with self._tx("counting the queue") as conn:
            row = await (await conn.execute("SELECT count(*) FROM mqd_entry")).fetchone()
        return int(row[0]) if row else 0

    def fleet(self) -> PgFleet:
        return self._fleet

    # -- a node's small state ---------------------------------------------------------------------

    async def load_state(self, name: str) -> bytes | None:
        async with self._tx("reading the node's state") as conn:
            cursor = await conn.execute(q.LOAD_STATE, (self.node, name))
            row = await cursor.fetchone()
        return None if row is None else bytes(row[0])

    async def save_state(self, name: str, data: bytes) -> None:
        async with self._tx("saving the node's state") as conn:
            await conn.execute(q.SAVE_STATE, (self.node, name, data))
