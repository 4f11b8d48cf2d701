"""DATA read in chunks (``Connection.smtp_DATA``) answers as aiosmtpd's line-by-line loop does:
the same replies, the same message handed over (dot-unstuffed, bare CR and LF kept for the
handler to judge), the same bytes left for the next command; on a table and on generated
input, whole or in pieces."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqd.intake.smtpd.data import CHUNK, Reader
from mqd.intake.smtpd.session import Connection

LINE_LIMIT = 20
SIZE_LIMIT = 60


class _Recorder:
    def __init__(self) -> None:
        self.content: bytes | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.content = envelope.original_content
        return "250 taken"


class _Reference(SMTP):
    """aiosmtpd's own session, reading from a given stream and recording its replies."""

    def __init__(self, handler: _Recorder, reader: asyncio.StreamReader, size: int) -> None:
        SMTP.__init__(self, handler, data_size_limit=size, loop=asyncio.get_running_loop())
        self.replies: list[str] = []
        self._reader = reader
        self.transport: Any = object()  # (a connection: aiosmtpd loops while it has one)
        self.session = Session(asyncio.get_running_loop())
        self.session.host_name = "client.example"
        self.envelope = Envelope()
        self.envelope.rcpt_tos = ["a@b.example"]

    async def push(self, status: Any) -> None:
        self.replies.append(status)


class _Chunked(_Reference, Connection):
    """The same with Connection's DATA (not its listener-bound reply translation)."""

    smtp_DATA = Connection.smtp_DATA


async def _run(
    cls: type[_Reference], pieces: list[bytes], size: int
) -> tuple[list[str], bytes | None, bytes]:
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    handler = _Recorder()
    session = cls(handler, reader, size)
    session.line_length_limit = LINE_LIMIT
    task = asyncio.ensure_future(session.smtp_DATA(""))
    for piece in pieces:
        reader.feed_data(piece)
        await asyncio.sleep(0)  # (a yield: the session reads what came)
    reader.feed_eof()
    await task
    return session.replies, handler.content, await reader.read()


async def _both(stream: bytes, size: int = SIZE_LIMIT, cuts: list[int] | None = None) -> None:
    expected = await _run(_Reference, [stream], size)
    assert await _run(_Chunked, [stream], size) == expected
    if cuts:
        edges = [0, *sorted(set(cuts)), len(stream)]
        pieces = [stream[a:b] for a, b in itertools.pairwise(edges) if b > a]
        assert await _run(_Chunked, pieces, size) == expected


STREAMS = [
    b".\r\n",
    b".\r\nQUIT\r\n",
    b"a\r\n.\r\n",
    b"Subject: x\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n",
    b"..a\r\n.b\r\n..\r\n...\r\n.\r\n",
    b"a\n.\nb\r\n.\r\n",
    b"a\r\n.\nb\r\n.\r\n",
    b"a\n.\r\nb\r\n.\r\n",
    b"a\r\n.\rb\r\n.\r\n",
    b"a\r\r\n.\r\n",
    b"\r\n\r\n.\r\n",
    b"x" * 17 + b"\r\n.\r\n",  # a line at the limit with its CRLF... less one
    b"x" * 18 + b"\r\n.\r\n",  # ... at it
    b"x" * 19 + b"\r\n.\r\n",  # one over: aiosmtpd's second check
    b"x" * 20 + b"\r\n.\r\n",
    b"x" * 21 + b"\r\n.\r\n",  # its readuntil overruns
    b"x" * 50 + b"\r\nok\r\n.\r\nQUIT\r\n",
    b"." + b"x" * 18 + b"\r\n.\r\n",
    b"0123456789\r\n" * 5 + b".\r\n",  # 60 bytes: at the size limit
    b"0123456789\r\n" * 5 + b"a\r\n.\r\n",  # over it
    b"0123456789\r\n" * 20 + b".\r\nQUIT\r\n",
    b"0123456789\r\n" * 4 + b"x" * 25 + b"\r\n.\r\n",  # too long and too much on one line
    b"0123456789\r\n" * 4 + b"x" * 19 + b"\r\n.\r\n",
    b"x" * 30 + b"\r\n" + b"0123456789\r\n" * 10 + b".\r\n",
    b"x" * 200 + b"\r\n.\r\nNOOP\r\n",
]


@pytest.mark.parametrize("stream", STREAMS)
async def test_data_read_as_aiosmtpd_reads_it(stream: bytes) -> None:
    await _both(stream, cuts=list(range(1, len(stream))))  # and a byte at a time
    await _both(stream, size=0)  # no size limit


_LINE = st.lists(
    st.sampled_from([b"a", b"b.", b".", b"..", b"\r", b"\n", b"0123456789"]), max_size=12
).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(_LINE, max_size=12),
    after=st.sampled_from([b"", b"QUIT\r\n", b"MAIL FROM:<a@b>\r\n"]),
    size=st.sampled_from([0, 30, SIZE_LIMIT, 1000]),
    cuts=st.lists(st.integers(min_value=1, max_value=300), max_size=6),
)
async def test_generated_data_read_as_aiosmtpd_reads_it(
    lines: list[bytes], after: bytes, size: int, cuts: list[int]
) -> None:
    stream = b"".join(line + b"\r\n" for line in lines) + b".\r\n" + after
    await _both(stream, size, [c for c in cuts if c < len(stream)])


class _Transport:
    def __init__(self) -> None:
        self.paused = 0

    def pause_reading(self) -> None:
        self.paused += 1


async def test_a_connections_reader_pauses_the_transport_only_past_a_reads_worth() -> None:
    reader = Reader(limit=LINE_LIMIT)
    transport = _Transport()
    reader.set_transport(transport)  # type: ignore[arg-type]
    reader.feed_data(b"x" * CHUNK)  # (asyncio's own paused past 2 * LINE_LIMIT)
    assert transport.paused == 0
    reader.feed_data(b"x")
    assert transport.paused == 1
    # Its limit for lines is still the line limit.
    reader.feed_data(b"\r\n")
    with pytest.raises(asyncio.LimitOverrunError):
        await reader.readuntil(b"\r\n")
