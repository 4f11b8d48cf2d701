"""The file store: the queue as files in one directory, for one process (one node).

The schedule lives in memory (``mqd.queue.schedule``): leases are trivial in one process (they
end with it). What is durable, and when, is ``mqd.queue.file.layout`` and ``recovery``'s story.

Intake hands over claimed files and the store renames them into ``messages/`` (no copy); their
directory is fsynced in the background, one batch at a time: a crash before that leaves each
file in intake's claim area or here, both recovered. A message never attempted has no state
file: its body is its record, and after a restart its entry is rebuilt from it (``rebuild``,
intake's parse, route and policy) when its turn comes. So a large queue starts in a second: at
most ``active_limit`` never-attempted entries are held in memory, the rest are listed by id
(``Backlog``) and read a little ahead of the deliveries, as Postfix's active queue limit does.

A body just accepted is kept in memory for its first delivery (small ones, a few MiB in all):
a message delivered right away then costs no second read and no thread hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.queue.entry import QueueEntry
from mqd.queue.failed import FailureRecord
from mqd.queue.file.admin import FileAdmin
from mqd.queue.file.backlog import Backlog
from mqd.queue.file.disk import Disk
from mqd.queue.file.failed import FileFailedFolder
from mqd.queue.file.io import BodyCache
from mqd.queue.file.keys import KeyJournal
from mqd.queue.file.layout import Layout
from mqd.queue.file.rebuild import Rebuild, Unread
from mqd.queue.file.recovery import Recovered, recover
from mqd.queue.keys import Handed
from mqd.queue.schedule import Schedule
from mqd.queue.store import AcceptError, Bounce, Incoming, Lease, QueueStore, Refused

__all__ = ["FileStore"]

log = logging.getLogger("mqd.queue")

#: Unread bodies read, rebuilt and scheduled per worker-thread hop.
READ_BATCH = 512
#: The backlog is read this far ahead of the deliveries (and never past ``active_limit``): a
#: body read is then delivered within a second or so, while it is still kept in memory.
READ_AHEAD = 1024
#: A read of the backlog that failed is tried again this much later.
READ_RETRY = 1.0


class FileStore(FileAdmin, QueueStore):
    def __init__(
        self,
        directory: Path,
        *,
        rebuild: Rebuild,
        failed_dir: Path | None = None,
        active_limit: int = 10_000,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """``failed_dir``: the failed folder when it is not the queue's own (the workers of
        ``queue.workers`` share the first one's)."""
        self.directory = directory
        self.layout = Layout(directory)
        self.folder = FileFailedFolder(failed_dir or directory / "failed")
        self.failed = self.folder
        self.disk = Disk(self.layout, self.folder)
        self.node = directory.name
        self.clock = clock
        self.rebuild = rebuild
        self.active_limit = active_limit
        self.schedule = Schedule(self.node, clock=clock)
        self.backlog = Backlog()
        #: Entries held in memory and never attempted, held or removed: what ``active_limit``
        #: bounds.
        self.fresh: set[str] = set()
        #: Entries accepted with no state file yet (their body is their record).
        self.unsaved: set[str] = set()
        self.kept = BodyCache()
        self.keys = KeyJournal(self.layout.keys_path, clock)
        self.disk.before_removal = self.keys.sync_confirmed
        self._room = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        #: Bounces written, waiting for their bounced entry to note them (by its id).
        self._unsent: dict[str, QueueEntry] = {}
        #: Backlog bodies being read (lease waits for them rather than miss them).
        self._reading: asyncio.Future[None] | None = None
        #: Backlog entries being read: counted against ``active_limit`` (two readers may race).
        self._in_transit = 0

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> list[str]:
        found = await asyncio.to_thread(self._open)
        for entry in found.entries:
            self.schedule.add(entry)
        self.backlog.add_each(found.unread)
        await self._apply_flushes()
        self._reader = asyncio.get_running_loop().create_task(
            self._read_ahead(), name="mqd-queue-read-ahead"
        )
        self._room.set()
        if found.unread:
            found.notes.append(
                f"{len(found.unread)} message(s) accepted and never attempted: read from their "
                "bodies as deliveries make room"
            )
        return found.notes

    def _open(self) -> Recovered:
        self.layout.create()
        self.layout.lock()
        self.node = self.layout.queue_key()
        self.schedule.node = self.node
        found = recover(self.layout, str(self.folder.directory))
        queued = {entry.id for entry in found.entries} | {i for _, i in found.unread}
        found.notes += self.keys.load(queued.__contains__) + self.keys.carry_over()
        # Bodies accepted before a crash may not be on disk yet: one sync for all of them rather
        # than an fsync each (100,000 of them cost ~25 s of fsyncs). (No os.sync on Windows.)
        if found.unread and hasattr(os, "sync"):
            os.sync()
        problem = self.folder.writable()
        if problem is not None:
            message = "the failed folder cannot be written (%s): refused and failed messages wait"
            log.warning(message + " where they are until it can", problem)
        return found

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        await self.disk.settle()
        self.disk.close()
        self.layout.unlock()

    def subscribe(self, wake: Callable[[], None]) -> None:
        self.schedule.subscribe(wake)

    # -- intake -----------------------------------------------------------------------------------

    async def accept(self, batch: Sequence[Incoming]) -> dict[str, Handed]:
        if any(item.key is not None for item in batch):
            return await self.keys.accept(batch, self._accept)
        await self._accept(batch)
        return {}

    async def _accept(self, batch: Sequence[Incoming]) -> None:
        taken: list[Incoming] = []
        writes: list[Incoming] = []
        later: list[Incoming] = []
        error: BaseException | None = None
        for item in batch:
            entry_id = item.entry.id
            if entry_id in self.schedule or entry_id in self.backlog:
                continue  # accepted before (a claim recovered after a crash)
            if item.entry.send_at is not None:
                later.append(item)  # its plan is not in its body: it gets a state file
                continue
            try:
                if item.file is not None and self.disk.adopt(item.file, item.entry):
                    taken.append(item)
                    continue
            except OSError as exc:
                error = exc
                break
            writes.append(item)
        adopted = [item.entry.source for item in taken]
        for group, with_state in ((writes, False), (later, True)):
            if not group or error is not None:
                continue
            items = [(i.entry, i.body) for i in group]
            results = await self.disk.write_bodies(items, with_state=with_state)
            for item, result in zip(group, results, strict=True):
                if result is None:
                    taken.append(item)
                elif error is None:
                    error = result
        for item in taken:
            if item.entry.send_at is None:
                self._admit(item.entry, item.body)
            else:  # planned like a deferred entry: neither fresh nor its body kept in memory
                self.schedule.add(item.entry)
        if adopted:
            await self.disk.sync_in_background(adopted)
        if error is not None:
            raise AcceptError(
                f"cannot write the queue directory {self.directory}: {error}",
                [item.entry.id for item in taken],
            ) from error

    def _admit(self, entry: QueueEntry, body: bytes | None) -> None:
        """A message just accepted: scheduled, or, once ``active_limit`` never-attempted ones
        are in memory (or older ones wait unread), listed in the backlog: its body is its
        record. Memory then stays bounded while a flood comes in faster than it goes out."""
        self.unsaved.add(entry.id)
        if self.backlog or len(self.fresh) >= self.active_limit:
            self.backlog.add(entry.source, [entry.id])
            return
        if body is not None:
            self.kept.keep(entry.id, body)
        self.fresh.add(entry.id)
        self.schedule.add(entry)

    async def refuse(self, batch: Sequence[Refused]) -> None:
        items = [(r.entry_id, r.record, r.file, r.body) for r in batch]
        for result in await self.disk.refuse(items):
            if result is not None:
                raise result

    # -- the schedule -----------------------------------------------------------------------------

    async def lease(self, limit: int) -> list[Lease]:
        leases = self.schedule.due(limit)
        if len(leases) < limit and self._reading is not None:
            await self.settled()
            leases += self.schedule.due(limit - len(leases))
        room = self._room_ahead()
        if len(leases) < limit and self.backlog and room > 0:
            await self._read_unread(min(READ_BATCH, room))
            leases += self.schedule.due(limit - len(leases))
        return leases

    async def settled(self) -> None:
        while self._reading is not None:
            await asyncio.shield(self._reading)  # bodies on their way from the backlog

    def _room_ahead(self) -> int:
        """How many more never-attempted entries may be read into memory now."""
        return min(self.active_limit, READ_AHEAD) - len(self.fresh) - self._in_transit

    async def lease_ids(self, ids: Sequence[str]) -> list[Lease]:
        await self._read_out_of_turn(ids)
        return self.schedule.lease_ids(ids)

    async def next_due(self) -> float | None:
        if self.backlog and self._room_ahead() > 0:
            return self.clock.time()
        return self.schedule.next_due()

    async def body(self, entry: QueueEntry) -> bytes:
        kept = self.kept.take(entry.id)
        if kept is not None:
            return kept
        return await self.disk.load(entry)

    def where(self, entry: QueueEntry) -> str | None:
        return self.layout.body_path(entry.source, entry.id)

    async def dispatching(self, lease: Lease) -> None:
        self.schedule.dispatching(lease)

    async def checkpoint(self, lease: Lease, entry: QueueEntry) -> None:
        self.schedule.check(lease)
        self.unsaved.discard(entry.id)
        await self.disk.save(entry)

    async def save(self, lease: Lease, entry: QueueEntry, *, bounce: Bounce | None = None) -> None:
        self.schedule.settle(lease, entry)
        if bounce is not None:
            await self._write_bounce(entry.id, bounce)
        self.unsaved.discard(entry.id)  # from here on a removal must look for a state file
        await self.disk.save(entry)
        self._send_bounce(entry.id)
        self.schedule.end(lease, entry, keep=True)
        self.make_room(entry.id)

    async def complete(self, lease: Lease, entry: QueueEntry) -> None:
        self.schedule.check(lease)
        self.kept.take(entry.id)
        await self.disk.remove(entry, has_state=entry.id not in self.unsaved)
        self.unsaved.discard(entry.id)
        self.schedule.end(lease, entry, keep=False)
        self.make_room(entry.id)

    async def fail(
        self,
        lease: Lease,
        entry: QueueEntry,
        record: FailureRecord,
        *,
        bounce: Bounce | None = None,
    ) -> None:
        self.schedule.check(lease)
        if bounce is not None:
            await self._write_bounce(entry.id, bounce)
        if entry.id in self._unsent:
            # The entry notes its bounce durably before the bounce may go, and the bounce goes
            # even when the failed folder cannot take the message now (it waits for it).
            self.unsaved.discard(entry.id)
            await self.disk.save(entry)
            self._send_bounce(entry.id)
        self.kept.take(entry.id)
        await self.disk.fail(entry, record)
        self.unsaved.discard(entry.id)
        self.schedule.end(lease, entry, keep=False)
        self.make_room(entry.id)

    async def release(self, lease: Lease, *, not_before: float | None = None) -> None:
        self.schedule.give_back(lease, not_before)

    async def _write_bounce(self, entry_id: str, bounce: Bounce) -> None:
        """The DSN durable with its state file; it is due once the bounced entry has noted it
        durably (``_send_bounce``): until then a crash finds it by its id and recovery notes it,
        so it is never made twice, and a DSN sent is never made again."""
        [result] = await self.disk.write_bodies([(bounce.entry, bounce.body)], with_state=True)
        if result is not None:
            raise result
        self.kept.keep(bounce.entry.id, bounce.body)
        self._unsent[entry_id] = bounce.entry

    def _send_bounce(self, entry_id: str) -> None:
        dsn = self._unsent.pop(entry_id, None)
        if dsn is not None:
            self.schedule.add(dsn)

    # -- reading the backlog ----------------------------------------------------------------------

    def make_room(self, entry_id: str) -> None:
        """``entry_id`` no longer counts against ``active_limit`` (attempted, held or removed):
        read more of the backlog once a batch's worth of room is free."""
        if entry_id not in self.fresh:
            return
        self.fresh.discard(entry_id)
        ahead = min(self.active_limit, READ_AHEAD)
        if self.backlog and self._room_ahead() >= min(READ_BATCH, ahead, len(self.backlog)):
            self._room.set()

    async def _read_ahead(self) -> None:
        """Read more of the backlog each time deliveries have made room for it."""
        while True:
            await self._room.wait()
            self._room.clear()
            room = self._room_ahead()
            try:
                while self.backlog and room > 0:
                    room -= await self._read_unread(min(room, READ_BATCH))
            except Exception:  # put back: first in line again
                log.exception("cannot read queued messages; retrying in a while")
                await self.clock.sleep(READ_RETRY)
                self._room.set()

    async def _read_unread(self, count: int) -> int:
        """Read ``count`` backlog bodies, oldest first, into the schedule; returns how many."""
        taken = self.backlog.take(count)
        if not taken:
            return 0
        reading = self._reading = asyncio.get_running_loop().create_future()
        self._in_transit += len(taken)
        try:
            try:  # (_take_in counts them as fresh before its first await: never both)
                bodies = await asyncio.to_thread(self._read_bodies, taken)
            finally:
                self._in_transit -= len(taken)
        except BaseException:
            self.backlog.put_back(taken)
            raise
        else:
            await self._take_in(bodies, fresh=True)
        finally:
            reading.set_result(None)
            if self._reading is reading:
                self._reading = None
        return len(taken)

    async def _take_in(
        self, bodies: list[tuple[str, str, bytes | str]], *, fresh: bool
    ) -> list[QueueEntry]:
        """Rebuild the entries of bodies read from the backlog; refused ones go to failed/."""
        entries: list[QueueEntry] = []
        refused: list[tuple[str, FailureRecord, str | None, bytes | None]] = []
        for source, entry_id, body in bodies:
            if isinstance(body, str):
                built: QueueEntry | FailureRecord = FailureRecord("recovery", body)
            else:
                built = self.rebuild(Unread(source, entry_id, body))
            if isinstance(built, FailureRecord):
                refused.append((entry_id, built, self.layout.body_path(source, entry_id), None))
                log.error("%s: %s; moved to failed/", entry_id, built.reason)
                continue
            self.unsaved.add(entry_id)
            if fresh and not isinstance(body, str):
                self.kept.keep(entry_id, body)
            if fresh:
                self.fresh.add(entry_id)
            self.schedule.add(built)
            entries.append(built)
        if refused:
            for result in await self.disk.refuse(refused):
                if result is not None:
                    log.error("cannot move a refused message to failed/: %s", result)
        return entries
