"""One SMTP connection: aiosmtpd's protocol with mqd's limits, and the handler that checks the
sender at MAIL FROM and answers 250 to DATA only once the message is durable.

aiosmtpd's own fixed replies that lack an enhanced status code (the size and line-length
refusals) are translated at one seam, ``Connection.push``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Protocol

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from mqd.config.schema import SourceConfig
from mqd.errors import SubmissionError
from mqd.intake.smtpd.data import DataState, read_data
from mqd.intake.smtpd.settings import Listen, SMTPSettings
from mqd.intake.smtpd.users import Verifier
from mqd.intake.source import HandOver, Login, Submission
from mqd.message.envelope import address_problem, date_now
from mqd.version import __version__

__all__ = ["Connection", "Handler", "Listener", "bare_line_ending", "with_crlf"]

log = logging.getLogger("mqd.smtpd")

#: A CR not followed by LF, or an LF not preceded by CR: a line ending other than CRLF, the
#: material of SMTP smuggling (``\n.\n``, ``\r\n.\r``, ``\n.\r\n`` ...).
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
#: A MAIL FROM or RCPT TO argument of the everyday form, ``<local@domain.example> PARAMS``:
#: a dot-atom local part and domain, no comments, quotes or escapes. Its address is the text
#: between the brackets, as aiosmtpd's own (slower, general) parsing finds it.
_PLAIN_PATH = re.compile(
    r"[ \t]*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*([^()\"\\]*)"
)


class Listener(Protocol):
    """What a connection sees of its listening address (``mqd.intake.smtpd.source``)."""

    address: Listen
    settings: SMTPSettings
    config: SourceConfig
    handover: HandOver
    #: Checks the passwords of logins (one per source: it remembers those that matched).
    verifier: Verifier
    #: DATA hand-overs under way, and set after each one ends.
    handing_over: int
    handed_over: asyncio.Event

    def admit(self, connection: Connection) -> bool:
        """Count a new connection in; False when there are too many."""
        ...

    def release(self, connection: Connection) -> None: ...
    def accepted(self) -> None: ...
    def refused(self) -> None: ...


def bare_line_ending(data: bytes) -> bool:
    """Whether ``data`` holds a CR or LF that is not part of a CRLF."""
    # Three counts in C rather than a regular expression's look-arounds at every byte.
    pairs = data.count(b"\r\n")
    return data.count(b"\n") != pairs or data.count(b"\r") != pairs


def with_crlf(data: bytes) -> bytes:
    """``data`` with each bare CR or LF made a CRLF: ``\n.\n`` becomes a line holding a dot,
    which the relay dot-stuffs like any other, never the end of the data."""
    return _BARE.sub(b"\r\n", data)


class Connection(SMTP):
    """aiosmtpd's SMTP protocol for one client of ``listener``: counted against its
    ``max_connections`` (one more gets 421 and is closed), lines limited to
    ``max_line_length``."""

    def __init__(self, listener: Listener, **kwargs: Any) -> None:
        settings = listener.settings
        # RFC 5321's 998 octets, CRLF, and a leading dot the client may have doubled.
        self.line_length_limit = settings.max_line_length + 3
        super().__init__(Handler(listener), **kwargs)
        self.listener = listener
        self._counted = False
        self._turned_away = False

    def __dir__(self) -> list[str]:
        # aiosmtpd's __init__ finds its commands and AUTH mechanisms by ``dir(self)`` and
        # ``inspect.getmembers(self)``, getattr on every attribute, for each connection: a
        # fifth of the CPU of a one-message connection. It looks only for these names.
        return _commands(type(self))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd parses each path with the email package's header parser (and defines a
        # class at each call): the everyday form is read here, anything else there.
        plain = _PLAIN_PATH.fullmatch(arg)
        if plain is None:
            return super()._getaddr(arg)
        address = plain.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, plain.group(2)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd makes a timer and cancels the last at every command; here the deadline
        # moves, and the timer, when it fires before it, is set again for what is left.
        self._idle_deadline = self.loop.time() + (duration or self._timeout_duration)
        timer = self._timeout_handle
        if timer is None or timer.cancelled() or timer.when() > self._idle_deadline:
            if timer is not None:
                timer.cancel()
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)

    def _idle_check(self) -> None:
        if self.loop.time() < self._idle_deadline:
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)
        else:
            self._timeout_cb()  # type: ignore[no-untyped-call]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._counted:  # (called again for the TLS transport after STARTTLS)
            if not self.listener.admit(self):
                self._turned_away = True
                log.warning(
                    "smtpd %s: more than max_connections = %d clients: one turned away",
                    self.listener.address,
                    self.listener.settings.max_connections,
                )
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
                transport.close()
                return
            self._counted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._turned_away:
            return
        if self._counted:
            self._counted = False
            self.listener.release(self)
        super().connection_lost(error)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the text read in chunks (``mqd.intake.smtpd.data``) rather
        than a line at a time; the same checks, answers and hand-over to ``handle_DATA``."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            state, content = await read_data(
                self._reader, self.data_size_limit, self.line_length_limit
            )
        except asyncio.CancelledError:  # the connection lost during DATA, as aiosmtpd does
            self._writer.close()
            raise
        if state is not DataState.NOMINAL:
            # Translated by push, as aiosmtpd's own.
            await self.push(
                "500 Line too long (see RFC5321 4.5.3.1.6)"
                if state is DataState.TOO_LONG
                else "552 Error: Too much mail data"
            )
            self.envelope = self._create_envelope()  # (aiosmtpd's _set_post_data_state)
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()
        await self.push("250 OK" if status is MISSING else status)

    async def push(self, status: Any) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else str(status)
        limit = self.listener.settings.max_message_size
        if text.startswith("552 Error"):  # SIZE too big at MAIL, or too much data
            self.listener.refused()
            text = f"552 5.3.4 Message too big: at most {limit} bytes are taken"
        elif text.startswith("530 Must issue a STARTTLS"):
            text = "530 5.7.0 Must issue a STARTTLS command first"
        elif text.startswith("500 Line too long"):
            self.listener.refused()
            text = (
                f"500 5.5.2 Line too long: at most {self.listener.settings.max_line_length} "
                "octets a line (RFC 5321)"
            )
        await super().push(text)


_COMMANDS: dict[type, list[str]] = {}


def _commands(cls: type) -> list[str]:
    """The names aiosmtpd looks for in ``cls``: SMTP commands, AUTH mechanisms, handler
    hooks (``smtp_*``, ``auth_*``, ``handle_*``)."""
    names = _COMMANDS.get(cls)
    if names is None:
        names = [n for n in dir(cls) if n.startswith(("smtp_", "auth_", "handle_"))]
        _COMMANDS[cls] = names
    return names


class Handler:
    """aiosmtpd's handler hooks for ``listener``."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def __dir__(self) -> list[str]:
        # As Connection's: aiosmtpd looks for its hooks by reflection at each connection.
        return _commands(type(self))

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads each command in turn after the last: it takes pipelined commands.
        responses.insert(-1, "250-PIPELINING")
        # Not ENHANCEDSTATUSCODES: mqd's own answers carry one, some of aiosmtpd's do not.
        # One reply of many lines, written at once: aiosmtpd writes each line it is given
        # apart (a send each: seven for an EHLO).
        return ["\r\n".join(responses)]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        refusal = self.listener.handover.check_sender(
            self.listener.config, address, _login(session)
        )
        if refusal:
            self.listener.refused()
            log.info(
                "smtpd %s: MAIL FROM:<%s> refused: %s", self.listener.address, address, refusal
            )
            return f"550 5.7.1 {_one_line(refusal)}"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        limit = self.listener.settings.max_recipients
        if len(envelope.rcpt_tos) >= limit:
            return f"452 4.5.3 Too many recipients: at most {limit} a message"
        problem = address_problem(address)
        if problem:
            return f"553 5.1.3 The recipient <{_one_line(address)}> is not usable: {problem}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        listener = self.listener
        data = envelope.original_content or b""
        if bare_line_ending(data):
            if listener.settings.bare_line_endings == "refuse":
                listener.refused()
                return (
                    "554 5.6.0 Message refused: it holds a bare CR or LF; every line must end "
                    "with CRLF"
                )
            data = with_crlf(data)
        login = _login(session)
        submission = Submission(
            sender=envelope.mail_from or "",
            recipients=tuple(envelope.rcpt_tos),
            data=data,
            login=login,
            peer=_peer(session),
            trace=_received(server, session, listener.settings.hostname, login),
        )
        listener.handing_over += 1
        try:
            queue_id = await listener.handover.submit(listener.config, submission)
        except SubmissionError as exc:
            listener.refused()
            log.info("smtpd %s: message refused (%s): %s", listener.address, exc.stage, exc)
            if exc.stage == "limit":  # an account over its limits: later
                return f"451 4.7.0 {_one_line(exc.reason)}"
            if not exc.permanent:
                return f"451 4.3.0 {_one_line(exc.reason)}"
            if exc.stage == "policy":
                return f"550 5.7.1 {_one_line(exc.reason)}"
            return f"554 5.6.0 {_one_line(exc.reason)}"
        finally:
            listener.handing_over -= 1
            listener.handed_over.set()
        listener.accepted()
        return f"250 2.0.0 OK queued as {queue_id}"


