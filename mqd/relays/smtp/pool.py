"""The SMTP relay's connections: opened (TLS, EHLO, login), lent out, pooled, reaped, closed.

Up to ``max_connections`` are lent at once (``acquire`` waits for a free slot); each is reused
for up to ``messages_per_connection`` messages and closed after ``idle_timeout`` unused. A login
with XOAUTH2 fetches its token before connecting (so that a slow token endpoint does not keep an
idle session open); a token the server refuses is replaced once, on a new connection. Every
failure to connect is raised as a relay error (``translate``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field

import aiosmtplib

from mqd.errors import TransientRelayError
from mqd.message.reply import Reply
from mqd.relays.smtp.oauth2.source import TokenError, TokenSource
from mqd.relays.smtp.pipelining import PipeliningProtocol, enable_pipelining
from mqd.relays.smtp.settings import SMTPSettings
from mqd.relays.smtp.translate import translate

__all__ = ["Connection", "ConnectionPool"]

log = logging.getLogger("mqd.relay.smtp")


@dataclass
class Connection:
    client: aiosmtplib.SMTP
    #: Set when the server offers PIPELINING (and ``pipelining`` is on): MAIL, RCPT and DATA go
    #: in one write.
    pipeline: PipeliningProtocol | None = None
    #: Messages sent (or tried) on it, against ``messages_per_connection``.
    messages: int = 0
    last_used: float = field(default_factory=time.monotonic)


class ConnectionPool:
    """The connections of the relay ``name``, to the server ``settings`` name."""

    def __init__(self, name: str, settings: SMTPSettings, tokens: TokenSource | None) -> None:
        self.name = name
        self.settings = settings
        self._tokens = tokens
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._idle: list[Connection] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.TimerHandle | None = None
        self._tls_context = _tls_context(settings) if settings.security != "none" else None

    async def acquire(self) -> tuple[Connection, bool]:
        """A connection, and whether it was reused from the pool; every ``acquire`` is paired
        with one ``release``. Waits while ``max_connections`` are lent; raises a RelayError
        when no new connection can be opened."""
        await self._slots.acquire()
        try:
            now = time.monotonic()
            while self._idle:
                conn = self._idle.pop()
                if conn.client.is_connected and now - conn.last_used < self.settings.idle_timeout:
                    return conn, True
                self._close(conn)
            return await self._connect(), False
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: Connection, reusable: bool) -> None:
        """Give ``conn`` back: pooled when ``reusable`` (its transaction ended cleanly) and
        still good for more messages, else closed."""
        try:
            limit_reached = conn.messages >= self.settings.messages_per_connection
            if reusable and conn.client.is_connected and not limit_reached:
                conn.last_used = time.monotonic()
                self._idle.append(conn)
                self._schedule_reaper()
            else:
                self._close(conn)
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        """Close every idle connection (QUIT, waiting up to 5 s) and stop a token renewal."""
        if self._tokens is not None:
            await self._tokens.aclose()
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        idle, self._idle = self._idle, []
        for conn in idle:
            self._close(conn)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=5.0)

    # -- opening ----------------------------------------------------------------------------------

    async def _connect(self) -> Connection:
        """A new session, logged in. A refused OAuth2 token is replaced once, on a new one."""
        s = self.settings
        for last_try in (False, True):
            token = await self._oauth2_token()
            client = aiosmtplib.SMTP(
                hostname=s.host,
                port=s.port,
                use_tls=s.security == "tls",
                start_tls=s.security == "starttls",
                tls_context=self._tls_context,
                username=s.username if token is None else None,  # XOAUTH2 is done below
                password=s.password.reveal() if s.password else None,
                local_hostname=s.helo_name,
                timeout=s.connect_timeout,
            )
            try:
                await client.connect()
                # Without STARTTLS or AUTH aiosmtplib has not said EHLO yet; the extensions it
                # returns (SIZE, 8BITMIME, SMTPUTF8) decide the MAIL options, so ask now.
                if client.is_ehlo_or_helo_needed:
                    try:
                        await client.ehlo()
                    except aiosmtplib.SMTPHeloError:
                        await client.helo()
                if token is not None:
                    await self._xoauth2(client, token)
            except BaseException as exc:
                if client.is_connected:
                    client.close()
                refused = isinstance(exc, aiosmtplib.SMTPAuthenticationError)
                if refused and token is not None and self._tokens and not last_try:
                    self._tokens.invalidate(token)
                    log.info(
                        "relay %s: %s:%s refused the XOAUTH2 token for %s (%s); trying once "
                        "more with a new token",
                        self.name,
                        s.host,
                        s.port,
                        s.username,
                        exc,
                    )
                    continue
                if isinstance(exc, Exception):  # not a cancellation
                    raise translate(exc, s, self.name) from exc
                raise
            client.timeout = s.command_timeout
            return Connection(client, enable_pipelining(client) if s.pipelining else None)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _oauth2_token(self) -> str | None:
        """The access token to log in with, or None without oauth2."""
        if self._tokens is None:
            return None
        try:
            return await self._tokens.token()
        except TokenError as exc:
            raise translate(exc, self.settings, self.name) from exc

    async def _xoauth2(self, client: aiosmtplib.SMTP, token: str) -> None:
        s = self.settings
        if "xoauth2" not in client.server_auth_methods:
            offered = " ".join(client.server_auth_methods).upper() or "no AUTH at all"
            message = (
                f"relay {self.name}: {s.host}:{s.port} does not offer AUTH XOAUTH2 (it offers "
                f"{offered}): check host and port (Microsoft 365: smtp.office365.com:587, Gmail: "
                "smtp.gmail.com:465 or 587); mail is kept and retried"
            )
            raise TransientRelayError(message, reply=Reply(454, message, "4.7.0"))
        await client.auth_xoauth2(s.username or "", token, timeout=s.connect_timeout)

    # -- closing ----------------------------------------------------------------------------------

    def _schedule_reaper(self) -> None:
        if self._reaper is None:
            loop = asyncio.get_running_loop()
            self._reaper = loop.call_later(self.settings.idle_timeout, self._reap)

    def _reap(self) -> None:
        self._reaper = None
        now = time.monotonic()
        keep = []
        for conn in self._idle:
            if now - conn.last_used >= self.settings.idle_timeout:
                self._close(conn)
            else:
                keep.append(conn)
        self._idle = keep
        if keep:
            self._schedule_reaper()

    def _close(self, conn: Connection) -> None:
        """QUIT politely in the background; a connection already gone is just dropped."""
        if not conn.client.is_connected:
            return
        task = asyncio.get_running_loop().create_task(self._quit(conn.client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.quit(timeout=min(5.0, self.settings.command_timeout))
        except (aiosmtplib.SMTPException, OSError):
            client.close()


def _tls_context(s: SMTPSettings) -> ssl.SSLContext:
    """The system's CAs (or ``tls_ca_file``'s), and no checks at all with ``tls_verify = false``."""
    context = ssl.create_default_context(cafile=s.tls_ca_file)
    if not s.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
