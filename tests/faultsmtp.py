"""Fault injection for SMTP: a scripted server and a TCP proxy, both real sockets on 127.0.0.1.

``FaultSMTP`` speaks just enough SMTP to answer any code at any stage (greeting, EHLO, MAIL,
each RCPT, DATA, end of data), stall at a stage (never answer), answer slowly, or drop the
connection (mid-DATA included). TLS and AUTH faults use aiosmtpd's server (``SMTPPeer``), which
implements them properly. ``CuttingProxy`` sits between a client and any server and cuts the
connection after N bytes from the client, or slows every chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]
STALL = "stall"  # never answer
DROP = "drop"  # close the connection instead of answering


class _Threaded:
    """An asyncio server in its own thread and loop; ``start()`` sets ``port``."""

    port = 0

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    def _handler(
        self,
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]:
        raise NotImplementedError

    def start(self) -> Any:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handler(), "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


class FaultSMTP(_Threaded):
    """``replies`` maps a stage to what to answer: "greeting", "ehlo", "mail", "rcpt" (or
    "rcpt:<address>"), "data", "end" (after the final dot), "quit". A value is an SMTP reply
    line ("421 4.3.2 shutting down"), STALL or DROP. ``delay`` slows every answer."""

    DEFAULTS: ClassVar[dict[str, str]] = {
        "greeting": "220 fault.test ESMTP",
        "ehlo": "250-fault.test\r\n250-8BITMIME\r\n250 SIZE 10000000",
        "helo": "250 fault.test",
        "mail": "250 2.1.0 OK",
        "rcpt": "250 2.1.5 OK",
        "data": "354 go ahead",
        "end": "250 2.0.0 queued",
        "rset": "250 OK",
        "quit": "221 bye",
        "noop": "250 OK",
    }

    def __init__(self, replies: dict[str, str] | None = None, delay: float = 0.0) -> None:
        super().__init__()
        self.replies = {**self.DEFAULTS, **(replies or {})}
        self.delay = delay
        #: Every command received, in order (DATA content as one b"<data n bytes>" entry).
        self.commands: list[str] = []
        self.delivered: list[bytes] = []

    def _handler(self):  # type: ignore[no-untyped-def]
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if not await self._say(writer, "greeting"):
                    return
                while True:
                    line = await reader.readline()
                    if not line:
                        return
                    command = line.decode("utf-8", "replace").strip()
                    self.commands.append(command)
                    verb = command.split(" ", 1)[0].split(":", 1)[0].lower()
                    stage = {
                        "ehlo": "ehlo",
                        "helo": "helo",
                        "mail": "mail",
                        "rcpt": "rcpt",
                        "data": "data",
                        "rset": "rset",
                        "quit": "quit",
                    }.get(verb, "noop")
                    if stage == "rcpt":
                        address = command.partition(":")[2].strip().strip("<>").split(">")[0]
                        stage = f"rcpt:{address}" if f"rcpt:{address}" in self.replies else "rcpt"
                    if not await self._say(writer, stage):
                        return
                    if stage == "quit":
                        return
                    starts_data = stage == "data" and self.replies["data"].startswith("354")
                    if starts_data and not await self._data(reader, writer):
                        return
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        return handle

    async def _data(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        lines = []
        while True:
            line = await reader.readline()
            if not line:
                return False
            if line in (b".\r\n", b".\n"):
                break
            lines.append(line)
            if self.replies.get("mid-data") == DROP and len(lines) >= 2:
                writer.transport.abort()
                return False
        data = b"".join(lines)
        self.commands.append(f"<data {len(data)} bytes>")
        ok = await self._say(writer, "end")
        if ok and self.replies["end"].startswith("2"):
            self.delivered.append(data)
        return ok

    async def _say(self, writer: asyncio.StreamWriter, stage: str) -> bool:
        reply = self.replies[stage]
        if self.delay:
            await asyncio.sleep(self.delay)
        if reply == STALL:
            await asyncio.sleep(3600)  # sleep-ok: a fake peer that stalls (never answers)
            return False
        if reply == DROP:
            writer.transport.abort()
            return False
        writer.write(reply.encode() + b"\r\n")
        await writer.drain()
        return True


class CuttingProxy(_Threaded):
    """Forwards to ``127.0.0.1:target``; cuts every connection once ``cut_after`` bytes came
    from the client (None: never), and sleeps ``delay`` seconds before forwarding each chunk."""

    def __init__(self, target: int, *, cut_after: int | None = None, delay: float = 0.0) -> None:
        super().__init__()
        self.target = target
        self.cut_after = cut_after
        self.delay = delay
        self.cuts = 0

    def _handler(self):  # type: ignore[no-untyped-def]
        async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)
            sent = 0

            async def upstream() -> None:
                nonlocal sent
                while chunk := await client_r.read(4096):
                    if self.cut_after is not None and sent + len(chunk) > self.cut_after:
                        server_w.write(chunk[: self.cut_after - sent])
                        self.cuts += 1
                        client_w.transport.abort()
                        server_w.transport.abort()
                        return
                    sent += len(chunk)
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    server_w.write(chunk)
                    await server_w.drain()
                server_w.close()

            async def downstream() -> None:
                while chunk := await server_r.read(4096):
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    client_w.write(chunk)
                    await client_w.drain()
                client_w.close()

            with contextlib.suppress(ConnectionError, OSError):
                await asyncio.gather(upstream(), downstream())

        return handle
