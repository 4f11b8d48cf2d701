"""Test-server variants that ``smtpserver.SMTPPeer`` has no knob for.

``VariantPeer`` adds, on top of ``SMTPPeer``:

* ``size_limit``: advertise ``SIZE <n>`` in the EHLO reply (and enforce it, as aiosmtpd does);
* ``auth_over_plaintext``: offer AUTH on a connection without TLS (so that a client that would
  log in over clear text could, and the test can see it happened in ``auth_attempts``);
* ``auth_attempts``: every AUTH the server received, as (user, password) pairs;
* ``open_now`` / ``max_open``: sessions open right now and the most ever open at once;
* ``drop_all()``: abort every open session from the server side (a peer that went away).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from smtpserver import SMTPPeer

__all__ = ["VariantPeer"]


class VariantPeer(SMTPPeer):
    def __init__(
        self,
        *,
        size_limit: int | None = None,
        auth_over_plaintext: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.size_limit = size_limit
        self.auth_over_plaintext = auth_over_plaintext
        self.auth_attempts: list[tuple[str, str]] = []
        self.max_open = 0
        self._open: set[SMTP] = set()
        self._lock = threading.Lock()

    @property
    def open_now(self) -> int:
        with self._lock:
            return len(self._open)

    def _protocol(self) -> SMTP:
        protocol = super()._protocol()
        if self.size_limit is not None:
            protocol.data_size_limit = self.size_limit
        if self.auth_over_plaintext:
            protocol._auth_require_tls = False
        made, lost = protocol.connection_made, protocol.connection_lost

        def connection_made(transport: asyncio.BaseTransport) -> None:
            with self._lock:
                self._open.add(protocol)
                self.max_open = max(self.max_open, len(self._open))
            made(transport)

        def connection_lost(error: Exception | None) -> None:
            with self._lock:
                self._open.discard(protocol)
            lost(error)

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        return protocol

    def _authenticate(self, server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        if isinstance(auth_data, LoginPassword):
            self.auth_attempts.append((auth_data.login.decode(), auth_data.password.decode()))
        if self.users is None:
            return AuthResult(success=False, handled=False)
        return super()._authenticate(server, session, envelope, mechanism, auth_data)

    def drop_all(self, timeout: float = 10.0) -> None:
        """Abort every open session from the server's side and wait until they are gone."""
        assert self._loop is not None
        done = threading.Event()

        def abort() -> None:
            with self._lock:
                protocols = list(self._open)
            for protocol in protocols:
                if protocol.transport is not None:
                    protocol.transport.abort()
            done.set()

        self._loop.call_soon_threadsafe(abort)
        if not done.wait(timeout):
            raise RuntimeError("the SMTP test server did not drop its connections")
