"""Wake the daemon as soon as a file lands in a spool.

Linux uses inotify directly through ctypes (no thread, no dependency: the kernel names the file
that was renamed in, so the daemon claims it without listing the directory). Other platforms use
watchfiles (FSEvents, ReadDirectoryChangesW). ``poll`` relies on the periodic rescan alone,
which runs in every mode as the safety net (``queue.scan_interval``).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["Notify", "Watcher", "make_watcher"]

log = logging.getLogger("mqd.watch")

#: ``notify(spool_index, name)``: a file ``name`` appeared; name None means "rescan it".
Notify = Callable[[int, str | None], None]


class Watcher(abc.ABC):
    name = "watcher"

    @abc.abstractmethod
    def start(self, directories: list[Path], notify: Notify) -> None:
        """Begin watching; must be called from the running event loop."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop watching."""


class PollWatcher(Watcher):
    name = "poll"

    def start(self, directories: list[Path], notify: Notify) -> None:
        pass

    async def aclose(self) -> None:
        pass


class InotifyWatcher(Watcher):
    name = "inotify"
    IN_CLOSE_WRITE = 0x00000008
    IN_MOVED_TO = 0x00000080
    IN_Q_OVERFLOW = 0x00004000
    IN_IGNORED = 0x00008000
    IN_ONLYDIR = 0x01000000
    _EVENT = struct.Struct("iIII")

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise OSError('inotify exists on Linux only (use watch = "auto")')
        libc_name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(libc_name, use_errno=True)
        self._fd = -1
        self._watches: dict[int, int] = {}
        self._directories: list[Path] = []
        self._notify: Notify | None = None

    def start(self, directories: list[Path], notify: Notify) -> None:
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._fd = fd
        self._notify = notify
        self._directories = directories
        for index, directory in enumerate(directories):
            self._add_watch(index, directory)
        asyncio.get_running_loop().add_reader(fd, self._on_readable)

    def _add_watch(self, index: int, directory: Path) -> None:
        mask = self.IN_CLOSE_WRITE | self.IN_MOVED_TO | self.IN_ONLYDIR
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot watch {directory}: {os.strerror(err)}")
        self._watches[wd] = index

    def _on_readable(self) -> None:
        assert self._notify is not None
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        while offset + self._EVENT.size <= len(data):
            wd, mask, _cookie, length = self._EVENT.unpack_from(data, offset)
            offset += self._EVENT.size
            raw_name = data[offset : offset + length].rstrip(b"\0")
            offset += length
            if mask & self.IN_Q_OVERFLOW:
                for each in range(len(self._directories)):
                    self._notify(each, None)
                continue
            index = self._watches.get(wd)
            if index is None:
                continue
            if mask & self.IN_IGNORED:  # the directory went away; rescan recreates it
                del self._watches[wd]
                self._notify(index, None)
                with contextlib.suppress(OSError):
                    self._add_watch(index, self._directories[index])
                continue
            self._notify(index, os.fsdecode(raw_name))

    async def aclose(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


class WatchfilesWatcher(Watcher):
    name = "watchfiles"

    def __init__(self) -> None:
        import watchfiles  # noqa: F401 - fail here, at start-up, when it is missing

        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self, directories: list[Path], notify: Notify) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(directories, notify))

    async def _run(self, directories: list[Path], notify: Notify) -> None:
        import watchfiles

        by_dir = {_dir_key(d): i for i, d in enumerate(directories)}
        async for changes in watchfiles.awatch(
            *directories,
            stop_event=self._stop,
            recursive=False,
            debounce=20,
            step=5,
            yield_on_timeout=False,
        ):
            for change, path in changes:
                if change == watchfiles.Change.deleted:
                    continue
                index = by_dir.get(_dir_key(Path(path).parent))
                if index is not None:
                    notify(index, os.path.basename(path))

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=5)


def _dir_key(directory: Path) -> str:
    # Pure string work (no filesystem access): watchfiles reports absolute paths.
    return os.path.normcase(str(directory.absolute()))


def make_watcher(mode: str) -> Watcher:
    """The watcher for ``queue.watch``: "auto" picks the best this platform has."""
    if mode == "poll":
        return PollWatcher()
    if mode == "inotify" or (mode == "auto" and sys.platform.startswith("linux")):
        return InotifyWatcher()
    try:
        return WatchfilesWatcher()
    except ImportError:
        if mode == "watchfiles":
            raise
        log.warning("watchfiles is not installed: spools are only rescanned periodically")
        return PollWatcher()
