"""The file store's failed folder: ``<id>.eml`` with ``<id>.json`` saying why, in one directory.

The daemon adds to it (``put``, from a worker thread); administration lists, reads and removes,
one changer at a time (an flock on ``.lock``). It works the same whether a daemon runs or not:
these are plain file operations that never touch the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any

from mqd.fsutil import atomic_write, fsync_dirs, make_dirs
from mqd.queue.failed import FailedError, FailedFolder, FailedMessage, FailureRecord

__all__ = ["FileFailedFolder"]

LOCK_NAME = ".lock"


class FileFailedFolder(FailedFolder):
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    # -- writing (the daemon's side; blocking, for worker threads) --------------------------------

    def put(
        self,
        entry_id: str,
        record: FailureRecord,
        *,
        file: str | os.PathLike[str] | None = None,
        body: bytes | None = None,
        failed_at: float | None = None,
    ) -> None:
        """Keep a message with its record: ``file`` renamed in (the reason first, then the
        message: a crash in between leaves both findable), or ``body`` written when the file
        cannot be moved here (another filesystem) or there is none. A file that can be neither
        moved nor copied stays where it is, and the record says where (``left_at``). Raises
        OSError when the folder cannot be written."""
        make_dirs(self.directory)
        data = {"id": entry_id, "failed_at": failed_at or time.time(), **record.to_dict()}
        self._write_record(entry_id, data)
        target = self.directory / f"{entry_id}.eml"
        moved = False
        if file is not None:
            try:
                os.replace(file, target)
                moved = True
            except FileNotFoundError:
                moved = target.exists()  # already moved before a crash
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
        if not moved and body is not None:
            atomic_write(target, body, sync_dir=False)
            if file is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(file)
        elif not moved and file is not None:
            # An odd file (a FIFO, a symlink) claimed on another filesystem: left where it is.
            self._write_record(entry_id, {**data, "left_at": os.fspath(file)})
        fsync_dirs([self.directory])

    def _write_record(self, entry_id: str, data: dict[str, Any]) -> None:
        text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
        atomic_write(self.directory / f"{entry_id}.json", text.encode("utf-8"), sync_dir=False)

    def writable(self) -> str | None:
        """None when messages can be put here; else why not (for a warning at start-up)."""
        try:
            make_dirs(self.directory)
        except OSError as exc:
            return f"cannot create {self.directory}: {exc.strerror or exc}"
        if not os.access(self.directory, os.W_OK | os.X_OK):
            return f"{self.directory} is not writable by this user"
        return None

    # -- administration ---------------------------------------------------------------------------

    async def messages(self) -> list[FailedMessage]:
        return await asyncio.to_thread(self._messages)

    def _messages(self) -> list[FailedMessage]:
        names = sorted(n for n in _names(self.directory) if _is_record(n))
        loaded = (self._load(name[: -len(".json")]) for name in names)
        found = [message for message in loaded if message is not None]
        return sorted(found, key=lambda m: (m.failed_at, m.id))

    async def find(self, ids: Sequence[str]) -> list[FailedMessage]:
        return await asyncio.to_thread(self._find, ids)

    def _find(self, ids: Sequence[str]) -> list[FailedMessage]:
        known = [name[: -len(".json")] for name in _names(self.directory) if _is_record(name)]
        chosen: dict[str, FailedMessage] = {}
        for wanted in ids:
            matches = [wanted] if wanted in known else [k for k in known if k.startswith(wanted)]
            if not wanted or not matches:
                raise FailedError(
                    f"no message {wanted!r} in {self.directory} ('mqd failed list' shows the ids)"
                )
            if len(matches) > 1:
                raise FailedError(
                    f"{wanted!r} is the start of {len(matches)} failed ids: give more of it"
                )
            if matches[0] not in chosen:
                chosen[matches[0]] = self._reload(matches[0])
        return list(chosen.values())

    async def read(self, message: FailedMessage) -> bytes:
        current = await asyncio.to_thread(self._reload, message.id)
        if current.location is None:
            raise FailedError(
                f"the message of {message.id} is missing (only its record is left): "
                f"'mqd failed delete {message.id}' removes the record"
            )
        try:
            return await asyncio.to_thread(Path(current.location).read_bytes)
        except OSError as exc:
            raise FailedError(
                f"cannot read {current.location}: {exc.strerror or exc} "
                "(run this as the daemon's user)"
            ) from exc

    async def remove(self, message: FailedMessage) -> None:
        await asyncio.to_thread(self._remove, message)

    def _remove(self, message: FailedMessage) -> None:
        current = self._load(message.id)
        if current is None:
            raise FailedError(f"{message.id} is no longer in {self.directory} (retried or deleted)")
        paths = [self.directory / f"{message.id}.eml"]
        if current.location is not None and Path(current.location) not in paths:
            paths.append(Path(current.location))  # left outside the folder (another filesystem)
        paths.append(self.directory / f"{message.id}.json")
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise FailedError(
                    f"cannot remove {path}: {exc.strerror or exc} (run this as the daemon's user)"
                ) from exc

    async def count(self) -> int:
        def count() -> int:
            return sum(1 for name in _names(self.directory) if _is_record(name))

        return await asyncio.to_thread(count)

    def changing(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._changing()

    @contextlib.asynccontextmanager
    async def _changing(self) -> AsyncIterator[None]:
        handle = await asyncio.to_thread(self._open_lock)
        try:
            await asyncio.to_thread(_lock, handle)
            yield
        finally:
            handle.close()

    def _open_lock(self) -> IO[str]:
        try:
            return (self.directory / LOCK_NAME).open("a+", encoding="ascii")
        except FileNotFoundError:
            raise FailedError(
                f"{self.directory} does not exist: no message has failed yet"
            ) from None
        except OSError as exc:
            raise FailedError(
                f"cannot open {self.directory / LOCK_NAME}: {exc.strerror or exc} "
                "(run this as the daemon's user)"
            ) from exc

    # -- reading records --------------------------------------------------------------------------

    def _load(self, message_id: str) -> FailedMessage | None:
        """The message ``message_id``, or None when its record is gone."""
        try:
            loaded = json.loads((self.directory / f"{message_id}.json").read_bytes())
            data = loaded if isinstance(loaded, dict) else {"reason": repr(loaded)}
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            data = {"stage": "unreadable", "reason": f"cannot read {message_id}.json: {exc}"}
        path: Path | None = self.directory / f"{message_id}.eml"
        if path is not None and not path.exists():
            left_at = data.get("left_at")
            path = Path(left_at) if isinstance(left_at, str) and Path(left_at).exists() else None
        failed_at = data.get("failed_at", 0.0)
        return FailedMessage(
            message_id,
            float(failed_at) if isinstance(failed_at, int | float) else 0.0,
            FailureRecord.from_dict(data),
            str(path) if path is not None else None,
        )

    def _reload(self, message_id: str) -> FailedMessage:
        message = self._load(message_id)
        if message is None:
            raise FailedError(f"{message_id} is no longer in {self.directory} (retried or deleted)")
        return message


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise FailedError(f"cannot read {directory}: {exc.strerror or exc}") from exc


def _is_record(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")


def _lock(handle: IO[str]) -> None:
    """Wait for an exclusive lock on ``handle`` (released when it is closed)."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
