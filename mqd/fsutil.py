"""Durable file operations: write-fsync-rename and directory fsyncs, in one place."""

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know it)
if TYPE_CHECKING:  # paths are os.PathLike at run time: pathlib costs mqd sendmail a few ms
    from collections.abc import Iterable
    from pathlib import Path

    StrPath = str | os.PathLike[str]

__all__ = ["atomic_write", "fsync_dirs", "make_dirs", "write_durably"]

#: Directories cannot be opened for fsync on Windows; there the rename is as durable as it gets.
_CAN_FSYNC_DIRS = os.name == "posix"


def write_durably(path: "StrPath", data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to a new file ``path`` and fsync it (the directory is not synced)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: "Path", data: bytes, *, sync_dir: bool = True, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically: temp file, fsync, rename, fsync the directory.

    A reader sees the old content or the new, never a torn file; after return it survives a
    crash (with ``sync_dir=False`` the caller promises to fsync the directory itself).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_durably(tmp, data, mode=mode)
        os.replace(tmp, path)
    except BaseException:
        try:  # noqa: SIM105 - contextlib would cost mqd sendmail an import
            tmp.unlink()
        except OSError:
            pass
        raise
    if sync_dir:
        fsync_dirs([path.parent])


def fsync_dirs(dirs: "Iterable[StrPath]") -> None:
    """fsync each directory once, so the renames and creations in it are durable."""
    if not _CAN_FSYNC_DIRS:
        return
    for directory in dict.fromkeys(dirs):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def make_dirs(*dirs: "StrPath", mode: int = 0o700) -> None:
    """Create each directory and its parents when missing (``mode`` applies to the last one)."""
    for directory in dirs:
        os.makedirs(directory, mode=mode, exist_ok=True)
