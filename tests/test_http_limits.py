"""The HTTP server against hostile or careless clients: idle connections by the thousand, slow
headers, undecodable tokens, control characters in a path. A real daemon each time: in this
process for the single cases, and a real ``mqd run`` under systemd's default open-files limit
(1024) for the flood."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.error import URLError

import pytest
from corehelpers import make_message
from smtpserver import SMTPPeer

from mqd.daemon.root import Daemon
from mqd.errors import ConfigError
from mqd.plugins.host import PluginHost
from mqd.testing import wait_until, wait_until_sync
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


# -- the connection limit and the header timeout --------------------------------------------------


def test_max_connections_defaults_to_a_quarter_of_the_open_files_limit(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    config = harness.configure({"mem": {"plugin": "memory"}}, tables={"http": {"enabled": True}})
    assert config.http.header_timeout == 10
    assert 1 <= config.http.max_connections <= 256
    if sys.platform == "win32":
        return
    show = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), "
        "resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "from pathlib import Path\n"
        "from mqd.config.load import load_config\n"
        "print(load_config(Path(sys.argv[2])).http.max_connections)"
    )
    for files, expected in ((64, 16), (1024, 256), (4096, 256)):
        out = subprocess.run(
            [sys.executable, "-c", show, str(files), str(harness.config_path)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert int(out.stdout) == expected, (files, out.stdout)


@pytest.mark.parametrize(
    ("http", "key", "says"),
    [
        ({"max_connections": 0}, "http.max_connections", "at least 1"),
        ({"max_connections": "many"}, "http.max_connections", '"auto"'),
        ({"header_timeout": "0s"}, "http.header_timeout", "more than 0s"),
        ({"header_timeout": "soon"}, "http.header_timeout", "duration"),
    ],
)
def test_bad_limits_are_config_errors_naming_the_key(
    tmp_path: Path, http: dict[str, Any], key: str, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Harness(tmp_path).configure({"mem": {"plugin": "memory"}}, tables={"http": http})
    assert info.value.key == key
    assert says in str(info.value)


async def test_a_connection_beyond_max_connections_is_closed_unread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mqd.http"):
        async with serving(tmp_path, max_connections=2, header_timeout="1m") as daemon:
            port = port_of(daemon)
            first = await asyncio.open_connection("127.0.0.1", port)
            second = await asyncio.open_connection("127.0.0.1", port)
            extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", port)
            extra_writer.write(get(b"/api/v1/status"))
            try:
                unasked = await asyncio.wait_for(extra_reader.read(), 10)
            except ConnectionResetError:
                unasked = b""
            assert unasked == b"", unasked[:200]  # closed, never answered
            extra_writer.close()
            # The two served ones still are: one answers a request, then closes.
            reader, writer = second
            writer.write(get(b"/api/v1/status"))
            answer = await asyncio.wait_for(reader.read(), 10)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            writer.close()

            # Its place is free again: a new client is served (once the server saw it go).
            async def served_again() -> int | None:
                try:
                    status, _ = await exchange(port, get(b"/api/v1/status"))
                except ConnectionError:
                    return None
                return status

            assert await wait_until(served_again, "a place freed for a new connection", 10) == 200
            assert not await closed_by_server(first[0], 0.1)  # idle, within header_timeout
            first[1].close()
            assert daemon.http is not None and daemon.http.gate.refused >= 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "mqd.http"]
    assert any("[http] max_connections" in w and "2 are open" in w for w in warnings), warnings


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n"],
    ids=["nothing", "half the headers"],
)
async def test_a_connection_without_a_request_is_closed_after_header_timeout(
    tmp_path: Path, sent: bytes
) -> None:
    async with serving(tmp_path, header_timeout=0.5) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(daemon))
        writer.write(sent)
        started = time.monotonic()
        assert await closed_by_server(reader, 10)
        assert time.monotonic() - started >= 0.4  # not at once: when its time was up
        writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_header_timeout(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, header_timeout=0.5) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(daemon))
        for _ in range(2):  # kept alive between the two, within the timeout
            writer.write(b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 "), head
            length = re.search(rb"(?i)content-length: (\d+)", head)
            assert length is not None
            await reader.readexactly(int(length.group(1)))
        started = time.monotonic()
        assert await closed_by_server(reader, 10)
        assert time.monotonic() - started >= 0.4
        writer.close()


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


# -- a flood of idle connections against a real daemon at 1024 open files -------------------------

#: What systemd gives a service by default (LimitNOFILE's soft limit).
NOFILE = 1024
IDLE = 2000


@pytest.fixture
def files_for_the_flood() -> Iterator[None]:
    """This process may hold IDLE sockets (raised up to its hard limit, put back after)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE + 512
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_count(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the server has not closed."""
    left = 0
    for sock in sockets:
        try:
            if sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK):
                left += 1  # it answered something: not idle, not closed
        except BlockingIOError:
            left += 1
        except OSError:
            pass
    return left


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status", timeout=5) as r:
            return r.status == 200
    except (URLError, ConnectionError, TimeoutError):
        return False


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX open-files limits")
def test_idle_connections_do_not_starve_the_daemon_of_files(
    tmp_path: Path, smtp_server: SMTPPeer, files_for_the_flood: None
) -> None:
    harness = Harness(tmp_path)
    harness.configure(
        {
            "sink": {
                "plugin": "smtp",
                "host": "127.0.0.1",
                "port": smtp_server.port,
                "security": "none",
            }
        },
        tables={"http": {"enabled": True, "port": 0, "header_timeout": "2s"}},
    )
    log = tmp_path / "mqd.log"
    # The limit is set in the child itself, then it becomes `mqd run` (same process): a
    # preexec_fn would run Python in a fork of this process, whose SMTP server has threads.
    launch = (
        "import os, resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, "
        "resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'mqd', '--config', sys.argv[1], 'run'])"
    )
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", launch, str(harness.config_path)],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    sockets: list[socket.socket] = []
    try:
        found = wait_until_sync(
            lambda: re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text()), "the HTTP port"
        )
        port = int(found.group(1))
        wait_until_sync(lambda: "mqd starting" in log.read_text(), "the daemon to start")
        for _ in range(IDLE):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        if sys.platform == "linux":
            # What it serves (max_connections, NOFILE / 4), at most one accepted batch (the
            # listen backlog, 128) on its way out, and its own files: far from NOFILE.
            # Counted once the accepted batch has been turned away (a snapshot taken while two
            # batches are on their way out counted 525 once): it must come down, not stay up.
            def held() -> int:
                return len(os.listdir(f"/proc/{proc.pid}/fd"))

            bound = NOFILE // 4 + 128 + 100
            wait_until_sync(lambda: held() < bound, f"the daemon to hold < {bound} files", 20)
        harness.drop(make_message(to=("flood@example.net",)))
        wait_until_sync(lambda: smtp_server.messages, "the delivery")
        assert smtp_server.messages[0].rcpt_tos == ["flood@example.net"]
        wait_until_sync(lambda: answers(port), "a fresh request to be answered")
        wait_until_sync(lambda: open_count(sockets) == 0, "every idle connection to be closed")
    finally:
        for sock in sockets:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    text = log.read_text()
    assert "refused" in text and "[http] max_connections" in text  # the limit was reached
    for sign in ("Too many open files", "EMFILE", "Traceback", "ERROR"):
        assert sign not in text, text[-3000:]