def authenticator(listener: Listener) -> Any:
    """aiosmtpd's ``authenticator``: PLAIN and LOGIN against the users file."""

    def check(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            name = auth_data.login.decode("utf-8", "replace")
            user = listener.settings.users.get(name)
            password = auth_data.password.decode("utf-8", "replace")
            if user is not None and listener.verifier.verify(password, user.hash):
                log.info("smtpd %s: %s logged in from %s", listener.address, name, _peer(session))
                return AuthResult(success=True, auth_data=user.login)
            log.warning(
                "smtpd %s: a login as %r failed from %s", listener.address, name, _peer(session)
            )
        return AuthResult(success=False, handled=False)

    return check


def _received(server: SMTP, session: Session, hostname: str, login: Login | None) -> bytes:
    """The ``Received:`` field this hop adds (RFC 5321 section 4.4; RFC 3848's ESMTPSA ...)."""
    peer: Any = session.peer
    address = peer[0] if isinstance(peer, tuple) and peer else "unknown"
    helo = _one_line(session.host_name or "unknown").replace("(", "").replace(")", "")
    protocol = "ESMTP" if session.extended_smtp else "SMTP"
    transport = server.transport
    if session.ssl is not None or (  # STARTTLS, or implicit TLS
        transport is not None and transport.get_extra_info("ssl_object") is not None
    ):
        protocol += "S"
    if login is not None:
        protocol += "A"
    return (
        f"Received: from {helo} ([{address}])\r\n\tby {hostname} (mqd) with {protocol};"
        f"\r\n\t{date_now()}\r\n"
    ).encode("utf-8", "replace")


def _login(session: Session) -> Login | None:
    data = session.auth_data
    return data if session.authenticated and isinstance(data, Login) else None


def _peer(session: Session) -> str | None:
    peer: Any = session.peer  # typed str by aiosmtpd, a (host, port) tuple in fact
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer) if peer else None


def _one_line(text: str) -> str:
    return " ".join(text.split())


IDENT = f"mqd {__version__} ESMTP"
