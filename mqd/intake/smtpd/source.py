"""SMTP submission (``[[smtpd]]``): aiosmtpd listeners handing messages over to the queue.

A loopback address (``127.0.0.1:25``, what an application's mail library expects of a null
client) takes mail without AUTH; any other address requires AUTH (the ``users_file`` logins)
over STARTTLS or implicit TLS. The sender is checked at MAIL FROM (550 5.7.1), the message at
the end of DATA (its From header too); 250 is answered only once the message is durable in the
queue, 451 when the queue cannot take it now. PIPELINING, 8BITMIME, SMTPUTF8 and SIZE are
offered; a bare CR or LF is made a CRLF, or the message refused (``bare_line_endings``): no
SMTP smuggling through mqd.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import warnings

from mqd.config.schema import Config, SourceConfig
from mqd.errors import ConfigError
from mqd.intake.smtpd.session import IDENT, Connection, authenticator
from mqd.intake.smtpd.settings import Listen, SMTPSettings
from mqd.intake.smtpd.template import Template
from mqd.intake.smtpd.users import Verifier
from mqd.intake.source import HandOver, Source, SourceStatus

__all__ = ["SMTPListener", "SMTPSource"]

log = logging.getLogger("mqd.smtpd")
#: aiosmtpd's logger: every command at INFO (mqd logs what matters itself, once per message).
AIOSMTPD_LOG = "mail.log"


class _ImplicitTLSNotice(logging.Filter):
    """Drops aiosmtpd's warning about AUTH without ``auth_require_tls``, given for every
    connection of an implicit TLS listener (encrypted from the first byte: its issue #281)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("auth_required == True but auth_require_tls")


def _quiet_aiosmtpd() -> None:
    logger = logging.getLogger(AIOSMTPD_LOG)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
    if not any(isinstance(f, _ImplicitTLSNotice) for f in logger.filters):
        logger.addFilter(_ImplicitTLSNotice())


#: AUTH commands a connection may give.
AUTH_ATTEMPTS = 5
#: How long ``stop`` waits for the hand-overs under way to be answered.
STOP_TIMEOUT = 10.0


class SMTPListener:
    """One listening address of an SMTP source, and its connections."""

    def __init__(self, source: SMTPSource, address: Listen) -> None:
        self.source = source
        self.address = address
        self.settings = source.settings
        self.config = source.config
        self.handover = source.handover
        self.verifier = source.verifier
        self.server: asyncio.Server | None = None
        self.connections: set[Connection] = set()
        #: DATA hand-overs under way, and set after each one ends (``stop`` waits on them).
        self.handing_over = 0
        self.handed_over = asyncio.Event()
        #: How its connections are set up, for the settings they are made with.
        self._template: Template | None = None

    def retarget(self, source: SMTPSource) -> None:
        """Serve the connections made from now on for ``source`` (a reload's)."""
        self.source = source
        self.settings = source.settings
        self.config = source.config
        self.handover = source.handover
        self.verifier = source.verifier

    def admit(self, connection: Connection) -> bool:
        if self.source.connections >= self.settings.max_connections:
            return False
        self.connections.add(connection)
        return True

    def release(self, connection: Connection) -> None:
        self.connections.discard(connection)

    def accepted(self) -> None:
        self.source.accepted += 1

    def refused(self) -> None:
        self.source.refused += 1

    def _connection(self) -> Connection:
        template = self._template
        if template is None or template.settings is not self.settings:  # (or reloaded)
            template = self._template = Template(self.settings, self._new_connection())
        return template.connection()

    def _new_connection(self) -> Connection:
        """A connection set up by aiosmtpd's __init__."""
        settings = self.settings
        loopback = self.address.loopback
        implicit = settings.tls == "implicit"
        if not implicit:  # (catching warnings at each connection costs: only where one comes)
            return self._make_connection(settings, loopback, implicit)
        with warnings.catch_warnings():
            # The same notice as a warning (see _ImplicitTLSNotice).
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            return self._make_connection(settings, loopback, implicit)

    def _make_connection(
        self, settings: SMTPSettings, loopback: bool, implicit: bool
    ) -> Connection:
        return Connection(
            self,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            hostname=settings.hostname,
            ident=IDENT,
            tls_context=settings.tls_context if settings.tls == "starttls" else None,
            require_starttls=settings.tls == "starttls" and not loopback,
            timeout=settings.idle_timeout,
            auth_required=not loopback,
            # With implicit TLS the connection is encrypted from the start, and on loopback no
            # credential crosses a network; aiosmtpd cannot tell the first (its issue #281).
            # Without logins AUTH is not offered at all.
            auth_require_tls=not ((implicit or loopback) and settings.users),
            authenticator=authenticator(self) if settings.users else None,
            # Five AUTH attempts a connection (then 421 and closed): no password guessing at
            # the pace of one connection's commands. Other commands are not limited.
            command_call_limit={"AUTH": AUTH_ATTEMPTS, "*": 2**62},
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        """Listen; ConfigError naming the ``listen`` key when the address cannot be had."""
        loop = asyncio.get_running_loop()
        ssl = self.settings.tls_context if self.settings.tls == "implicit" else None
        try:
            self.server = await loop.create_server(
                self._connection,
                self.address.host,
                self.address.port,
                ssl=ssl,
                # queue.workers: every worker listens on the address; the kernel spreads the
                # connections over them.
                reuse_port=self.source.app.queue.workers > 1 or None,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.address}: {_why(exc, self.address.port)}",
                path=self.source.app.source,
                key=f"{self.config.name}.listen",
            ) from exc

    @property
    def bound(self) -> list[str]:
        """The addresses it listens on (port 0 resolved)."""
        if self.server is None:
            return []
        bound = []
        for sock in self.server.sockets:
            host, port = sock.getsockname()[:2]
            bound.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return bound

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            self.server.close()
        # A message being handed over is answered before its connection closes.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.handing_over and loop.time() < deadline:
            self.handed_over.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.handed_over.wait(), deadline - loop.time())
        for connection in list(self.connections):
            transport = connection.transport
            if transport is not None and not transport.is_closing():
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(b"421 4.3.2 Service shutting down, try again later\r\n")
                transport.close()
        if self.server is not None:
            await self.server.wait_closed()
            self.server = None


