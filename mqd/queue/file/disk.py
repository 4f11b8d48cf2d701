"""The file store's writes and reads: bodies, state files and removals, grouped into few hops.

Every operation here is blocking underneath; the async methods run them in worker threads so
that the event loop never waits for the disk (even an unlink waits for the filesystem's journal
while other files are being fsynced). The per-delivery ones (``load``, ``save``, ``remove``) are
grouped (``mqd.queue.file.io``): the saves of a group share one directory fsync, and removals
wait a few milliseconds for company.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mqd.fsutil import atomic_write, fsync_dirs, make_dirs
from mqd.queue.entry import QueueEntry
from mqd.queue.failed import FailureRecord
from mqd.queue.file.failed import FileFailedFolder
from mqd.queue.file.io import Grouped, each, read_body, spread
from mqd.queue.file.layout import Layout

__all__ = ["REMOVAL_GATHER", "Disk"]

log = logging.getLogger("mqd.queue")

#: Removals wait this long for others to share their worker-thread hop. Nothing waits for a
#: removal but its own delivery task (the message is at the relay already), and each hop costs
#: the event loop a wake-up of a thread and the GIL's hand-overs: a drain of 10,000 messages
#: made 1,111 hops with none (9 to a hop) and 722 with this, at 7-8% less CPU per message.
REMOVAL_GATHER = 0.005
#: Bodies written by ``write_bodies`` (intake's in-memory hand-overs, bounces) are spread over up
#: to this many worker threads of the store's own (asyncio's default pool has 6 on 2 cores, and
#: other work): each body waits for its own fsync, and the disk takes many at once (2 kB files
#: written and fsynced on this project's VM: 290/s in one thread, 570/s in 4, 1,000/s in 32)...
WRITE_THREADS = 16
#: ...each writing at least this many (a thread more costs a hop of its own).
WRITE_CHUNK = 2
#: Loads, saves and removals: one hop of each kind at a time (``Grouped``).
HOP_THREADS = 3


class Disk:
    def __init__(self, layout: Layout, failed: FileFailedFolder) -> None:
        self.layout = layout
        self.failed = failed
        self._made: set[str] = set()
        self._writers: ThreadPoolExecutor | None = None
        self._hop_threads: ThreadPoolExecutor | None = None
        self._syncing: asyncio.Future[None] | None = None
        self._loads: Grouped[tuple[Path, int], bytes] = Grouped(
            lambda items: each(read_body, items), self._hops
        )
        self._saves: Grouped[tuple[Path, bytes], None] = Grouped(self._save_many, self._hops)
        self._removals: Grouped[tuple[str, str, bool], None] = Grouped(
            lambda items: each(self._remove, items), self._hops, gather=REMOVAL_GATHER
        )
        #: Called (in the worker thread) before a body leaves the queue: the hand-over keys'
        #: confirmations made durable first (``KeyJournal.sync_confirmed``).
        self.before_removal: Callable[[], None] = lambda: None

    # -- bodies -----------------------------------------------------------------------------------

    def source_dir(self, source: str) -> str:
        """``messages/<source>``, created on first use (cached: one check per source)."""
        directory = self.layout.source_dir(source)
        if directory not in self._made:
            make_dirs(directory)
            self._made.add(directory)
        return directory

    def adopt(self, file: str, entry: QueueEntry) -> bool:
        """Rename a claimed file into the store (on the event loop: a rename is quick). False
        when it is on another filesystem (then its bytes must be written); OSError otherwise."""
        target = f"{self.source_dir(entry.source)}/{entry.id}.eml"
        try:
            os.rename(file, target)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False
            raise
        return True

    async def write_bodies(
        self, items: Sequence[tuple[QueueEntry, bytes]], *, with_state: bool = False
    ) -> list[BaseException | None]:
        """Write bodies durably (temp file, fsync, rename, then one fsync per directory), with
        their state files when ``with_state`` (a generated bounce: what it was generated for is
        not in its body). One result per item: None, or why it failed. A batch of several is
        written by a few worker threads at once (the disk takes several flushes at a time:
        sixteen 2 kB bodies, 96 ms one after the other, about half that in four threads), then
        its directories are fsynced once."""
        items = list(items)
        if not items:
            return []
        size = max(WRITE_CHUNK, -(-len(items) // WRITE_THREADS))
        chunks = [items[at : at + size] for at in range(0, len(items), size)]
        # The directories are fsynced by the thread that writes the last chunk: one hop back.
        return await spread(
            self._writers_pool(),
            chunks,
            functools.partial(self._write_bodies, with_state=with_state),
            self._sync_written,
        )

    def _writers_pool(self) -> ThreadPoolExecutor:
        """The body writers' threads (made again after ``close``, for a late bounce)."""
        if self._writers is None:
            self._writers = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="mqd-writes")
        return self._writers

    def _hops(self) -> ThreadPoolExecutor:
        """The threads of the grouped loads, saves and removals: apart from the writers', so
        that a delivery's removal or load never waits behind a batch of fsyncs."""
        if self._hop_threads is None:
            self._hop_threads = ThreadPoolExecutor(HOP_THREADS, thread_name_prefix="mqd-disk")
        return self._hop_threads

    @staticmethod
    def _sync_written(
        parts: list[tuple[list[BaseException | None], list[str | Path]]],
    ) -> list[BaseException | None]:
        """The results of ``_write_bodies``' chunks, once their directories are fsynced."""
        results = [result for part, _ in parts for result in part]
        dirs = [directory for _, part in parts for directory in part]
        if dirs:
            try:
                fsync_dirs(dirs)
            except OSError as exc:
                return [exc] * len(results)
        return results

    def _write_bodies(
        self, items: list[tuple[QueueEntry, bytes]], with_state: bool
    ) -> tuple[list[BaseException | None], list[str | Path]]:
        """Write ``items`` (each fsynced, not their directories): the results, and the
        directories to fsync."""
        dirs: list[str | Path] = []
        results: list[BaseException | None] = []
        for entry, body in items:
            try:
                directory = self.source_dir(entry.source)
                atomic_write(Path(directory, f"{entry.id}.eml"), body, sync_dir=False)
                if with_state:
                    atomic_write(self.layout.state_path(entry.id), entry.to_json(), sync_dir=False)
                    dirs.append(self.layout.state_dir)
                dirs.append(directory)
                results.append(None)
            except OSError as exc:
                results.append(exc)
        return results, dirs

    async def sync_in_background(self, sources: Sequence[str]) -> None:
        """Fsync the body directories of ``sources`` (after renames into them) in the
        background, once the previous batch's fsyncs are done (one batch at a time)."""
        await self.settle()
        self._syncing = asyncio.ensure_future(self._sync_dirs(sources))

    async def _sync_dirs(self, sources: Sequence[str]) -> None:
        dirs = [self.layout.source_dir(source) for source in dict.fromkeys(sources)]
        try:
            await asyncio.to_thread(fsync_dirs, dirs)
        except OSError as exc:  # the renames stand; the next sync or the journal makes them last
            log.error(
                "cannot fsync the queue directory %s (%s): the messages just queued are "
                "delivered all the same, but until then a crash may lose them",
                self.layout.messages_dir,
                exc,
            )

    def close(self) -> None:
        """End the store's threads (once no write is under way: ``accept`` has returned)."""
        for pool in (self._writers, self._hop_threads):
            if pool is not None:
                pool.shutdown(wait=False)
        self._writers = self._hop_threads = None

    async def settle(self) -> None:
        """Wait for the background fsyncs under way, if any."""
        syncing, self._syncing = self._syncing, None
        if syncing is None or syncing.done():
            return  # (done: also when a loop that ended cancelled it)
        if syncing.get_loop() is not asyncio.get_running_loop():
            return  # started on a loop that has ended: nothing of it runs any more
        # Shielded: a cancelled wait must not cancel it (its thread would run on).
        await asyncio.shield(syncing)

    async def load(self, entry: QueueEntry) -> bytes:
        path = Path(self.layout.body_path(entry.source, entry.id))
        return await self._loads.run((path, entry.size))

    def exists(self, entry: QueueEntry) -> bool:
        return os.path.exists(self.layout.body_path(entry.source, entry.id))

    # -- state ------------------------------------------------------------------------------------

    async def save(self, entry: QueueEntry) -> None:
        """Write ``entry``'s state durably. Serialised now, on the event loop: the entry may
        change while the write waits for its hop."""
        await self._saves.run((self.layout.state_path(entry.id), entry.to_json()))

    def _save_many(self, states: list[tuple[Path, bytes]]) -> list[BaseException | None]:
        """Each state written (temp, fsync, rename), then the directory fsynced once for all."""
        results = each(lambda state: atomic_write(*state, sync_dir=False), states)
        if any(result is None for result in results):
            try:
                fsync_dirs([self.layout.state_dir])
            except OSError as exc:
                return [exc] * len(states)
        return results

    async def remove(self, entry: QueueEntry, has_state: bool) -> None:
        await self._removals.run((entry.source, entry.id, has_state))

    def _remove(self, item: tuple[str, str, bool]) -> None:
        # Unlinking the body is the commit point; a leftover state file is cleaned at start-up.
        source, entry_id, has_state = item
        self.before_removal()  # (durable once in a hop: the others of the hop find it done)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.layout.body_path(source, entry_id))
        if has_state:
            with contextlib.suppress(FileNotFoundError):
                self.layout.state_path(entry_id).unlink()

    # -- the failed folder ------------------------------------------------------------------------

    async def fail(self, entry: QueueEntry, record: FailureRecord) -> None:
        """Move ``entry``'s body to the failed folder with ``record``, then drop its state."""
        await asyncio.to_thread(self._fail, entry, record)

    def _fail(self, entry: QueueEntry, record: FailureRecord) -> None:
        self.before_removal()
        self.failed.put(entry.id, record, file=self.layout.body_path(entry.source, entry.id))
        with contextlib.suppress(FileNotFoundError):
            self.layout.state_path(entry.id).unlink()

    async def refuse(
        self, items: Sequence[tuple[str, FailureRecord, str | None, bytes | None]]
    ) -> list[BaseException | None]:
        """Put refused files (id, record, file, bytes) into the failed folder; one result each."""

        def put(item: tuple[str, FailureRecord, str | None, bytes | None]) -> None:
            entry_id, record, file, body = item
            if file is not None:  # (a queued body: the backlog's, which may have a key)
                self.before_removal()
            self.failed.put(entry_id, record, file=file, body=body)

        return await asyncio.to_thread(each, put, list(items))

    # -- small state ------------------------------------------------------------------------------

    async def load_blob(self, name: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self.layout.blob_path(name).read_bytes)
        except FileNotFoundError:
            return None

    async def save_blob(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(atomic_write, self.layout.blob_path(name), data)
