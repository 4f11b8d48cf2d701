"""The HTTP server against hostile or careless clients: idle connections by the thousand, slow
headers, undecodable tokens, control characters in a path. A real daemon each time: in this
process for the single cases, and a real ``mqd run`` under systemd's default open-files limit
(1024) for the flood."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from mqd.daemon.root import Daemon
from mqd.plugins.host import PluginHost
from mqd.testing.harness import Harness

TOKEN = "tökén-for-the-tests-5e1d"  # not ASCII: it must still match, as bytes
PROXIED = b"X-Forwarded-For: 203.0.113.9\r\n"  # not local: the token is needed

# -- a daemon in this process, and raw HTTP -------------------------------------------------------


@asynccontextmanager
async def serving(tmp_path: Path, **http: Any) -> AsyncIterator[Daemon]:
    harness = Harness(tmp_path)
    config = harness.configure(
        {"mem": {"plugin": "memory"}},
        tables={"http": {"enabled": True, "port": 0, "token": TOKEN, **http}},
    )
    daemon = Daemon(config, host=PluginHost(entry_points=False))
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        assert daemon.http is not None
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)


def port_of(daemon: Daemon) -> int:
    assert daemon.http is not None
    return daemon.http.port


async def exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` (it should say ``Connection: close``); the answer's status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    if not answer:
        raise ConnectionResetError("closed without an answer")
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def get(path: bytes, *headers: bytes) -> bytes:
    return (
        b"GET "
        + path
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"".join(headers)
        + b"Connection: close\r\n\r\n"
    )


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closes this connection within ``within`` seconds."""
    try:
        while await asyncio.wait_for(reader.read(65536), within):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


# -- tokens and keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer tökén-for-the-tests-5e1d".encode("latin-1"),  # the token, in another charset
        b"Bearer \xff\xfe\x80",  # not UTF-8 at all
        "Bearer tökén-for-the-tests-5e1e".encode(),  # UTF-8, one letter off
        "Bearer Ünïcødé".encode(),
    ],
)
async def test_a_non_ascii_wrong_token_is_403_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, authorization: bytes
) -> None:
    async with serving(tmp_path) as daemon:
        port = port_of(daemon)
        header = b"Authorization: " + authorization + b"\r\n"
        status, body = await exchange(port, get(b"/api/v1/status", PROXIED, header))
        assert status == 403 and b'"error": "forbidden: ' in body, body
        cookie = b"Cookie: mqd_session=" + authorization[7:] + b"\r\n"
        status, body = await exchange(port, get(b"/api/v1/status", PROXIED, cookie))
        assert status == 403, body
        # The right token, in the UTF-8 a client sends, is let in: bytes against bytes.
        right = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        status, body = await exchange(port, get(b"/api/v1/status", PROXIED, right))
        assert status == 200, body
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "path",
    [
        b"/api/v1/history/alice%0A@example.net",
        b"/api/v1/history/%3Cid%0D%0ABcc:x%40example.com%3E",
        b"/api/v1/history/nul%00",
        b"/api/v1/messages/1a20911d58a922d4e143b%09",
        b"/api/v1/recipients/bob%7F@example.net/messages",
    ],
)
async def test_a_control_character_in_a_key_is_400(tmp_path: Path, path: bytes) -> None:
    async with serving(tmp_path) as daemon:
        status, body = await exchange(port_of(daemon), get(path))
    assert status == 400, body
    assert b"must not hold control characters" in body, body
