"""The text of an SMTP DATA command read in chunks, as aiosmtpd reads it line by line.

aiosmtpd awaits ``readuntil(b"\\r\\n")`` for every line of a message (a coroutine, a search and
a copy each: ~45 for a 2 kB message, the largest part of a session's CPU after the socket).
``read_data`` takes what has arrived in one piece, finds the end (a line holding a lone dot:
lines end with CRLF only, so a bare CR or LF never ends the data), and gives the same verdict
as aiosmtpd's loop: the same refusals for a line longer than the limit or more bytes than
the size limit, the same dot-unstuffing (RFC 5321 section 4.5.2). ``tests/test_smtpd_data.py``
holds the two equal on a table and on generated input.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable
from typing import SupportsIndex

__all__ = ["DataState", "Reader", "read_data"]

#: The end of the data: a line holding a lone dot, after the CRLF that ended the line before.
END = b"\r\n.\r\n"
#: At most this much is taken from the stream at a time.
CHUNK = 64 * 1024


class Reader(asyncio.StreamReader):
    """A connection's stream that lets a read's worth (``CHUNK``) gather before it pauses the
    transport. asyncio pauses it past twice the stream's limit, which for aiosmtpd is the line
    limit: every message over 2 kB paused reading and resumed it once read (an epoll_ctl call
    each way and their Python: ~3% of the daemon's CPU). The limit itself, for lines, stays."""

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        limit: int = self._limit  # type: ignore[has-type]
        self._limit = max(limit, CHUNK // 2)  # feed_data's only use of it: that check
        try:
            super().feed_data(data)
        finally:
            self._limit = limit


class DataState(enum.Enum):
    """aiosmtpd's verdict on the data (its ``_DataState``)."""

    NOMINAL = enum.auto()
    #: A line longer than the line limit: 500.
    TOO_LONG = enum.auto()
    #: More bytes than the size limit: 552.
    TOO_MUCH = enum.auto()


async def read_data(
    reader: asyncio.StreamReader, size_limit: int | None, line_limit: int
) -> tuple[DataState, bytes]:
    """Read the data of a DATA command up to and including its ending dot line; what follows
    (pipelined commands) stays in ``reader``. Returns the verdict and, when NOMINAL, the
    message dot-unstuffed (line endings as they came).

    ``line_limit`` is aiosmtpd's ``line_length_limit`` (a line with its CRLF), which is also
    ``reader``'s limit; ``size_limit`` its ``data_size_limit`` (None or 0: none). Raises
    ConnectionResetError when the client closes the connection before the end.
    """
    # The CRLF that ended the DATA command: a first line holding a dot ends the data too.
    raw = bytearray(b"\r\n")
    # Past this many bytes the data is refused whatever follows (the line that crosses the
    # size limit is complete, or too long): the rest is read and dropped.
    cap = size_limit + line_limit + 3 if size_limit else None
    while True:
        searched = len(raw)
        raw += await _read(reader)
        end = raw.find(END, max(searched - len(END) + 1, 0))
        if end >= 0:
            _unread(reader, raw[end + len(END) :])
            body = raw[: end + 2]  # the leading CRLF, the lines with theirs
            state = _verdict(bytes(body[2:]), size_limit, line_limit)
            if state is not DataState.NOMINAL:
                return state, b""
            return state, bytes(body.replace(b"\r\n.", b"\r\n")[2:])
        if cap is not None and len(raw) - 2 > cap:
            # (The size limit crossed within complete lines, or a line overran: never NOMINAL.)
            state = _verdict(bytes(raw[2:]), size_limit, line_limit, complete=False)
            await _discard(reader, raw[-(len(END) - 1) :])
            return (DataState.TOO_MUCH if state is DataState.NOMINAL else state), b""


def _verdict(
    body: bytes, size_limit: int | None, line_limit: int, complete: bool = True
) -> DataState:
    """aiosmtpd's verdict on the lines of ``body`` (the last one unfinished unless
    ``complete``)."""
    lines = body.split(b"\r\n")
    if (not size_limit or len(body) <= size_limit) and max(map(len, lines)) + 2 <= line_limit:
        return DataState.NOMINAL
    unfinished = lines.pop()
    count = 0
    # As aiosmtpd's loop, line by line: the first limit crossed is the one answered.
    for line in lines:
        if len(line) > line_limit:  # its readuntil overruns before the line is counted
            return DataState.TOO_LONG
        count += len(line) + 2
        if size_limit and count > size_limit:
            return DataState.TOO_MUCH
        if len(line) + 2 > line_limit:
            return DataState.TOO_LONG
    if not complete and len(unfinished) > line_limit:  # overrun before it ends
        return DataState.TOO_LONG
    return DataState.NOMINAL


async def _discard(reader: asyncio.StreamReader, tail: bytes | bytearray) -> None:
    """Read and drop the rest of a refused message; ``tail``: the last bytes read."""
    window = bytes(tail)
    while True:
        window += await _read(reader)
        end = window.find(END)
        if end >= 0:
            _unread(reader, window[end + len(END) :])
            return
        window = window[-(len(END) - 1) :]


async def _read(reader: asyncio.StreamReader) -> bytes:
    chunk = await reader.read(CHUNK)
    if not chunk:
        # At the end of the stream aiosmtpd's eof_received has cancelled the session's task:
        # the cancellation lands here. Otherwise the client is gone all the same.
        await asyncio.sleep(0)
        raise ConnectionResetError("the client closed the connection during DATA")
    return chunk


def _unread(reader: asyncio.StreamReader, data: bytes | bytearray) -> None:
    """Put back what followed the data (pipelined commands) for the session to read next.
    StreamReader has no public way: its buffer, as aiosmtpd itself reaches it at STARTTLS."""
    if data:
        reader._buffer[:0] = data  # type: ignore[attr-defined]
