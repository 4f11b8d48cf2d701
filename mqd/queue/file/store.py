"""The queue as files in the queue directory.

::

    <queue dir>/
      lock                         held (flock) by the daemon that owns this queue; holds its pid
      queue-id                     random id naming this queue's claim area in foreign spools
      messages/<source>/<id>.eml   message bodies: claimed spool files, renamed here unchanged;
                                   <source> is the spool's key, or "dsn" for generated bounces
      state/<id>.json              one entry's state, written when it first changes (a deferral,
                                   a hold): a message delivered at its first attempt never has one
      failed/<id>.eml, <id>.json   messages that bounced or were refused, and why
      quarantine/                  state files that could not be read, with the reason
      quota.json                   recent send counts of relays with hourly/daily quotas

Commit points: a claimed body, fsynced, with its directory fsynced, accepts a message (the body
is the whole record of a message not yet attempted: recovery takes a body without a state file
in again, as at intake); a state file (temp, fsync, rename, directory fsync) records every
change after that; unlinking the body finishes it (the state file, if any, goes right after; a
state file whose body is gone is cleaned up at start-up). Not writing a state file at intake
saves, per message, a JSON dump, a write, an fsync, a rename and an unlink, and halves the fsyncs
between a drop in the spool and the first attempt.

Every operation here is blocking; the async methods run them in worker threads so that the
event loop never waits for the disk (even an unlink waits for the filesystem's journal while
other files are being fsynced).

A body just taken in is kept in memory for its first delivery (``keep_body``; small bodies,
a few MiB in all, oldest dropped first), so that a message delivered right away costs no second
read and no thread hop: that is most of the latency of a quiet queue.

The per-delivery operations (``load_body``, ``save``, ``remove``) are grouped: those asked for
while a group is in a worker thread go together in the next one (``_Grouped``), and the saves
of a group share one directory fsync; removals also wait a few milliseconds for company
(``REMOVAL_GATHER``). Each caller still returns only once its own operation is done (durably,
for a save): grouping saves CPU (one thread hop costs ~80 µs, more than reading a small body)
and fsyncs, never a guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

from mqd.errors import QueueError, QueueLockedError
from mqd.fsutil import atomic_write, fsync_dirs, make_dirs
from mqd.queue.entry import QueueEntry
from mqd.queue.store import QueueStore, Recovery

__all__ = ["DSN_SOURCE", "FileStore"]

log = logging.getLogger("mqd.queue")

#: The ``source`` of entries mqd generates itself (bounces).
DSN_SOURCE = "dsn"

#: Bodies up to this size are kept in memory after intake for their first delivery...
KEEP_BODY_MAX = 64 * 1024
#: ...up to this many bytes in all (the oldest are dropped first).
KEEP_BODIES_BYTES = 4 * 1024 * 1024

#: Removals wait this long for others to share their worker-thread hop. Nothing waits for a
#: removal but its own delivery task (the message is at the relay already), and each hop costs
#: the event loop a wake-up of a thread and the GIL's hand-overs: a drain of 10,000 messages
#: made 1,111 hops with none (9 to a hop) and 722 with this, at 7-8% less CPU per message.
REMOVAL_GATHER = 0.005

T = TypeVar("T")
R = TypeVar("R")


class _Grouped(Generic[T, R]):
    """Runs a blocking operation for many callers in one worker-thread hop.

    ``await run(item)`` queues ``item``; the first caller schedules a hop, at the end of this
    event-loop turn or ``gather`` seconds later, and callers that come while one is running
    wait for the next. ``work`` gets the items and returns one result or exception per item,
    in order; each caller gets its own.
    """

    def __init__(
        self, work: Callable[[list[T]], list[R | BaseException]], gather: float = 0.0
    ) -> None:
        self._work = work
        self._gather = gather
        self._queued: list[tuple[T, asyncio.Future[R]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = False

    async def run(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests, embedding): nothing of the old one runs
            self._loop, self._queued, self._busy = loop, [], False
        future: asyncio.Future[R] = loop.create_future()
        self._queued.append((item, future))
        if not self._busy:
            self._busy = True
            if self._gather:
                loop.call_later(self._gather, self._start)
            else:
                loop.call_soon(self._start)  # after the other tasks of this turn have queued theirs
        return await future

    def _start(self) -> None:
        group, self._queued = self._queued, []
        if not group or self._loop is None:
            self._busy = False
            return
        hop = self._loop.run_in_executor(None, self._work, [item for item, _ in group])
        hop.add_done_callback(lambda hop: self._finish(group, hop))

    def _finish(
        self, group: list[tuple[T, asyncio.Future[R]]], hop: asyncio.Future[list[R | BaseException]]
    ) -> None:
        failure = hop.exception() if not hop.cancelled() else asyncio.CancelledError()
        results: list[R | BaseException] = (
            [failure] * len(group) if failure is not None else hop.result()
        )
        for (_, future), result in zip(group, results, strict=True):
            if future.done():  # its caller was cancelled; the operation ran all the same
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        self._start()


def _read_body(item: tuple[Path, int]) -> bytes:
    """The file's bytes, in as few system calls as its expected size allows."""
    path, size = item
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        chunks = [os.read(fd, size + 1)]  # one read, and one more to see the end
        while chunks[-1]:
            chunks.append(os.read(fd, max(size, 1 << 16)))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _each(operation: Callable[[T], R], items: list[T]) -> list[R | BaseException]:
    results: list[R | BaseException] = []
    for item in items:
        try:
            results.append(operation(item))
        except Exception as exc:
            results.append(exc)
    return results


