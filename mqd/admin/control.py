"""The control channel: how ``mqd queue``, ``mqd status`` and friends talk to a running daemon.

On POSIX it is a Unix stream socket, ``<queue dir>/control.sock``. The queue directory is
private to the daemon's user (0700), so only that user and root can reach it: administering the
queue needs no password because it needs the daemon's own permissions. On Windows, where asyncio
has no Unix sockets, it is TCP on 127.0.0.1 with the port and a random token in
``<queue dir>/control.json`` (readable only by the service account), and every request carries the
token.

The protocol is one JSON object per line each way. A request is ``{"op": ..., "args": {...}}``
(plus ``"token"`` over TCP); the answer is ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "..."}``. One request per connection keeps clients trivial.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from mqd.errors import MQDError
from mqd.fsutil import atomic_write

__all__ = ["ControlError", "ControlServer", "DaemonNotRunning", "call"]

log = logging.getLogger("mqd.control")

SOCKET_NAME = "control.sock"
TCP_INFO_NAME = "control.json"
#: A request or answer larger than this is refused (a queue listing of ~100k messages fits).
LINE_LIMIT = 64 * 1024 * 1024
#: Unix socket paths are limited to ~108 bytes; longer ones go through /proc/self/fd on Linux.
_SUN_PATH_MAX = 100

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class DaemonNotRunning(MQDError):
    """No daemon answers on this queue's control channel."""


class ControlError(MQDError):
    """The daemon refused or failed a request; the message says why, ``kind`` names the
    daemon-side exception class ("ConfigError", "AdminError", ...) when there was one."""

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


def default_transport() -> str:
    return "tcp" if sys.platform == "win32" else "unix"


class ControlServer:
    def __init__(self, directory: Path, handler: Handler, *, transport: str | None = None) -> None:
        self.directory = directory
        self.handler = handler
        self.transport = transport or default_transport()
        self._server: asyncio.AbstractServer | None = None
        self._token = ""

    async def start(self) -> None:
        """Listen. The caller holds the queue lock, so a leftover socket file is stale."""
        if self.transport == "unix":
            path = self.directory / SOCKET_NAME
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with _short_path(path) as usable:
                self._server = await asyncio.start_unix_server(
                    self._serve, path=usable, limit=LINE_LIMIT
                )
            os.chmod(path, 0o600)
        else:
            self._token = secrets.token_hex(16)
            self._server = await asyncio.start_server(
                self._serve, host="127.0.0.1", port=0, limit=LINE_LIMIT
            )
            port = self._server.sockets[0].getsockname()[1]
            info = json.dumps({"port": port, "token": self._token, "pid": os.getpid()})
            await asyncio.to_thread(
                atomic_write, self.directory / TCP_INFO_NAME, info.encode(), sync_dir=False
            )

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        for name in (SOCKET_NAME, TCP_INFO_NAME):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            answer = await self._answer(reader)
            writer.write(json.dumps(answer, default=str).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            request = json.loads(await reader.readline())
            op, args = request["op"], request.get("args") or {}
            if not isinstance(op, str) or not isinstance(args, dict):
                raise TypeError("op must be a string and args an object")
        except (ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": f"malformed request: {exc}"}
        if self.transport == "tcp" and not hmac.compare_digest(
            str(request.get("token", "")), self._token
        ):
            return {"ok": False, "error": "bad control token"}
        try:
            return {"ok": True, "result": await self.handler(op, args)}
        except MQDError as exc:
            return {"ok": False, "error": str(exc), "kind": type(exc).__name__}
        except Exception as exc:  # a bug must not take the daemon down with it
            log.exception("control request %r failed", op)
            return {"ok": False, "error": f"internal error: {exc!r} (see the daemon's log)"}


async def call(
    directory: Path,
    op: str,
    args: dict[str, Any] | None = None,
    *,
    timeout: float = 60.0,  # noqa: ASYNC109 - one bound for connect and answer, simplest to call
    transport: str | None = None,
) -> Any:
    """Send one request to the daemon of the queue in ``directory`` and return its result.

    Raises DaemonNotRunning when nothing listens, ControlError when the daemon refused.
    """
    request: dict[str, Any] = {"op": op, "args": args or {}}
    try:
        if (transport or default_transport()) == "unix":
            with _short_path(directory / SOCKET_NAME) as usable:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(usable, limit=LINE_LIMIT), timeout
                )
        else:
            info = json.loads((directory / TCP_INFO_NAME).read_text(encoding="utf-8"))
            request["token"] = info["token"]
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", int(info["port"]), limit=LINE_LIMIT), timeout
            )
    except (FileNotFoundError, ConnectionRefusedError, KeyError, ValueError) as exc:
        raise DaemonNotRunning(f"no mqd daemon is running on {directory} ({exc})") from None
    except PermissionError:
        raise ControlError(
            f"permission denied on {directory}: run this as the daemon's user (or root)"
        ) from None
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    if not line:
        raise ControlError("the daemon closed the connection without an answer (see its log)")
    answer = json.loads(line)
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error")), kind=answer.get("kind"))
    return answer.get("result")


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """``path`` as a string short enough for a Unix socket address."""
    text = str(path)
    if len(os.fsencode(text)) <= _SUN_PATH_MAX or not sys.platform.startswith("linux"):
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
