"""The PostgreSQL store's hand-over keys (``mqd.queue.keys``): ``mqd_handover``, one row per
(scope, key), written in the transaction that queues its entry, so a key is known exactly when
its entry was queued, to every node.

A key is claimed by an upsert that takes the row only when it is new, expired, or already this
entry's (an accept repeated after a crash): a claim racing another node's for the same key waits
for that transaction (the primary key's lock) and then finds its row, committed or not there.
Keys are claimed in one order (sorted) so that two batches never wait on each other in a cycle.
Expired rows are ignored at once and deleted by the next keyed accept of a node after
``PRUNE_EVERY``, a bounded number at a time, skipping rows another accept holds (so the prune
never waits on, nor deadlocks with, a claim).
"""

from __future__ import annotations

from collections.abc import Sequence

from mqd.errors import QueueError
from mqd.queue.keys import PRUNE_EVERY, Handed, KeyIndex, split_batch
from mqd.queue.postgresql.connect import Conn
from mqd.queue.postgresql.rows import insert_entries
from mqd.queue.postgresql.statements import NOTIFY
from mqd.queue.store import Incoming

__all__ = ["Handed", "PgKeys"]

#: At most this many expired keys are deleted by one accept's transaction.
PRUNE_LIMIT = 10_000

_CLAIM = """
INSERT INTO mqd_handover AS h (scope, key, id, note, expires)
SELECT * FROM unnest(
    %(scopes)s::text[], %(keys)s::text[], %(ids)s::text[], %(notes)s::text[], %(expires)s::float8[]
)
ON CONFLICT (scope, key) DO UPDATE
SET id = excluded.id, note = excluded.note, expires = excluded.expires
WHERE h.expires <= %(now)s OR h.id = excluded.id
RETURNING id
"""
_FIRST = """
SELECT h.scope, h.key, h.id, h.note FROM mqd_handover h
JOIN unnest(%(scopes)s::text[], %(keys)s::text[]) AS k(scope, key) USING (scope, key)
"""
_PRUNE = """
DELETE FROM mqd_handover WHERE ctid IN (
    SELECT ctid FROM mqd_handover WHERE expires <= %(now)s LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
"""


class PgKeys:
    def __init__(self) -> None:
        self._next_prune = 0.0

    async def queue(
        self, conn: Conn, batch: Sequence[Incoming], now: float, channel: str
    ) -> dict[str, Handed]:
        """In ``conn``'s transaction: queue ``batch`` but the items whose key is taken, and
        NOTIFY ``channel`` (the other nodes); returns those ({entry id: the first hand-over})."""
        fresh, repeats = await self.claim(conn, batch, now)
        await insert_entries(conn, [(i.entry, i.body) for i in fresh], now)
        await conn.execute(NOTIFY, (channel,))
        return repeats

    async def claim(
        self, conn: Conn, batch: Sequence[Incoming], now: float
    ) -> tuple[list[Incoming], dict[str, Handed]]:
        """In ``conn``'s transaction: claim the batch's keys; returns the items to queue and the
        repeats ({entry id: the first hand-over})."""
        fresh, repeats = split_batch(((i, i.entry.id, i.key) for i in batch), KeyIndex(), now)
        keyed = sorted(
            (i for i in fresh if i.key is not None),
            key=lambda i: (i.key.scope, i.key.key) if i.key is not None else ("", ""),
        )
        if not keyed:
            return fresh, repeats
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            await conn.execute(_PRUNE, {"now": now, "limit": PRUNE_LIMIT})
        keys = [i.key for i in keyed if i.key is not None]
        params = {
            "scopes": [k.scope for k in keys],
            "keys": [k.key for k in keys],
            "ids": [i.entry.id for i in keyed],
            "notes": [k.note for k in keys],
            "expires": [k.expires for k in keys],
            "now": now,
        }
        claimed = {row[0] for row in await (await conn.execute(_CLAIM, params)).fetchall()}
        lost = [i for i in keyed if i.entry.id not in claimed]
        if not lost:
            return fresh, repeats
        lost_keys = [i.key for i in lost if i.key is not None]
        wanted = {"scopes": [k.scope for k in lost_keys], "keys": [k.key for k in lost_keys]}
        rows = await (await conn.execute(_FIRST, wanted)).fetchall()
        first = {(scope, key): Handed(id, note, replayed=True) for scope, key, id, note in rows}
        for key, item in zip(lost_keys, lost, strict=True):
            handed = first.get((key.scope, key.key))
            if handed is None:  # pruned meanwhile by a node whose clock is ahead: try again
                raise QueueError(f"the hand-over key {key.key!r} changed while it was queued")
            repeats[item.entry.id] = handed
        # Repeats within the batch of an item that lost its key repeat what it repeats.
        for entry_id, handed in list(repeats.items()):
            if handed.id in repeats and handed.id != entry_id:
                repeats[entry_id] = repeats[handed.id]
        return [i for i in fresh if i.key is None or i.entry.id in claimed], repeats
