"""The file store's administration: list, find, hold, release, retry, delete, count.

The same operations serve a running daemon (through its control socket) and a stopped one (the
command opens the store itself), so they persist what they change: a hold, a release and a retry
of named entries write those entries' state files; a retry of every entry (``mqd queue flush``)
writes one small mark instead (``flushes``), applied when the store next opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from mqd.queue.entry import QueueEntry
from mqd.queue.file.io import BodyCache, read_body
from mqd.queue.file.rebuild import Rebuild, Unread
from mqd.queue.schedule import ambiguous, unknown
from mqd.queue.store import EntryState, Listed, QueueCounts

if TYPE_CHECKING:
    from mqd.clock import Clock
    from mqd.queue.file.backlog import Backlog
    from mqd.queue.file.disk import Disk
    from mqd.queue.file.layout import Layout
    from mqd.queue.schedule import Schedule

__all__ = ["FileAdmin"]

#: The small-state name of the pending "retry everything" marks.
FLUSHES = "flushes"


class FileAdmin:
    """Mixed into ``FileStore``: these are its administration methods."""

    layout: Layout
    disk: Disk
    schedule: Schedule
    backlog: Backlog
    clock: Clock
    unsaved: set[str]
    kept: BodyCache

    rebuild: Rebuild

    def make_room(self, entry_id: str) -> None:
        raise NotImplementedError

    async def settled(self) -> None:
        """Wait for backlog bodies on their way into memory (else they are in neither)."""
        raise NotImplementedError

    async def _take_in(
        self, bodies: list[tuple[str, str, bytes | str]], *, fresh: bool
    ) -> list[QueueEntry]:
        raise NotImplementedError

    def rebuild_for_listing(self, source: str, entry_id: str, body: bytes) -> QueueEntry | None:
        built = self.rebuild(Unread(source, entry_id, body))
        return built if isinstance(built, QueueEntry) else None

    def _read_bodies(self, taken: list[tuple[str, str]]) -> list[tuple[str, str, bytes | str]]:
        read: list[tuple[str, str, bytes | str]] = []
        for source, entry_id in taken:
            path = Path(self.layout.body_path(source, entry_id))
            try:
                read.append((source, entry_id, read_body((path, 0))))
            except FileNotFoundError:
                continue  # removed meanwhile (deleted by an administrator)
            except OSError as exc:
                read.append((source, entry_id, f"cannot read it: {exc.strerror or exc}"))
        return read

    async def _read_out_of_turn(self, ids: Sequence[str]) -> None:
        """Read these backlog ids now (an administrator named them)."""
        taken = [(s, i) for i in ids if (s := self.backlog.source_of(i)) is not None]
        for _, entry_id in taken:
            self.backlog.take_id(entry_id)
        if taken:
            await self._take_in(await asyncio.to_thread(self._read_bodies, taken), fresh=False)

    # -- looking ----------------------------------------------------------------------------------

    async def entries(self) -> list[Listed]:
        await self.settled()
        schedule = self.schedule
        listed = [Listed(e, schedule.state(e), schedule.holder(e.id)) for e in schedule]
        listed += [Listed(e, EntryState.WAITING) for e in await self._peek_backlog()]
        return sorted(listed, key=lambda item: (item.entry.created_at, item.entry.id))

    async def _peek_backlog(self) -> list[QueueEntry]:
        """The backlog's entries, rebuilt from their bodies and left in the backlog (a listing
        of a large queue reads every body, as Postfix's mailq does, but keeps none)."""
        if not self.backlog:
            return []
        bodies = await asyncio.to_thread(self._read_bodies, self.backlog.items())
        found = []
        for source, entry_id, body in bodies:
            if isinstance(body, bytes):
                built = self.rebuild_for_listing(source, entry_id, body)
                if built is not None:
                    found.append(built)
        return found

    async def find(self, wanted: Sequence[str]) -> dict[str, str]:
        await self.settled()
        found = {}
        for given in wanted:
            matches = self.schedule.matching(given)
            if given not in self.schedule:
                matches += (
                    ([given] if given in self.backlog else self.backlog.starting_with(given))
                    if given
                    else []
                )
            if len(matches) > 1:
                raise ambiguous(given, len(matches))
            if matches:
                found[given] = matches[0]
        return found

    async def get(self, entry_id: str) -> Listed:
        [entry] = await self._named([entry_id])
        return Listed(entry, self.schedule.state(entry), self.schedule.holder(entry_id))

    async def _named(self, ids: Sequence[str]) -> list[QueueEntry]:
        """The entries with these full ids (backlog ones read now); UnknownEntry otherwise."""
        ids = list(dict.fromkeys(ids))
        await self._read_out_of_turn(ids)
        entries = []
        for entry_id in ids:
            entry = self.schedule.entries.get(entry_id)
            if entry is None:
                raise unknown(entry_id)
            entries.append(entry)
        return entries

    # -- changing ---------------------------------------------------------------------------------

    async def _persist(self, entry: QueueEntry) -> None:
        self.unsaved.discard(entry.id)  # from here on a removal must look for a state file
        await self.disk.save(entry)

    async def hold(self, ids: Sequence[str]) -> list[str]:
        for entry in await self._named(ids):
            if entry.held:
                continue
            self.make_room(entry.id)
            if self.schedule.hold(entry):  # a leased one is written by its holder
                await self._persist(entry)
        return list(dict.fromkeys(ids))

    async def unhold(self, ids: Sequence[str] | None) -> list[str]:
        entries = await self._named(ids) if ids is not None else list(self.schedule)
        done = []
        for entry in entries:
            if entry.held:
                self.schedule.unhold(entry)
                await self._persist(entry)
                done.append(entry.id)
        return done

    async def retry(self, ids: Sequence[str] | None, *, relay: str | None = None) -> list[str]:
        if ids is not None:
            done = []
            for entry in await self._named(ids):
                if entry.held:
                    continue
                if self.schedule.retry(entry) and entry.id not in self.unsaved:
                    await self._persist(entry)  # (it has a state file to say so)
                done.append(entry.id)
            return done
        now = self.clock.time()
        # Everything that waits to be tried again, but not a message for later: that keeps its
        # time unless it is named (a flush must not send tomorrow's newsletter now).
        chosen = [
            e
            for e in self.schedule
            if (relay is None or relay in e.relays) and not e.scheduled(now)
        ]
        done = [e.id for e in chosen if not e.held]
        for entry in chosen:
            if not entry.held:
                self.schedule.retry(entry)
        # Not a state file each (a flush of 10,000 deferred entries would cost 10,000 fsyncs):
        # one mark, applied to the state files when the store next opens.
        marks = await self._flushes()
        marks.append({"at": now, "relay": relay})
        await self.disk.save_blob(FLUSHES, json.dumps(marks).encode())
        # The backlog is waiting, never held, and due already.
        return done + [entry_id for _, entry_id in self.backlog.items()]

    async def _flushes(self) -> list[dict[str, object]]:
        raw = await self.disk.load_blob(FLUSHES)
        try:
            marks = json.loads(raw) if raw else []
        except ValueError:
            marks = []
        return [m for m in marks if isinstance(m, dict)] if isinstance(marks, list) else []

    async def _apply_flushes(self) -> None:
        """Make due the entries a flush made due before the store was last closed."""
        marks = await self._flushes()
        if not marks:
            return
        for entry in self.schedule:
            for mark in marks:
                at, relay = mark.get("at"), mark.get("relay")
                if not isinstance(at, int | float):
                    continue
                if relay is not None and relay not in entry.relays:
                    continue
                if not entry.held and entry.next_attempt_at > at and not entry.scheduled(at):
                    entry.next_attempt_at = float(at)
                    self.schedule.add(entry)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, self.layout.blob_path(FLUSHES))

    async def delete(self, ids: Sequence[str]) -> list[QueueEntry]:
        entries = await self._named(ids)
        self.schedule.check_deletable(entries)
        for entry in entries:
            self.make_room(entry.id)
            self.kept.take(entry.id)
            self.schedule.delete(entry)
            await self.disk.remove(entry, has_state=entry.id not in self.unsaved)
            self.unsaved.discard(entry.id)
        return entries

    # -- counting ---------------------------------------------------------------------------------

    async def queued(self) -> int:
        await self.settled()
        return len(self.schedule) + len(self.backlog)

    async def counts(self) -> QueueCounts:
        await self.settled()
        counts = self.schedule.counts()
        unread = self.backlog.items()
        if not unread:
            return counts
        by_state = dict(counts.by_state)
        by_state[EntryState.WAITING] += len(unread)
        oldest, unheld = counts.oldest, counts.oldest_unheld
        created = self.backlog.oldest_created()
        if created is not None:
            oldest = created if oldest is None else min(oldest, created)
            unheld = created if unheld is None else min(unheld, created)
        by_source: dict[str, int] = {}
        for source, _ in unread:
            by_source[source] = by_source.get(source, 0) + 1
        return replace(
            counts,
            by_state=by_state,
            size=counts.size + await asyncio.to_thread(self._sizes, unread),
            oldest=oldest,
            oldest_unheld=unheld,
            not_read=len(unread),
            unread_by_source=by_source,
            due=counts.due + len(unread),
        )

    def _sizes(self, unread: list[tuple[str, str]]) -> int:
        size = 0
        for source, entry_id in unread:
            with contextlib.suppress(OSError):
                size += os.stat(self.layout.body_path(source, entry_id)).st_size
        return size

    async def load_state(self, name: str) -> bytes | None:
        return await self.disk.load_blob(name)

    async def save_state(self, name: str, data: bytes) -> None:
        await self.disk.save_blob(name, data)