class FileStore(QueueStore):
    def __init__(self, directory: Path, failed_dir: Path | None = None) -> None:
        """``failed_dir``: the failed folder when it is not the queue's own (the workers of
        ``queue.workers`` share the first one's)."""
        self.directory = directory
        self.messages_dir = directory / "messages"
        self.state_dir = directory / "state"
        self.failed_dir = failed_dir or directory / "failed"
        self.quarantine_dir = directory / "quarantine"
        self.quota_path = directory / "quota.json"
        self.queue_key = ""
        self._lock_file: IO[str] | None = None
        self._loads: _Grouped[tuple[Path, int], bytes] = _Grouped(
            lambda items: _each(_read_body, items)
        )
        self._saves: _Grouped[tuple[Path, bytes], None] = _Grouped(self._save_many)
        self._removals: _Grouped[tuple[QueueEntry, bool], None] = _Grouped(
            lambda items: _each(self._remove, items), gather=REMOVAL_GATHER
        )
        self._source_dirs: dict[str, Path] = {}
        self._kept: dict[str, bytes] = {}
        self._kept_bytes = 0
        #: Entries accepted with no state file yet (their body is their record).
        self._unsaved: set[str] = set()

    # -- open / close ---------------------------------------------------------------------------

    async def open(self) -> Recovery:
        return await asyncio.to_thread(self._open)

    def _open(self) -> Recovery:
        try:
            make_dirs(self.directory, self.messages_dir, self.state_dir, self.failed_dir)
        except OSError as exc:
            raise QueueError(
                f"cannot create the queue directory {self.directory}: {exc.strerror or exc} "
                "(set queue.dir to a directory mqd may write)"
            ) from None
        self._lock()
        self.queue_key = self._read_queue_key()
        return self._recover()

    async def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the lock
            self._lock_file = None

    def _lock(self) -> None:
        path = self.directory / "lock"
        handle = path.open("a+", encoding="ascii")
        try:
            _lock_exclusive(handle)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise QueueLockedError(
                f"the queue directory {self.directory} is in use by another mqd process "
                f"(pid {holder}). Give each daemon its own queue.dir; several daemons may "
                "share a spool."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def _read_queue_key(self) -> str:
        path = self.directory / "queue-id"
        try:
            key = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            key = ""
        if not key:
            key = uuid.uuid4().hex[:16]
            atomic_write(path, key.encode("ascii") + b"\n")
        return key

    # -- paths ------------------------------------------------------------------------------------

    def staging_path(self, source: str, entry_id: str) -> Path:
        directory = self._source_dirs.get(source)
        if directory is None:  # (a Path join costs microseconds: one per call, not two)
            directory = self._source_dirs[source] = self.messages_dir / source
        return directory / f"{entry_id}.eml"

    def body_path(self, entry: QueueEntry) -> Path:
        return self.staging_path(entry.source, entry.id)

    def state_path(self, entry_id: str) -> Path:
        return self.state_dir / f"{entry_id}.json"

    def ensure_source_dir(self, source: str) -> Path:
        directory = self.messages_dir / source
        make_dirs(directory)
        return directory

    # -- writes -----------------------------------------------------------------------------------

    async def add_many(self, items: list[tuple[QueueEntry, bytes | None]]) -> None:
        if items:
            await asyncio.to_thread(self.add_many_sync, items)

    def add_many_sync(self, items: list[tuple[QueueEntry, bytes | None]]) -> None:
        """``add_many`` for callers already in a worker thread.

        A claimed body (``None``: already at its path and fsynced) needs only its directory
        fsynced: recovery rebuilds its entry from it. A generated message (a bounce) gets its
        state file, since what it was generated for is not in its body.
        """
        dirs: list[Path] = []
        claimed: list[str] = []
        for entry, body in items:
            if body is not None:
                path = self.body_path(entry)
                self.ensure_source_dir(entry.source)
                atomic_write(path, body, sync_dir=False)
                atomic_write(self.state_path(entry.id), entry.to_json(), sync_dir=False)
                dirs += [path.parent, self.state_dir]
            else:
                dirs.append(self.body_path(entry).parent)
                claimed.append(entry.id)
        fsync_dirs(list(dict.fromkeys(dirs)))  # one fsync per directory for the whole batch
        self._unsaved.update(claimed)

    def sync_claimed(self, bodies: list[Path]) -> None:
        """Make claimed bodies (each already fsynced) durable where they are: one fsync per
        directory holding them. Blocking; raises OSError."""
        fsync_dirs(list(dict.fromkeys(body.parent for body in bodies)))

    def add_claimed(self, entries: list[QueueEntry]) -> None:
        """Accept entries whose claimed bodies (and their directories) the caller has already
        fsynced: nothing more to write until they first change."""
        self._unsaved.update(entry.id for entry in entries)

    def has_state(self, entry_id: str) -> bool:
        """Whether ``entry_id``'s state file exists (False for one accepted and never saved)."""
        return entry_id not in self._unsaved and self.state_path(entry_id).exists()

    def keep_body(self, entry_id: str, body: bytes) -> None:
        """Remember the body just read at intake for its first ``load_body`` (small ones only)."""
        if len(body) > KEEP_BODY_MAX:
            return
        self._forget(entry_id)
        self._kept[entry_id] = body
        self._kept_bytes += len(body)
        while self._kept_bytes > KEEP_BODIES_BYTES:
            self._forget(next(iter(self._kept)))

    def drop_kept(self, entry_id: str) -> None:
        """Forget the body kept for ``entry_id`` (it will not be delivered soon)."""
        self._forget(entry_id)

    def _forget(self, entry_id: str) -> bytes | None:
        body = self._kept.pop(entry_id, None)
        if body is not None:
            self._kept_bytes -= len(body)
        return body

    async def load_body(self, entry: QueueEntry) -> bytes:
        body = self._forget(entry.id)
        if body is not None:
            return body
        return await self._loads.run((self.body_path(entry), entry.size))

    async def save(self, entry: QueueEntry) -> None:
        # Serialised now, on the event loop: the entry may change while the write waits.
        self._unsaved.discard(entry.id)  # from here on a removal must look for a state file
        await self._saves.run((self.state_path(entry.id), entry.to_json()))

    def _save_many(self, states: list[tuple[Path, bytes]]) -> list[BaseException | None]:
        """Each state written (temp, fsync, rename), then the directory fsynced once for all."""
        results = _each(lambda state: atomic_write(*state, sync_dir=False), states)
        if any(result is None for result in results):
            try:
                fsync_dirs([self.state_dir])
            except OSError as exc:
                return [exc] * len(states)
        return results

    async def remove(self, entry: QueueEntry) -> None:
        self._forget(entry.id)
        has_state = entry.id not in self._unsaved
        self._unsaved.discard(entry.id)
        await self._removals.run((entry, has_state))

    def _remove(self, item: tuple[QueueEntry, bool]) -> None:
        # Unlinking the body is the commit point; a leftover state file is cleaned at start-up.
        entry, has_state = item
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{self.messages_dir}/{entry.source}/{entry.id}.eml")  # body_path, as str
        if has_state:
            with contextlib.suppress(FileNotFoundError):
                self.state_path(entry.id).unlink()

    async def fail(self, entry: QueueEntry, reason: dict[str, Any]) -> Path:
        self._forget(entry.id)
        self._unsaved.discard(entry.id)
        return await asyncio.to_thread(self._fail, entry, reason)

    def _fail(self, entry: QueueEntry, reason: dict[str, Any]) -> Path:
        target = self._to_failed(entry.id, self.body_path(entry), reason)
        with contextlib.suppress(FileNotFoundError):
            self.state_path(entry.id).unlink()
        return target

    async def reject(self, entry_id: str, claimed: Path, reason: dict[str, Any]) -> Path:
        return await asyncio.to_thread(self.reject_sync, entry_id, claimed, reason)

    def reject_sync(self, entry_id: str, claimed: Path, reason: dict[str, Any]) -> Path:
        """``reject`` for callers already in a worker thread."""
        return self._to_failed(entry_id, claimed, reason)

    def _to_failed(self, entry_id: str, body: Path, reason: dict[str, Any]) -> Path:
        """Reason first, then the message: a crash in between leaves both findable."""
        record = {"id": entry_id, "failed_at": time.time(), **reason}
        text = json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n"
        atomic_write(self.failed_dir / f"{entry_id}.json", text.encode("utf-8"), sync_dir=False)
        target = self.failed_dir / f"{entry_id}.eml"
        try:
            os.replace(body, target)
        except FileNotFoundError:
            pass  # already moved before a crash
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # An odd file claimed in a spool on another filesystem: it cannot be moved here.
            record["left_at"] = str(body)
            text = json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n"
            atomic_write(self.failed_dir / f"{entry_id}.json", text.encode("utf-8"), sync_dir=False)
            target = body
        fsync_dirs([self.failed_dir])
        return target

    # -- recovery ---------------------------------------------------------------------------------

    def _recover(self) -> Recovery:
        recovery = Recovery()
        accepted: set[str] = set()
        for path in sorted(self.state_dir.glob("*.json")):
            entry_id = path.stem
            try:
                entry = QueueEntry.from_json(path.read_bytes())
            except (OSError, ValueError) as exc:
                self._quarantine(path, f"unreadable state file: {exc}")
                recovery.notes.append(f"{entry_id}: state file set aside in quarantine ({exc})")
                continue
            if not self.body_path(entry).exists():
                path.unlink()
                if (self.failed_dir / f"{entry_id}.eml").exists():
                    recovery.notes.append(f"{entry_id}: finished moving to failed/")
                else:
                    recovery.notes.append(f"{entry_id}: was finished before the restart")
                continue
            accepted.add(entry_id)
            recovery.entries.append(entry)
        for stray in self.state_dir.glob(".*.tmp"):
            stray.unlink()  # a state write interrupted before its rename: the old state stands
        for source_dir in sorted(p for p in self.messages_dir.iterdir() if p.is_dir()):
            # Sorted as names (ids sort by time): Path comparisons cost seconds for 100,000.
            for name in sorted(os.listdir(source_dir)):
                body = source_dir / name
                if name.startswith("."):
                    body.unlink()  # an interrupted write of a generated message
                elif body.suffix == ".eml" and body.stem not in accepted:
                    if source_dir.name == DSN_SOURCE:
                        # Its entry was never written, so the bounced message has not recorded
                        # it either and will generate it again.
                        body.unlink()
                    else:
                        recovery.unaccepted.setdefault(source_dir.name, []).append(body)
        return recovery

    def _quarantine(self, state: Path, why: str) -> None:
        make_dirs(self.quarantine_dir)
        target = self.quarantine_dir / state.name
        os.replace(state, target)
        reason = target.with_suffix(".reason.txt")
        atomic_write(reason, (why + "\n").encode("utf-8"))
        log.error("state file %s is unreadable and was moved to %s: %s", state, target, why)


def _lock_exclusive(handle: IO[str]) -> None:
    """Take a non-blocking exclusive lock on ``handle`` or raise OSError."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
