"""The PostgreSQL store: one queue shared by many nodes, leases fenced by tokens, a mark before
each send (taken over or given back with it: counted, logged). See docs/scale-out.md; ``schema``
has the tables, ``statements`` the SQL, ``leases`` the holder's side (leases, their bodies,
the writes fenced on them, grouped), ``admin`` the administrator's acts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

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
from mqd.queue.postgresql.leases import LeaseHolder
from mqd.queue.postgresql.outcomes import MAY_HAVE_GONE
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
        self.leases_in_batches = True
        self.pool_size = pool_size
        self.waker = Waker()
        self.session = NodeSession(database, node, self.waker)
        self.failed = PgFailedFolder(database, clock=clock, connection=self._transaction)
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._abandoned: list[asyncio.Task[None]] = []
        self.holder = LeaseHolder(
            self._tx,
            self._statement,
            node=node,
            clock=clock,
            waker=self.waker,
            lease_time=lease_time,
        )
        self._fleet = PgFleet(node, self._tx)
        self.keys = PgKeys()

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> list[str]:
        # Connected, this node's name is ours, the schema is the one this mqd knows.
        self.holder.channel = await self.session.open(self._check_schema)
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
                self.holder.redispatched += 1
                log.warning("%s: %s", entry_id, MAY_HAVE_GONE)
        self._poller = asyncio.create_task(self.waker.poll(), name="mqd-queue-poll")
        return notes

    @property
    def channel(self) -> str:
        return self.holder.channel

    @property
    def redispatched(self) -> int:
        """Entries taken over with the dispatching mark set since this store opened."""
        return self.holder.redispatched

    async def close(self) -> None:
        await self.holder.close()
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
        self.holder.abandon()
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
    async def _transaction(self) -> AsyncIterator[Conn]:
        """A pooled connection in a transaction (committed at the end, else rolled back)."""
        async with self._connection() as conn, conn.transaction():
            yield conn

    @contextlib.asynccontextmanager
    async def _tx(self, what: str) -> AsyncIterator[Conn]:
        """A connection in a transaction (committed at the end, else rolled back), mqd's errors."""
        async with translated(self.database, what), self._transaction() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _statement(self, what: str) -> AsyncIterator[Conn]:
        """A connection for one statement, its own transaction (autocommit), mqd's errors."""
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
        return await self.holder.lease(limit)

    async def lease_ids(self, ids: Sequence[str]) -> list[Lease]:
        return await self.holder.lease_ids(ids)

    async def renew(self, leases: Sequence[Lease]) -> None:
        await self.holder.renew(leases)

    async def next_due(self) -> float | None:
        return await self.holder.next_due()

    async def body(self, entry: QueueEntry) -> bytes:
        return await self.holder.body(entry)

    async def dispatching(self, lease: Lease) -> None:
        await self.holder.dispatching(lease)

    async def checkpoint(self, lease: Lease, entry: QueueEntry) -> None:
        await self.holder.checkpoint(lease, entry)

    async def save(self, lease: Lease, entry: QueueEntry, *, bounce: Bounce | None = None) -> None:
        await self.holder.save(lease, entry, bounce=bounce)

    async def complete(self, lease: Lease, entry: QueueEntry) -> None:
        await self.holder.complete(lease, entry)

    async def fail(
        self,
        lease: Lease,
        entry: QueueEntry,
        record: FailureRecord,
        *,
        bounce: Bounce | None = None,
    ) -> None:
        await self.holder.fail(lease, entry, record, bounce=bounce)

    async def release(self, lease: Lease, *, not_before: float | None = None) -> None:
        await self.holder.release(lease, not_before=not_before)

    async def give_back(self, leases: Sequence[Lease]) -> None:
        await self.holder.give_back(leases)

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
        async with self._statement("counting the queue") as conn:
            row = await (await conn.execute("SELECT count(*) FROM mqd_entry")).fetchone()
        return int(row[0]) if row else 0

    def fleet(self) -> PgFleet:
        return self._fleet

    # -- a node's small state ---------------------------------------------------------------------

    async def load_state(self, name: str) -> bytes | None:
        async with self._statement("reading the node's state") as conn:
            cursor = await conn.execute(q.LOAD_STATE, (self.node, name))
            row = await cursor.fetchone()
        return None if row is None else bytes(row[0])

    async def save_state(self, name: str, data: bytes) -> None:
        async with self._statement("saving the node's state") as conn:
            await conn.execute(q.SAVE_STATE, (self.node, name, data))
