"""The failed folder in PostgreSQL (``mqd_failed``): one row per message, its record as JSON
and its bytes (None when intake could not read them)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import psycopg

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.queue.failed import FailedError, FailedFolder, FailedMessage, FailureRecord
from mqd.queue.postgresql.connect import Conn, Database, connect
from mqd.queue.store import Refused

__all__ = ["PgFailedFolder", "insert_failed"]

Connector = Callable[[], contextlib.AbstractAsyncContextManager[Conn]]

_LOCK = "SELECT pg_advisory_lock(hashtextextended('mqd-failed:' || current_schema(), 0))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended('mqd-failed:' || current_schema(), 0))"


async def insert_failed(conn: Conn, now: float, items: Sequence[Refused]) -> None:
    """Put refused files into the folder: one pipeline (``executemany``) for the batch."""
    async with conn.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO mqd_failed (id, failed_at, record, body) VALUES (%s, %s, %s::jsonb, %s) "
            "ON CONFLICT (id) DO UPDATE SET failed_at = excluded.failed_at, "
            "record = excluded.record, body = excluded.body",
            [(i.entry_id, now, json.dumps(i.record.to_dict()), i.body) for i in items],
        )


class PgFailedFolder(FailedFolder):
    """The failed folder of a PostgreSQL queue: through the store's pool when it has one
    (``connection``), else a connection of its own per call (a command, no store open)."""

    def __init__(
        self,
        database: Database,
        *,
        clock: Clock = SYSTEM_CLOCK,
        connection: Connector | None = None,
    ) -> None:
        self.database = database
        self.clock = clock
        self._connection = connection

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Conn]:
        try:
            if self._connection is not None:
                async with self._connection() as conn:
                    yield conn
                return
            conn = await connect(self.database)
            try:
                yield conn
                await conn.commit()
            finally:
                await conn.close()
        except psycopg.Error as exc:
            raise FailedError(f"the failed folder in {self.database.shown}: {exc}") from exc

    async def _select(self, where: str, params: Sequence[Any]) -> list[FailedMessage]:
        async with self._conn() as conn:
            cursor = await conn.execute(
                "SELECT id, failed_at, record::text, body IS NOT NULL FROM mqd_failed "  # noqa: S608
                f"{where} ORDER BY failed_at, id".encode(),
                params,
            )
            rows = await cursor.fetchall()
        return [_message(*row) for row in rows]

    async def messages(self) -> list[FailedMessage]:
        return await self._select("", ())

    async def find(self, ids: Sequence[str]) -> list[FailedMessage]:
        chosen: dict[str, FailedMessage] = {}
        for wanted in ids:
            exact = await self._select("WHERE id = %s", (wanted,))
            matches = exact or (
                await self._select("WHERE left(id, length(%s)) = %s", (wanted, wanted))
                if wanted
                else []
            )
            if not matches:
                raise FailedError(f"no message {wanted!r} in the failed folder")
            if len(matches) > 1:
                raise FailedError(f"{wanted!r} is the start of {len(matches)} failed ids")
            chosen.setdefault(matches[0].id, matches[0])
        return list(chosen.values())

    async def read(self, message: FailedMessage) -> bytes:
        async with self._conn() as conn:
            cursor = await conn.execute("SELECT body FROM mqd_failed WHERE id = %s", (message.id,))
            row = await cursor.fetchone()
        if row is None or row[0] is None:
            raise FailedError(f"the message of {message.id} is missing (only its record is left)")
        return bytes(row[0])

    async def remove(self, message: FailedMessage) -> None:
        async with self._conn() as conn:
            await conn.execute("DELETE FROM mqd_failed WHERE id = %s", (message.id,))

    async def count(self) -> int:
        try:
            async with self._conn() as conn:
                row = await (await conn.execute("SELECT count(*) FROM mqd_failed")).fetchone()
        except FailedError:
            return 0
        return int(row[0]) if row else 0

    async def prune(self, before: float) -> list[str]:
        """One statement for the whole fleet's folder."""
        async with self._conn() as conn:
            cursor = await conn.execute(
                "DELETE FROM mqd_failed WHERE failed_at < %s RETURNING id", (before,)
            )
            return sorted(row[0] for row in await cursor.fetchall())

    @contextlib.asynccontextmanager
    async def changing(self) -> AsyncIterator[None]:
        """One changer at a time across the fleet: a session advisory lock held meanwhile."""
        conn = await connect(self.database, autocommit=True)
        try:
            await conn.execute(_LOCK)
            yield
        finally:
            with contextlib.suppress(psycopg.Error):
                await conn.execute(_UNLOCK)
            await conn.close()


def _message(entry_id: str, failed_at: float, record: str, has_body: bool) -> FailedMessage:
    try:
        parsed = FailureRecord.from_dict(json.loads(record))
    except (ValueError, TypeError):
        parsed = FailureRecord("unreadable", "its record cannot be read")
    return FailedMessage(
        entry_id,
        float(failed_at),
        parsed,
        f"postgresql:mqd_failed/{entry_id}" if has_body else None,
    )
