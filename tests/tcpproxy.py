"""A TCP proxy in front of the shared PostgreSQL that a test cuts and restores: the database
"goes away" for the client behind it (its connections are ended, new ones are closed at once,
as by a server that is restarting) while every other client of the server carries on.

It runs in a thread of its own, so that a client blocking on it (psycopg's synchronous calls
on the tracker's writer thread) never waits on the test's event loop.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards 127.0.0.1:``port`` (a free one) to ``target``; ``cut`` and ``restore``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._up = True
        self._stop = False
        #: Connections refused while cut (a test waits for one: the client did try).
        self.refused = 0
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()

    def dsn(self, dsn: str) -> str:
        """``dsn`` (a URL) with its host and port replaced by the proxy's."""
        parts = urlsplit(dsn)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def cut(self) -> None:
        """End every connection through it; refuse (accept, then close) new ones."""
        with self._lock:
            self._up = False
            for sock in list(self._peers):
                self._drop(sock)

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        with self._lock:
            self._stop = True
        self._thread.join(10)
        for sock in list(self._peers):
            self._drop(sock)
        self._selector.close()
        self._listener.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stop:
                    return
            for key, _ in self._selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with self._lock:
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._peers:
                        self._forward(sock)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        if not self._up:
            self.refused += 1
            client.close()
            return
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, server):
            sock.setblocking(True)
            self._selector.register(sock, selectors.EVENT_READ)
        self._peers[client] = server
        self._peers[server] = client

    def _forward(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        with contextlib.suppress(OSError):
            self._peers[sock].sendall(data)

    def _drop(self, sock: socket.socket) -> None:
        other = self._peers.pop(sock, None)
        for each in (sock, other):
            if each is None:
                continue
            self._peers.pop(each, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(each)
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            each.close()