def _why(exc: OSError, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the port is in use (another mail server, such as Postfix, listening there?)"
    if exc.errno == errno.EACCES and port < 1024:
        return (
            "permission denied: a port below 1024 needs root or CAP_NET_BIND_SERVICE "
            "(AmbientCapabilities= in the systemd unit), or listen on e.g. 2525"
        )
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return f"not an address of this machine ({exc.strerror or exc})"
    return exc.strerror or str(exc)


class SMTPSource(Source):
    """An ``[[smtpd]]`` table: one listener per ``listen`` address."""

    def __init__(self, config: SourceConfig, app: Config, handover: HandOver) -> None:
        super().__init__(config, app, handover)
        self.settings = SMTPSettings.read(config, app)
        self.verifier = Verifier()
        _quiet_aiosmtpd()
        self.listeners = [SMTPListener(self, address) for address in self.settings.listen]

    @property
    def connections(self) -> int:
        return sum(len(listener.connections) for listener in self.listeners)

    async def start(self) -> None:
        try:
            for listener in self.listeners:
                await listener.start()
        except ConfigError:
            await self.stop()
            raise
        for listener in self.listeners:
            for address in listener.bound:
                log.info(
                    "smtpd %s listening on %s (%s)",
                    self.config.name,
                    address,
                    "no AUTH: loopback" if listener.address.loopback else "AUTH required",
                )

    def take_over(self, old: Source) -> bool:
        """Keep ``old``'s listeners when the addresses are the same: from now on every
        connection is served with the new settings (logins, limits, policy)."""
        if not isinstance(old, SMTPSource) or old.settings.listen != self.settings.listen:
            return False
        if "implicit" in (old.settings.tls, self.settings.tls):
            return False  # a listening socket of implicit TLS holds its certificate
        self.listeners = old.listeners
        for listener in self.listeners:
            listener.retarget(self)
        self.accepted, self.refused = old.accepted, old.refused
        return True

    async def stop(self) -> None:
        await asyncio.gather(*(listener.stop(STOP_TIMEOUT) for listener in self.listeners))

    def status(self) -> SourceStatus:
        return SourceStatus(
            name=self.config.name,
            kind=self.config.kind,
            listening=tuple(a for listener in self.listeners for a in listener.bound),
            connections=self.connections,
            accepted=self.accepted,
            refused=self.refused,
        )
