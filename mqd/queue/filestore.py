"""The queue as files in the queue directory.

::

    <queue dir>/
      lock                         held (flock) by the daemon that owns this queue; holds its pid
      queue-id                     random id naming this queue's claim area in foreign spools
      messages/<source>/<id>.eml   message bodies: claimed spool files, renamed here unchanged;
                                   <source> is the spool's key, or "dsn" for generated bounces
      state/<id>.json              one entry's state; its presence means "accepted"
      failed/<id>.eml, <id>.json   messages that bounced or were refused, and why
      quarantine/                  state files that could not be read, with the reason
      quota.json                   recent send counts of relays with hourly/daily quotas

Commit points: a state file written (temp, fsync, rename, directory fsync) accepts a message;
unlinking the body finishes it (the state file goes right after; a state file whose body is
gone is cleaned up at start-up). Every operation here is blocking; the async methods run
them in worker threads so that fsyncs never stall the event loop.
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
from pathlib import Path
from typing import IO, Any

from ..errors import QueueError, QueueLockedError
from ..fsutil import atomic_write, fsync_dirs, make_dirs
from .entry import QueueEntry
from .store import QueueStore, Recovery

__all__ = ["DSN_SOURCE", "FileStore"]

log = logging.getLogger("mqd.queue")

#: The ``source`` of entries mqd generates itself (bounces).
DSN_SOURCE = "dsn"


class FileStore(QueueStore):
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.messages_dir = directory / "messages"
        self.state_dir = directory / "state"
        self.failed_dir = directory / "failed"
        self.quarantine_dir = directory / "quarantine"
        self.quota_path = directory / "quota.json"
        self.queue_key = ""
        self._lock_file: IO[str] | None = None

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
        return self.messages_dir / source / f"{entry_id}.eml"

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
        """``add_many`` for callers already in a worker thread."""
        dirs: list[Path] = [self.state_dir]
        for entry, body in items:
            if body is not None:
                path = self.body_path(entry)
                self.ensure_source_dir(entry.source)
                atomic_write(path, body, sync_dir=False)
                dirs.append(path.parent)
            else:
                dirs.append(self.body_path(entry).parent)
            atomic_write(self.state_path(entry.id), entry.to_json(), sync_dir=False)
        fsync_dirs(dirs)  # one fsync per directory for the whole batch

    async def load_body(self, entry: QueueEntry) -> bytes:
        return await asyncio.to_thread(self.body_path(entry).read_bytes)

    async def save(self, entry: QueueEntry) -> None:
        await asyncio.to_thread(atomic_write, self.state_path(entry.id), entry.to_json())

    async def remove(self, entry: QueueEntry) -> None:
        await asyncio.to_thread(self._remove, entry)

    def _remove(self, entry: QueueEntry) -> None:
        # Unlinking the body is the commit point; a leftover state file is cleaned at start-up.
        with contextlib.suppress(FileNotFoundError):
            self.body_path(entry).unlink()
        with contextlib.suppress(FileNotFoundError):
            self.state_path(entry.id).unlink()

    async def fail(self, entry: QueueEntry, reason: dict[str, Any]) -> Path:
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
            for body in sorted(source_dir.iterdir()):
                if body.name.startswith("."):
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
