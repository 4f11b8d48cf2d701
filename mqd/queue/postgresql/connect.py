"""Reaching the database: the DSN and its password, one connection, the pool, and the one seam
where psycopg's errors become mqd's (a DSN is only ever shown with its password hidden)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from mqd.errors import QueueError, QueueUnavailableError

__all__ = [
    "Conn",
    "Database",
    "connect",
    "redacted",
    "translated",
]

#: A connection whose rows are tuples.
Conn = psycopg.AsyncConnection[TupleRow]
#: Seconds to wait for the server when connecting.
CONNECT_TIMEOUT = 10
#: Seconds a statement waits for a pooled connection (while the server is down: then the
#: caller's fault says so, once, and retries with backoff).
POOL_WAIT = 10.0

#: Seconds the pool keeps trying to replace a connection before it gives that up.
RECONNECT_WITHIN = 4.0

# The pool logs every failed reconnection as a WARNING (many a second while the server is
# down); mqd says it once itself (the scheduler's and intake's faults).
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def redacted(dsn: str) -> str:
    """``dsn`` with any password in it replaced by ``****`` (URL or key=value form)."""
    url = re.sub(r"^(postgres(?:ql)?://[^:/@]*):[^@]*@", r"\1:****@", dsn)
    if url != dsn or "://" in dsn:
        return re.sub(r"([?&]password=)[^&]*", r"\1****", url)
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unreadable DSN)"
    if "password" in params:
        params["password"] = "****"  # noqa: S105 (a mask, not a password)
    return make_conninfo(**{k: str(v) for k, v in params.items()})


@dataclass(frozen=True)
class Database:
    """Where the queue is: the DSN, and the password given apart from it (a secret file)."""

    dsn: str
    password: str | None = None

    def __repr__(self) -> str:
        return f"Database({redacted(self.dsn)!r})"

    @property
    def shown(self) -> str:
        return redacted(self.dsn)

    def kwargs(self) -> dict[str, Any]:
        params: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT}
        if self.password is not None:
            params["password"] = self.password
        return params

    def pool(self, *, max_size: int) -> AsyncConnectionPool[Conn]:
        """A pool of connections (not opened yet: ``await pool.open(wait=True)``), in
        autocommit: a statement alone is its own transaction, one round trip where psycopg's
        implicit transaction takes three (BEGIN, it, COMMIT); several that must go together
        take ``conn.transaction()``."""
        return AsyncConnectionPool(
            self.dsn,
            kwargs={**self.kwargs(), "autocommit": True},
            min_size=1,
            max_size=max(1, max_size),
            open=False,
            name="mqd-queue",
            timeout=POOL_WAIT,
            # A connection it cannot make is given up after this (and made again when a
            # statement wants one), rather than tried ever less often (1, 2, 4 ... 64 s apart)
            # while the server is away: once it is back, the next statement connects.
            reconnect_timeout=RECONNECT_WITHIN,
        )


async def fresh_pool(
    database: Database, max_size: int, stale: AsyncConnectionPool[Conn], keep: list[Any]
) -> AsyncConnectionPool[Conn]:
    """A new pool in place of ``stale``, which had no connection to give for ``POOL_WAIT``:
    after the server was away, a pool's reconnection attempts back off (to half a minute and
    more), so a server back meanwhile would go unused that long. ``stale`` closes in the
    background (its connections in use when they are returned); ``keep`` holds that task."""
    pool = database.pool(max_size=max_size)
    await pool.open(wait=False)
    keep.append(asyncio.get_running_loop().create_task(stale.close(timeout=0)))
    return pool


async def connect(database: Database, *, autocommit: bool = False) -> Conn:
    """One connection of its own; QueueUnavailableError naming the DSN when it cannot be had."""
    try:
        return await psycopg.AsyncConnection.connect(
            database.dsn, autocommit=autocommit, **database.kwargs()
        )
    except psycopg.Error as exc:
        raise unavailable(database, exc) from exc


def unavailable(database: Database, exc: BaseException) -> QueueUnavailableError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return QueueUnavailableError(f"cannot reach the queue database {database.shown}: {reason}")


@contextlib.asynccontextmanager
async def translated(database: Database, what: str) -> AsyncIterator[None]:
    """psycopg's errors as mqd's: QueueUnavailableError when the connection is the trouble,
    QueueError otherwise (chained, so the cause shows in a debug log)."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise unavailable(database, exc) from exc
    except psycopg.Error as exc:
        raise QueueError(f"{what}: {exc}") from exc
