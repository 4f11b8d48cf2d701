"""Waking the scheduler when another node queued something, and the node's own session.

Polling always runs, with backoff: a short interval while leases find work, doubling up to
``POLL_MAX`` while they find none. Polling alone is enough (through PgBouncer in transaction
mode, where LISTEN cannot work). When the node's session can LISTEN, a NOTIFY (mqd sends at
most one per committed batch: an intake batch, a bounce, an administrator's release or retry)
wakes it at once, and the polling slows down to ``POLL_MAX_LISTENING``.

The node's session is one connection of its own, outside the pool: it holds the node's
advisory lock (one process per node name at a time: a second one is refused) and listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import psycopg
from psycopg import sql

from mqd.errors import QueueLockedError
from mqd.queue.postgresql.connect import Conn, Database, connect

__all__ = ["POLL_MAX", "POLL_MIN", "NodeSession", "Waker"]

log = logging.getLogger("mqd.daemon")

POLL_MIN = 0.2
POLL_MAX = 5.0
POLL_MAX_LISTENING = 15.0

#: Tries at the node's lock, this many seconds apart.
LOCK_TRIES = 3
LOCK_PAUSE = 0.3
_NODE_LOCK = (
    "SELECT pg_try_advisory_lock(hashtextextended('mqd-node:' || current_schema() || ':' || %s, 0))"
)


class Waker:
    """The subscribers of a store, woken by NOTIFY and by polling with backoff."""

    def __init__(self) -> None:
        self._wake: list[Callable[[], None]] = []
        self.listening = False
        self._interval = POLL_MIN

    def subscribe(self, wake: Callable[[], None]) -> None:
        self._wake.append(wake)

    def wake(self) -> None:
        for wake in self._wake:
            wake()

    def notified(self) -> None:
        """Something was queued somewhere: wake now, and poll soon again."""
        self._interval = POLL_MIN
        self.wake()

    def found(self, anything: bool) -> None:
        """What the last lease found: work keeps the polling quick, none slows it down."""
        ceiling = POLL_MAX_LISTENING if self.listening else POLL_MAX
        self._interval = POLL_MIN if anything else min(ceiling, self._interval * 2)

    async def poll(self) -> None:
        """Wake the subscribers every interval, for good."""
        while True:
            await asyncio.sleep(self._interval)
            self.wake()


class NodeSession:
    """The node's own connection: its lock, and LISTEN on the queue's channel."""

    def __init__(self, database: Database, node: str, waker: Waker) -> None:
        self.database = database
        self.node = node
        self.waker = waker
        self.conn: Conn | None = None
        self.channel = ""
        self._reader: asyncio.Task[None] | None = None

    async def open(self, check: Callable[[Conn], Awaitable[None]] | None = None) -> str:
        """Connect, take the node's lock, ``check`` the database, listen; returns the channel
        NOTIFY goes to. (Once it listens, the connection is the listener's alone.)"""
        conn = await connect(self.database, autocommit=True)
        try:
            for attempt in range(LOCK_TRIES):
                cursor = await conn.execute(_NODE_LOCK.encode(), (self.node,))
                row = await cursor.fetchone()
                if row is not None and row[0]:
                    break
                if attempt + 1 < LOCK_TRIES:  # a crashed predecessor's session may be ending
                    await asyncio.sleep(LOCK_PAUSE)
            else:
                raise QueueLockedError(
                    f"another mqd runs as node {self.node!r} on {self.database.shown}: each "
                    "node needs a name of its own (queue.node)"
                )
            if check is not None:
                await check(conn)
            cursor = await conn.execute("SELECT current_schema()")
            schema = await cursor.fetchone()
            self.channel = f"mqd_queue_{schema[0] if schema else 'public'}"
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            await conn.close()
            raise
        self.conn = conn
        self.waker.listening = True
        self._reader = asyncio.create_task(self._read(conn), name="mqd-queue-listen")
        return self.channel

    async def _read(self, conn: Conn) -> None:
        try:
            async for _ in conn.notifies():
                self.waker.notified()
        except psycopg.Error as exc:
            # The session is gone (the server restarted, a proxy cut it): polling goes on; the
            # node's lock went with it, which the fenced writes make harmless.
            log.warning("the queue database's notifications stopped (%s): polling", exc)
        finally:
            self.waker.listening = False

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await self._reader
            self._reader = None
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self.conn.close()
            self.conn = None

    def abandon(self) -> asyncio.Task[None]:
        """What a crash does (for tests): the connection drops, its lock with it; nothing else
        is written. Returns the task that drops it."""
        return asyncio.get_running_loop().create_task(self.close())
