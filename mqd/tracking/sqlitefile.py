"""The SQLite event store's file: opening it for the tracker (``SQLiteHome``), telling damage from
other faults (``classify``), setting a damaged file aside with its ``-wal`` and ``-shm`` so that
history starts afresh, and opening it read-only for ``mqd history`` (``reading``) with errors that
name the file and say what to do.

Several worker processes may share the file. Each remembers which file (device and inode) it
opened, so that one finding the file damaged never sets aside the new one another worker has
already put in its place, and each notices when the file it writes to was moved or replaced.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from mqd.errors import TrackingError
from mqd.tracking.eventstore import Fault
from mqd.tracking.keeper import FIRST_RETRY, MAX_RETRY
from mqd.tracking.sqlite import SQLiteStore

__all__ = ["SIDE_FILES", "SQLiteHome", "classify", "reading", "unreadable"]

#: SQLite's primary result codes that mean the file is damaged, not merely unusable for now.
DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
#: The files SQLite keeps next to a database, by suffix: they go where the database goes (a
#: stale WAL or journal next to a new, empty database would be replayed into it).
SIDE_FILES = ("-wal", "-shm", "-journal")


def classify(exc: BaseException) -> Fault:
    """What ``exc``, raised opening or using a ``SQLiteStore``, means: DAMAGED for a corrupt page
    or a file that is not a database; UNAVAILABLE for the conditions that may pass or be fixed
    outside (locked, unreadable, a full disk, an I/O error, a directory that cannot be made or
    written, a schema from a newer mqd); OTHER for the rest (a bug)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in DAMAGE_CODES:
            return Fault.DAMAGED
        if isinstance(exc, sqlite3.OperationalError):
            return Fault.UNAVAILABLE
        return Fault.OTHER
    if isinstance(exc, OSError | TrackingError):
        return Fault.UNAVAILABLE
    return Fault.OTHER


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class SQLiteHome:
    """Where the tracker's ``SQLiteStore`` lives: ``path``. Implements ``keeper.StoreHome``.

    ``now`` (seconds since the epoch) names the files set aside; ``timeout`` is how long a
    statement waits for another writer's lock.
    """

    def __init__(
        self, path: Path, *, now: Callable[[], float] = time.time, timeout: float = 10.0
    ) -> None:
        self.path = path
        self._now = now
        self._timeout = timeout
        #: The file last opened or found damaged; None when there was none.
        self._identity: tuple[int, int] | None = None

    @property
    def where(self) -> str:
        return str(self.path)

    @property
    def retry(self) -> tuple[float, float]:
        """30 s doubling to 10 min: a full disk or a lost lock is not over in a second."""
        return (FIRST_RETRY, MAX_RETRY)

    def open(self) -> SQLiteStore:
        """The store at ``path``, created if absent. Raises what ``SQLiteStore`` raises."""
        before = _identity(self.path)
        self._identity = before  # what a damaged file is known by
        store = SQLiteStore(self.path, timeout=self._timeout)
        # The file opened: the one there before, or the one just created. (Replaced in between,
        # ``replaced`` says so at the first use.)
        self._identity = before or _identity(self.path)
        return store

    def fault(self, exc: BaseException) -> Fault:
        """What ``exc`` means (``classify``)."""
        return classify(exc)

    def replaced(self) -> bool:
        """Whether the file at ``path`` is no longer the one opened (moved away, replaced)."""
        return _identity(self.path) != self._identity

    def set_aside(self) -> Path | None:
        """Rename the damaged file, with its side files, to ``<name>.corrupt-<UTC time>``
        (``-2``, ``-3`` ... after it if taken) and return that path; None when the file at
        ``path`` is no longer the one found damaged (another worker set it aside already).
        The store must be closed first. Raises OSError when the file cannot be renamed."""
        if self._identity is None or _identity(self.path) != self._identity:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._now()))
        base = f"{self.path.name}.corrupt-{stamp}"
        target, n = self.path.with_name(base), 1
        while any(
            self.path.with_name(target.name + suffix).exists() for suffix in ("", *SIDE_FILES)
        ):
            n += 1
            target = self.path.with_name(f"{base}-{n}")
        # The side files first: a database without them is whole as of its last checkpoint,
        # while a new database next to a stale WAL would have it replayed into it.
        for suffix in SIDE_FILES:
            with suppress(FileNotFoundError):
                os.rename(f"{self.path}{suffix}", f"{target}{suffix}")
        os.rename(self.path, target)
        self._identity = None
        return target


@contextmanager
def reading(path: Path) -> Iterator[SQLiteStore]:
    """The store at ``path``, read-only, for one command (``mqd history``), closed after it.

    FileNotFoundError when there is no file. A file that is damaged or cannot be read, found
    at opening or by a query in the ``with`` block, raises ``TrackingError`` naming the file and
    what to do.
    """
    try:
        store = SQLiteStore(path, readonly=True)
    except sqlite3.Error as exc:
        raise unreadable(path, exc) from None
    try:
        yield store
    except sqlite3.Error as exc:
        raise unreadable(path, exc) from None
    finally:
        store.close()


def unreadable(path: Path, exc: sqlite3.Error) -> TrackingError:
    """The error for a store that cannot be read, saying what to do about it."""
    if classify(exc) is Fault.DAMAGED:
        return TrackingError(
            f"the event store {path} is damaged ({exc}): its history cannot be read. Move it "
            f"away with its -wal and -shm files (to {path.name}.damaged, say) or restore it "
            "from a backup: mqd starts a new, empty history at its next event (a daemon that "
            "finds it damaged sets it aside by itself)",
            path=path,
        )
    if isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc):
        return TrackingError(
            f"{path} is not mqd's event store ({exc}): check [tracking] path", path=path
        )
    return TrackingError(
        f"cannot read the event store {path}: {exc} (run this as the daemon's user, and check "
        "that the file and its directory are readable)",
        path=path,
    )
