"""Reading a claimed file: safely (``mqd.intake.spool.open_claimed``), parsed, and still open for
its fsync when intake fsyncs it off the event loop."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from mqd.errors import SpoolError
from mqd.intake.spool import Claimed, open_claimed
from mqd.message.envelope import ParsedMessage, parse_message

__all__ = ["Read", "fsync_and_close", "read_claimed_file"]

log = logging.getLogger("mqd.intake")


@dataclass(slots=True)
class Read:
    claimed: Claimed
    size: int = 0
    data: bytes | None = None
    parsed: ParsedMessage | None = None
    error: str | None = None
    #: Where it failed, for the failed folder: "intake" (unreadable, malformed) or "policy".
    stage: str = "intake"
    #: The file, still open for its fsync (claimed on the event loop, synced off it).
    fd: int | None = None

    def take_fd(self) -> int | None:
        """The open descriptor, now the caller's to close."""
        fd, self.fd = self.fd, None
        return fd

    def close(self) -> None:
        fd = self.take_fd()
        if fd is not None:
            os.close(fd)


def read_claimed_file(claimed: Claimed, max_size: int, *, keep_open: bool) -> Read:
    """Read and parse a claimed file. With ``keep_open`` the file stays open in ``read.fd`` for
    the caller to fsync; otherwise it is closed (the caller does not need its fsync: the store
    copies it durably, or it was made durable before)."""
    read = Read(claimed)
    try:
        data, fd = open_claimed(claimed.path, max_size)
        if keep_open:
            read.fd = fd
        else:
            os.close(fd)
        read.data, read.size = data, len(data)
        read.parsed = parse_message(data)
    except SpoolError as exc:  # MessageParseError included
        read.error = str(exc)
    except Exception as exc:  # a bug must not lose the file: it goes to failed/ too
        log.exception("unexpected error reading %s", claimed.path)
        read.error = f"mqd could not read it: {exc!r}"
    return read


def fsync_and_close(fds: list[int]) -> None:
    """Fsync and close ``fds`` (in a worker thread); every one is closed whatever happens."""
    try:
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)
