"""The control channel: a real socket (Unix, and the TCP + token form Windows uses), one JSON
request and answer per connection."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from mqd.admin.control import (
    SOCKET_NAME,
    TCP_INFO_NAME,
    ControlError,
    ControlServer,
    DaemonNotRunning,
    call,
)
from mqd.errors import MQDError


async def echo(op: str, args: dict[str, Any]) -> Any:
    if op == "fail":
        raise MQDError("refused on purpose")
    if op == "crash":
        raise RuntimeError("a bug")
    return {"op": op, "args": args}


@pytest.fixture(params=["unix", "tcp"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_request_gets_its_answer(tmp_path: Path, transport: str) -> None:
    server = ControlServer(tmp_path, echo, transport=transport)
    await server.start()
    try:
        result = await call(tmp_path, "list", {"relay": "main"}, transport=transport)
        assert result == {"op": "list", "args": {"relay": "main"}}
    finally:
        await server.close()
    assert not (tmp_path / SOCKET_NAME).exists() and not (tmp_path / TCP_INFO_NAME).exists()


async def test_refusals_and_bugs_come_back_as_control_errors(
    tmp_path: Path, transport: str
) -> None:
    server = ControlServer(tmp_path, echo, transport=transport)
    await server.start()
    try:
        with pytest.raises(ControlError, match="refused on purpose"):
            await call(tmp_path, "fail", transport=transport)
        with pytest.raises(ControlError, match="internal error: RuntimeError"):
            await call(tmp_path, "crash", transport=transport)
        # The server survives both.
        assert (await call(tmp_path, "ping", transport=transport))["op"] == "ping"
    finally:
        await server.close()


async def test_nothing_listening_is_daemon_not_running(tmp_path: Path, transport: str) -> None:
    with pytest.raises(DaemonNotRunning, match=str(tmp_path)):
        await call(tmp_path, "list", transport=transport)


async def test_a_stale_socket_file_is_daemon_not_running_and_replaced(tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / SOCKET_NAME))
    stale.close()  # the file stays, nobody listens: what a SIGKILLed daemon leaves behind
    with pytest.raises(DaemonNotRunning):
        await call(tmp_path, "list", transport="unix")
    server = ControlServer(tmp_path, echo, transport="unix")
    await server.start()
    try:
        assert (await call(tmp_path, "list", transport="unix"))["op"] == "list"
    finally:
        await server.close()


async def test_the_socket_is_private_to_the_daemon_user(tmp_path: Path) -> None:
    server = ControlServer(tmp_path, echo, transport="unix")
    await server.start()
    try:
        mode = stat.S_IMODE((tmp_path / SOCKET_NAME).stat().st_mode)
        assert mode == 0o600
    finally:
        await server.close()


async def test_tcp_needs_the_token(tmp_path: Path) -> None:
    server = ControlServer(tmp_path, echo, transport="tcp")
    await server.start()
    try:
        info = json.loads((tmp_path / TCP_INFO_NAME).read_text())
        assert stat.S_IMODE((tmp_path / TCP_INFO_NAME).stat().st_mode) == 0o600
        info["token"] = "0" * 32
        (tmp_path / TCP_INFO_NAME).write_text(json.dumps(info))
        with pytest.raises(ControlError, match="bad control token"):
            await call(tmp_path, "list", transport="tcp")
    finally:
        await server.close()


async def test_a_malformed_request_is_refused_not_fatal(tmp_path: Path) -> None:
    import asyncio

    server = ControlServer(tmp_path, echo, transport="unix")
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / SOCKET_NAME))
        writer.write(b'{"args": 1}\n')
        await writer.drain()
        answer = json.loads(await reader.readline())
        writer.close()
        assert answer["ok"] is False and "malformed request" in answer["error"]
        assert (await call(tmp_path, "ok", transport="unix"))["op"] == "ok"
    finally:
        await server.close()


async def test_a_queue_dir_too_long_for_a_socket_address_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(str(deep / SOCKET_NAME)) > 108
    server = ControlServer(deep, echo, transport="unix")
    await server.start()
    try:
        assert (await call(deep, "list", transport="unix"))["op"] == "list"
    finally:
        await server.close()
