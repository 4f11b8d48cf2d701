"""Where the file store keeps what, and the lock that gives a queue directory to one process.

::

    <queue dir>/
      lock                         held (flock) by the process that owns this queue; its pid
      queue-id                     a random id: this node's name
      messages/<source>/<id>.eml   message bodies, as accepted; <source> is the spool's key,
                                   or "dsn" for the bounces mqd generated
      state/<id>.json              one entry's state, written when it first changes (a deferral,
                                   a hold): a message delivered at its first attempt never has one
      failed/<id>.eml, <id>.json   (the failed folder, unless the workers share another)
      quarantine/                  state files that could not be read, with the reason
      <name>.json                  small state kept with ``save_state`` (quota.json)
      handover-keys                the hand-over keys' journal (``mqd.queue.file.keys``)
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from pathlib import Path
from typing import IO

from mqd.errors import QueueError, QueueLockedError
from mqd.fsutil import atomic_write, make_dirs
from mqd.queue.entry import DSN_SOURCE

__all__ = ["DSN_SOURCE", "Layout", "retired_queues"]


class Layout:
    """The paths of one queue directory (nothing is created until ``create``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.messages_dir = directory / "messages"
        self.state_dir = directory / "state"
        self.quarantine_dir = directory / "quarantine"
        self._source_dirs: dict[str, str] = {}
        self._lock_file: IO[str] | None = None

    def source_dir(self, source: str) -> str:
        directory = self._source_dirs.get(source)
        if directory is None:  # (a Path join costs microseconds: one per source, not per body)
            directory = self._source_dirs[source] = os.path.join(self.messages_dir, source)
        return directory

    def body_path(self, source: str, entry_id: str) -> str:
        return f"{self.source_dir(source)}/{entry_id}.eml"

    def state_path(self, entry_id: str) -> Path:
        return self.state_dir / f"{entry_id}.json"

    def blob_path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    @property
    def keys_path(self) -> Path:
        return self.directory / "handover-keys"

    def create(self) -> None:
        try:
            make_dirs(self.directory, self.messages_dir, self.state_dir)
        except OSError as exc:
            raise QueueError(
                f"cannot create the queue directory {self.directory}: {exc.strerror or exc} "
                "(set queue.dir to a directory mqd may write)"
            ) from None

    def lock(self) -> None:
        """Take the queue (QueueLockedError when another process holds it)."""
        path = self.directory / "lock"
        try:
            handle = path.open("a+", encoding="ascii")
        except OSError as exc:
            raise QueueError(
                f"cannot open {path}: {exc.strerror or exc} (is the queue directory writable by "
                "this user? run mqd as the user that owns it)"
            ) from None
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

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the lock
            self._lock_file = None

    def queue_key(self) -> str:
        """This queue's random id, made on first use."""
        path = self.directory / "queue-id"
        try:
            key = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            key = ""
        if not key:
            key = uuid.uuid4().hex[:16]
            atomic_write(path, key.encode("ascii") + b"\n")
        return key

    def quarantine(self, state: Path, why: str) -> Path:
        """Move an unreadable state file aside with the reason beside it."""
        make_dirs(self.quarantine_dir)
        target = self.quarantine_dir / state.name
        os.replace(state, target)
        atomic_write(target.with_suffix(".reason.txt"), (why + "\n").encode("utf-8"))
        return target


def retired_queues(queue_dir: Path, workers: int) -> list[tuple[int, Path, int]]:
    """(worker, its queue directory, messages it holds) for each worker's queue beyond
    ``workers`` that is not empty (``<queue dir>/workers/<n>``, see ``queue.workers``)."""
    try:
        names = os.listdir(queue_dir / "workers")
    except OSError:
        return []
    found = []
    for name in sorted(names, key=lambda n: (len(n), n)):
        if not name.isdigit() or int(name) <= workers:
            continue
        directory = queue_dir / "workers" / name
        count = 0
        with contextlib.suppress(OSError):
            for source in os.scandir(directory / "messages"):
                if source.is_dir():
                    count += sum(
                        1 for body in os.scandir(source.path) if body.name.endswith(".eml")
                    )
        if count:
            found.append((int(name), directory, count))
    return found


def _lock_exclusive(handle: IO[str]) -> None:
    """Take a non-blocking exclusive lock on ``handle`` or raise OSError."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
