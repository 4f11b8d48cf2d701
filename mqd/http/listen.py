"""How the daemon's HTTP servers listen (``[http]``, ``[metrics]``).

- ``listen_error``: one clear error for a server that cannot listen where its config table says
  (which key to change, and to what).
- ``ConnectionGate`` and ``GatedSite``: a listener that serves at most ``max_connections``
  connections at once and closes one that sends no request within ``header_timeout``, so that
  HTTP clients, idle or slow, never take the file descriptors the queue and the relays need.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

from aiohttp import web

from mqd.errors import ConfigError

__all__ = ["ConnectionGate", "GatedSite", "listen_error"]

#: Connections refused at the limit are reported at most this often (seconds).
WARN_EVERY = 60.0
#: How often, at most, connections are checked for their first request (seconds).
SWEEP_EVERY = 1.0


def listen_error(
    table: str,
    what: str,
    host: str,
    port: int,
    exc: OSError,
    *,
    source: Path | None,
    default_port: int,
    others: str,
) -> ConfigError:
    """``cannot serve <what> on host:port: ...`` naming ``[table] host`` or ``port``.

    ``others`` says who else may hold the port ("another mqd or another exporter")."""
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(
            f"cannot serve {what} on {where}: {host!r} is not an address of this machine "
            f"({exc.strerror or exc}); set [{table}] host to 127.0.0.1 (the default), to one "
            "of this machine's addresses, or to 0.0.0.0 for all of them",
            path=source,
            key=f"{table}.host",
        )
    if exc.errno == errno.EADDRINUSE:
        why = (
            f"the port is already in use ({others} listens there); set [{table}] port to a "
            "free port, or stop the program that holds it"
        )
    elif exc.errno == errno.EACCES:
        why = (
            f"permission denied (ports below 1024 need privileges); set [{table}] port to a "
            f"port above 1023, such as the default {default_port}"
        )
    else:
        why = f"{exc.strerror or exc}; set [{table}] port to a free port above 1023"
    return ConfigError(f"cannot serve {what} on {where}: {why}", path=source, key=f"{table}.port")


class ConnectionGate:
    """Which accepted connections one aiohttp server serves, and for how long they may wait.

    ``protocol()`` is the protocol factory a listener takes. An accepted connection is handed to
    the aiohttp server's own protocol, unless ``limit`` connections are open already: then it is
    closed at once, unread (its descriptor is free again in the next loop iteration), and a
    warning says so at most once every WARN_EVERY seconds. ``middleware`` notes a connection's
    first request; one that has sent none ``header_timeout`` seconds after it was accepted is
    closed. Between requests aiohttp's ``keepalive_timeout`` does the same: give the runner
    ``keepalive_timeout=header_timeout``.
    """

    def __init__(self, *, limit: int, header_timeout: float, table: str, log: logging.Logger):
        self.limit = limit
        self.header_timeout = header_timeout
        self._table = table
        self._log = log
        self._server: web.Server | None = None
        #: Served connections that have sent no request yet, with the loop time they came.
        self._waiting: dict[web.RequestHandler, float] = {}
        self._sweep: asyncio.TimerHandle | None = None
        #: Connections refused at the limit, in all, and since the last warning.
        self.refused = 0
        self._unreported = 0
        self._warned_at: float | None = None

    def serve(self, server: web.Server) -> None:
        """Hand admitted connections to ``server`` (a runner's, once it is set up)."""
        self._server = server

    def protocol(self) -> asyncio.BaseProtocol:
        return _Admission(self)

    def admit(self, transport: asyncio.Transport) -> None:
        """Serve a connection just accepted, or close it unread."""
        server = self._server
        # Exact: connections are admitted one at a time, each registering with the server in
        # its connection_made below; one whose answer is still being finished counts too.
        if server is None or len(server.connections) >= self.limit:
            transport.abort()
            self._refused()
            return
        handler = server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        loop = asyncio.get_running_loop()
        self._waiting[handler] = loop.time()
        if self._sweep is None:
            self._sweep = loop.call_later(self._sweep_every, self._close_idle)

    @property
    def _sweep_every(self) -> float:
        return min(SWEEP_EVERY, self.header_timeout / 4)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Put first in the application's middlewares: its request came in time."""
        self._waiting.pop(request.protocol, None)
        return await handler(request)

    def close(self) -> None:
        """Stop checking (the server is stopping)."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._waiting.clear()

    def _close_idle(self) -> None:
        self._sweep = None
        server = self._server
        if server is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        served = set(server.connections)
        late = 0
        for handler, since in list(self._waiting.items()):
            if handler not in served:
                del self._waiting[handler]
            elif now - since >= self.header_timeout:
                del self._waiting[handler]
                handler.force_close()
                late += 1
        if late:
            self._log.debug(
                "closed %d connection(s) that sent no request in %gs ([%s] header_timeout)",
                late,
                self.header_timeout,
                self._table,
            )
        if self._waiting:
            self._sweep = loop.call_later(self._sweep_every, self._close_idle)

    def _refused(self) -> None:
        self.refused += 1
        self._unreported += 1
        now = asyncio.get_running_loop().time()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY:
            return
        self._log.warning(
            "refused %d connection(s): %d are open, the most [%s] max_connections allows; "
            "each was closed unread (connections that send no request are closed after "
            "[%s] header_timeout, %gs)",
            self._unreported,
            self.limit,
            self._table,
            self._table,
            self.header_timeout,
        )
        self._unreported = 0
        self._warned_at = now


class _Admission(asyncio.Protocol):
    """One accepted connection until ``connection_made`` lets the gate decide about it.

    aiohttp makes its protocol in ``web.Server.__call__``, with no say in its class: the gate
    decides on this stand-in, which hands an admitted transport over (``set_protocol``)."""

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._gate.admit(cast(asyncio.Transport, transport))


class GatedSite(web.BaseSite):
    """aiohttp's TCP site with every accepted connection passed through ``gate``."""

    __slots__ = ("_gate", "_host", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        gate: ConnectionGate,
        *,
        reuse_port: bool = False,
    ) -> None:
        """``reuse_port``: SO_REUSEPORT, for the workers of ``queue.workers`` that all listen."""
        super().__init__(runner)
        self._host = host
        self._port = port
        self._gate = gate
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._gate.serve(server)
        self._server = await asyncio.get_running_loop().create_server(
            self._gate.protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
            reuse_port=self._reuse_port or None,
        )

    async def stop(self) -> None:
        self._gate.close()
        await super().stop()
