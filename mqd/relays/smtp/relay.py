"""Default plugin: relay through an SMTP submission account with aiosmtplib.

Implicit TLS (``security = "tls"``, port 465) or required STARTTLS (``"starttls"``, port 587),
certificates verified against the system store (or ``tls_ca_file``); ``"none"`` is plain SMTP
and must be chosen explicitly, and then refuses credentials so that no password ever crosses a
plaintext connection. Instead of a password, an ``[relays.<name>.oauth2]`` table logs in with
XOAUTH2 (Microsoft 365, Gmail) with a token from ``mqd.relays.smtp.oauth2``.

The parts: ``settings`` (the table), ``pool`` (connections, TLS, login), ``transaction`` (MAIL,
RCPT, DATA, stepwise or pipelined), ``wire`` (addresses as the commands carry them),
``translate`` (aiosmtplib's exceptions as relay errors, in one place). This module is the relay
and the plugin that registers it.

A recipient whose address cannot be written on the wire gets a permanent 553 5.1.3 of its own
and the others are sent; with no recipient left, nothing connects. A sender that cannot be
written fails the message (553 5.1.7).
"""

from __future__ import annotations

from typing import Self

from mqd.config.options import Options
from mqd.message.envelope import Envelope
from mqd.plugins.hookspecs import RegisterRelay, hookimpl
from mqd.relays.base import DeliveryResult, Relay
from mqd.relays.smtp.oauth2.build import make_token_source
from mqd.relays.smtp.oauth2.source import TokenSource
from mqd.relays.smtp.pool import Connection, ConnectionPool
from mqd.relays.smtp.settings import SMTPSettings, read_settings
from mqd.relays.smtp.transaction import StaleConnection, run_transaction
from mqd.relays.smtp.translate import translate
from mqd.relays.smtp.wire import Addresses, screen

__all__ = ["SMTPRelay", "mqd_register_relays"]


class SMTPRelay(Relay):
    network = True

    def __init__(
        self, name: str, settings: SMTPSettings, *, tokens: TokenSource | None = None
    ) -> None:
        """``tokens`` replaces the token source built from ``settings.oauth2`` (for tests)."""
        super().__init__(name)
        self.settings = settings
        if tokens is None and settings.oauth2 is not None:
            tokens = make_token_source(settings.oauth2)
        self._tokens = tokens
        self._pool = ConnectionPool(name, settings, tokens)

    @classmethod
    def from_options(cls, name: str, options: Options) -> Self:
        return cls(name, read_settings(name, options))

    def describe(self) -> str:
        s = self.settings
        if self._tokens is not None:
            auth = f" oauth2 for {s.username} ({self._tokens.describe()})"
        else:
            auth = f" as {s.username}" if s.username else ""
        return f"smtp {s.host}:{s.port} {s.security}{auth}"

    async def deliver(self, envelope: Envelope) -> DeliveryResult:
        addresses = screen(envelope)  # PermanentRelayError for a sender it cannot write
        if not addresses.recipients:  # none can be written: each has its 553, nothing is sent
            return DeliveryResult(addresses.refused)
        # A plain loop, not a retry library: this runs once per message, and building a retry
        # object each time cost more than the rest of the method.
        for last_try in (False, True):
            try:
                return await self._deliver_once(envelope, addresses)
            except StaleConnection as exc:
                if last_try:  # twice in a row: report the underlying failure
                    raise translate(exc.__cause__ or exc, self.settings, self.name) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _deliver_once(self, envelope: Envelope, addresses: Addresses) -> DeliveryResult:
        conn, reused = await self._pool.acquire()
        reusable = False
        try:
            result = await self._transaction(conn, envelope, addresses, reused)
            reusable = True
            return result
        finally:
            self._pool.release(conn, reusable)

    async def _transaction(
        self, conn: Connection, envelope: Envelope, addresses: Addresses, reused: bool
    ) -> DeliveryResult:
        conn.messages += 1
        return await run_transaction(
            conn.client,
            conn.pipeline,
            envelope,
            addresses,
            reused=reused,
            settings=self.settings,
            relay=self.name,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


@hookimpl
def mqd_register_relays(register: RegisterRelay) -> None:
    register("smtp", SMTPRelay)
