"""Spool directories: find ``.eml`` files, claim them atomically, open them safely.

The claim is one ``rename(2)`` of ``<spool>/<name>.eml`` into intake's claim area (node-local,
beside the queue): of two daemons racing for a file exactly one rename succeeds, the other gets
ENOENT and moves on. When the claim area is on another filesystem (EXDEV) the claim renames the
file into this node's own hidden directory inside the spool (``.mqd-claim-<node>/``) instead; the
queue store then copies its bytes and intake removes it. A crash in between is recovered from
either directory (``Spool.waiting``).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from mqd.config.schema import SpoolConfig
from mqd.errors import SpoolError
from mqd.fsutil import make_dirs

__all__ = ["SUFFIX", "Claimed", "Spool", "open_claimed", "read_claimed"]

log = logging.getLogger("mqd.spool")

SUFFIX = ".eml"
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block the open
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


@dataclass(frozen=True)
class Claimed:
    """A file this node now owns: it is at ``path``, in the claim area (or, across filesystems,
    in the spool's ``.mqd-claim-<node>/``)."""

    spool: SpoolConfig
    entry_id: str
    path: str
    original_name: str


class Spool:
    """One configured spool directory, as seen by one node."""

    def __init__(self, config: SpoolConfig, node: str, claim_dir: Path) -> None:
        self.config = config
        self.path = config.path
        self.key = config.key  # a hash of the path: computed once, not per claimed file
        #: Where this spool's files are claimed to: intake's claim area, and the hidden directory
        #: in the spool itself for a claim area on another filesystem.
        self.claim_dir = claim_dir / self.key
        self.beside_dir = config.path / f".mqd-claim-{node}"
        self._target = os.fspath(self.claim_dir) + "/"
        self._cross_device = False

    @property
    def claims_across(self) -> bool:
        """Whether claims here go into the spool's own hidden directory (the claim area is on
        another filesystem or mount)."""
        return self._cross_device

    def prepare(self) -> None:
        """Create the spool directory and this spool's part of the claim area when missing."""
        try:
            make_dirs(self.path, mode=0o770)
        except OSError as exc:
            raise SpoolError(
                f"cannot use the spool directory {self.path}: {exc.strerror or exc} "
                "(check [[spool]] path and its permissions)"
            ) from None
        make_dirs(self.claim_dir)

    def scan(self) -> list[str]:
        """Names of the ``.eml`` entries waiting in the spool, oldest name first."""
        try:
            with os.scandir(self.path) as entries:
                names = [e.name for e in entries if is_spool_name(e.name)]
        except FileNotFoundError:
            log.error("spool directory %s does not exist (recreating it)", self.path)
            make_dirs(self.path, mode=0o770)
            return []
        names.sort()
        return names

    def claim(self, name: str, entry_id: str) -> Claimed | None:
        """Take ``name`` from the spool, or None when another process took it first."""
        source = os.path.join(self.path, name)  # (str: cheaper than a Path join, per file)
        if not self._cross_device:
            target = f"{self._target}{entry_id}{SUFFIX}"
            try:
                os.rename(source, target)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if _in_use(exc):
                    log.debug("%s is still open in another program; retrying later", source)
                    return None
                if exc.errno != errno.EXDEV:
                    raise SpoolError(f"cannot claim {source}: {exc.strerror}") from exc
                log.warning(
                    "spool %s and the queue are on different filesystems or mounts (systemd's "
                    "ReadWritePaths= makes each path its own mount): claiming through %s "
                    "and copying (put both under one mount for zero-copy claims)",
                    self.path,
                    self.beside_dir,
                )
                self._cross_device = True
            else:
                return Claimed(self.config, entry_id, target, name)
        target = os.path.join(self.beside_dir, f"{entry_id}{SUFFIX}")
        try:
            make_dirs(self.beside_dir)
            os.rename(source, target)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if _in_use(exc):
                return None
            raise SpoolError(f"cannot claim {source}: {exc.strerror}") from exc
        return Claimed(self.config, entry_id, target, name)

    def waiting(self) -> list[Claimed]:
        """Files claimed from this spool and not yet in the queue (a crash or a fault came
        between the claim and the store), oldest first."""
        found = []
        for directory in (self.claim_dir, self.beside_dir):
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if name.endswith(SUFFIX) and not name.startswith("."):
                    path = os.path.join(directory, name)
                    found.append(Claimed(self.config, name[: -len(SUFFIX)], path, name))
        return sorted(found, key=lambda claimed: claimed.entry_id)

    def unclaim(self, claimed: Claimed) -> bool:
        """Put a claimed file back into the spool under its own name; False when it cannot
        be (it then waits where it is)."""
        try:
            os.rename(claimed.path, os.path.join(self.path, claimed.original_name))
        except OSError:
            return False
        return True


def _in_use(exc: OSError) -> bool:
    """Windows refuses to rename a file another program still has open (a producer that has not
    closed it yet): not an error, the next scan takes it. POSIX renames open files freely."""
    return sys.platform == "win32" and getattr(exc, "winerror", None) in (32, 33)


def is_spool_name(name: str) -> bool:
    """``.eml`` files only; dotfiles and temp names are a producer's work in progress."""
    return name.endswith(SUFFIX) and not name.startswith(".")


def read_claimed(path: str | os.PathLike[str], max_size: int, *, sync: bool = True) -> bytes:
    """The content of a claimed file, made durable (fsync) before anything else happens
    (``sync=False``: the caller has made it durable otherwise, or only looks).

    Refuses (SpoolError with the reason) symlinks, anything but regular files, files with more
    than one hard link (the other name could be a file the producer may not read), and files
    larger than ``max_size``.
    """
    data, fd = open_claimed(path, max_size)
    try:
        if sync:
            os.fsync(fd)
        return data
    finally:
        os.close(fd)


def open_claimed(path: str | os.PathLike[str], max_size: int) -> tuple[bytes, int]:
    """``read_claimed`` without the fsync: the content and the file still open, for the caller
    to fsync (and close) later, off the event loop. Raises as ``read_claimed`` does."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpoolError("it is a symbolic link; mqd only takes regular files") from None
        raise SpoolError(f"cannot open it: {exc.strerror}") from None
    try:
        return _read_checked(fd, max_size), fd
    except BaseException:
        os.close(fd)
        raise


def _read_checked(fd: int, max_size: int) -> bytes:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        kind = _kind(st.st_mode)
        raise SpoolError(f"it is a {kind}, not a regular file")
    if st.st_nlink != 1:
        raise SpoolError(
            f"it has {st.st_nlink} hard links; mqd only takes files with a single link"
        )
    if st.st_size > max_size:
        raise SpoolError(
            f"it is {st.st_size} bytes, more than queue.max_message_size ({max_size} bytes)"
        )
    chunks = []
    remaining = max_size + 1
    # The first read asks for the size fstat gave (and one byte more, to see the end): a
    # larger buffer would be allocated (mmap'd) and shrunk for every small message. When it
    # returns exactly that size, the file ended there, and no second read is needed to see
    # it (a system call fewer per message).
    want = st.st_size + 1
    while remaining > 0:
        chunk = os.read(fd, min(remaining, want))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
        if len(chunks) == 1 and len(chunk) == st.st_size:
            break
        want = 1 << 20
    data = b"".join(chunks)
    if len(data) > max_size:
        raise SpoolError(f"it grew past queue.max_message_size ({max_size} bytes) while read")
    return data


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"
