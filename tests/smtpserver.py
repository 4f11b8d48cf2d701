"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, port 0, in its own thread and loop.

It serves daemons running in the test process and in child processes alike. Failures are
injected per recipient by the local part (``temp-...`` -> 451, ``perm-...`` -> 550) or per
server through attributes (``mail_reply``, ``data_reply``, ``data_delay``, ``drop_in_data``).

It offers PIPELINING unless ``pipelining=False``.

``xoauth2=check`` adds the XOAUTH2 mechanism (and requires AUTH): ``check(user, token)`` says
whether a token is current. A refused token gets Gmail's answer (a 334 challenge carrying a JSON
error, then 535). ``auth_log`` records every XOAUTH2 attempt as (user, accepted).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    authenticated: bool
    tls: bool
    mail_options: list[str] = field(default_factory=list)


class _Handler:
    def __init__(self, peer: SMTPPeer) -> None:
        self.peer = peer

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.peer.pipelining:  # aiosmtpd reads commands in turn, so it can offer it
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.peer.commands.append(("MAIL", address))
        if self.peer.mail_reply:
            return self.peer.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.peer.commands.append(("RCPT", address))
        local = address.split("@", 1)[0]
        if address in self.peer.rcpt_replies:
            reply = self.peer.rcpt_replies[address]
            if reply.startswith("2"):
                envelope.rcpt_tos.append(address)
            return reply
        if local.startswith("temp-") and self.peer.temp_failures:
            return "451 4.2.0 mailbox temporarily unavailable"
        if local.startswith("perm-"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.peer.data_started += 1
        if self.peer.data_delay:
            await asyncio.sleep(self.peer.data_delay)
        if self.peer.drop_in_data:
            server.transport.abort()
            return "421 dropped"
        if self.peer.data_reply:
            return self.peer.data_reply
        self.peer._record(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content or envelope.content,
                bool(session.authenticated),
                session.ssl is not None or self.peer.implicit_tls,
                list(envelope.mail_options),
            )
        )
        return f"250 2.0.0 Ok: queued as {len(self.peer.messages)}"

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) == 2:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            answer = await server.challenge_auth("")
            if answer is MISSING:
                return AuthResult(success=False, handled=True)
            blob = answer
        # user=<user>^Aauth=Bearer <token>^A^A
        fields = dict(part.split("=", 1) for part in blob.decode().split("\x01") if "=" in part)
        user = fields.get("user", "")
        token = fields.get("auth", "").removeprefix("Bearer ")
        check = self.peer.xoauth2
        accepted = check is not None and bool(token) and check(user, token)
        self.peer.auth_log.append((user, accepted))
        if accepted:
            return AuthResult(success=True, auth_data=user)
        error = {"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"}
        await server.challenge_auth(json.dumps(error))
        return AuthResult(
            success=False,
            handled=False,
            message="535 5.7.8 Username and Password not accepted (test)",
        )


class SMTPPeer:
    """Start with ``start()``, stop with ``stop()``; ``port`` is set once started."""

    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        require_starttls: bool = False,
        users: dict[str, str] | None = None,
        hostname: str = "sink.test",
        xoauth2: Callable[[str, str], bool] | None = None,
        pipelining: bool = True,
    ) -> None:
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.require_starttls = require_starttls
        self.users = users
        self.hostname = hostname
        self.xoauth2 = xoauth2
        self.pipelining = pipelining
        #: Every XOAUTH2 attempt: (user, accepted).
        self.auth_log: list[tuple[str, bool]] = []
        self.port = 0
        self.messages: list[Received] = []
        #: Every MAIL and RCPT received, answered or refused: ("MAIL" or "RCPT", address).
        self.commands: list[tuple[str, str]] = []
        self.connections = 0
        self.data_started = 0
        self.rcpt_replies: dict[str, str] = {}
        self.mail_reply: str | None = None
        self.data_reply: str | None = None
        self.data_delay = 0.0
        self.drop_in_data = False
        #: While True, ``temp-`` recipients get 451; set False to let them through.
        self.temp_failures = True
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> SMTPPeer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("SMTP test server did not start")
        return self

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(
            loop.create_server(
                self._protocol,
                "127.0.0.1",
                0,
                ssl=self.tls_context if self.implicit_tls else None,
            )
        )
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()
        self._server.close()
        with contextlib.suppress(Exception):
            loop.run_until_complete(self._server.wait_closed())
        loop.close()

    def _protocol(self) -> SMTP:
        self.connections += 1
        kwargs: dict[str, Any] = {
            "hostname": self.hostname,
            "loop": self._loop,
            "enable_SMTPUTF8": True,
            "data_size_limit": None,
            "timeout": 60,
        }
        if self.tls_context is not None and not self.implicit_tls:
            kwargs["tls_context"] = self.tls_context
            kwargs["require_starttls"] = self.require_starttls
        if self.users is not None or self.xoauth2 is not None:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_required"] = True
            kwargs["auth_require_tls"] = not self.implicit_tls
        if self.xoauth2 is None:
            kwargs["auth_exclude_mechanism"] = ["XOAUTH2"]
        return SMTP(_Handler(self), **kwargs)

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword) or self.users is None:
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode()
        ok = self.users.get(user) == auth_data.password.decode()
        return AuthResult(success=ok, handled=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    # -- observations ---------------------------------------------------------------------------

    def _record(self, received: Received) -> None:
        with self._cond:
            self.messages.append(received)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Block until ``count`` messages arrived (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {count} messages at the SMTP server, got {len(self.messages)}"
                    )
                self._cond.wait(left)
            return list(self.messages)

    def recipients(self) -> list[str]:
        return [rcpt for message in self.messages for rcpt in message.rcpt_tos]
