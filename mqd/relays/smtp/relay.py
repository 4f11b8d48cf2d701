"""Default plugin: relay through an SMTP submission account with aiosmtplib.

Implicit TLS (``security = "tls"``, port 465) or required STARTTLS (``"starttls"``, port 587),
certificates verified against the system store (or ``tls_ca_file``); ``"none"`` is plain SMTP
and must be chosen explicitly, and then refuses credentials so that no password ever crosses a
plaintext connection. Instead of a password, an ``[relays.<name>.oauth2]`` table logs in with
XOAUTH2 (Microsoft 365, Gmail): a token from ``mqd.relays.smtp.oauth2``, fetched before
connecting; a token
the server refuses is replaced once, on a new connection. Connections are pooled: up to
``max_connections`` at once, each reused for up to ``messages_per_connection`` messages and
closed after ``idle_timeout`` unused.

aiosmtplib's exceptions are translated to ``TransientRelayError`` / ``PermanentRelayError`` in
``_translate`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Self

import aiosmtplib
from aiosmtplib.email import quote_address

from mqd.config.options import Options, Secret
from mqd.errors import PermanentRelayError, RelayError, TransientRelayError
from mqd.message.envelope import Envelope
from mqd.message.reply import Reply
from mqd.plugins.hookspecs import RegisterRelay, hookimpl
from mqd.relays.base import DeliveryResult, Relay
from mqd.relays.smtp.oauth2 import OAuth2Settings, TokenError, TokenSource, make_token_source
from mqd.relays.smtp.pipelining import PipeliningProtocol, enable_pipelining

__all__ = ["SMTPRelay", "SMTPSettings"]

log = logging.getLogger("mqd.relay.smtp")

SECURITY_MODES = ("tls", "starttls", "none")
#: local-part@domain as RFC 5322 dot-atoms, ASCII: aiosmtplib's quote_address() gives "<" + it +
#: ">" unchanged (tests/test_perf_smtp.py checks), so it is sent without reparsing.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_PLAIN_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*")
DEFAULT_PORTS = {"tls": 465, "starttls": 587, "none": 25}


@dataclass(frozen=True)
class SMTPSettings:
    host: str
    port: int
    security: str = "starttls"
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)
    tls_verify: bool = True
    tls_ca_file: str | None = None
    helo_name: str | None = None
    max_connections: int = 10
    messages_per_connection: int = 100
    connect_timeout: float = 30.0
    command_timeout: float = 60.0
    data_timeout: float = 600.0
    idle_timeout: float = 30.0
    #: Send MAIL, RCPT and DATA in one write when the server offers PIPELINING (RFC 2920).
    pipelining: bool = True
    #: XOAUTH2 instead of a password (``username`` is the mailbox).
    oauth2: OAuth2Settings | None = None


class _StaleConnection(Exception):
    """A reused connection turned out dead before anything was sent: retry on a fresh one."""


@dataclass
class _Connection:
    client: aiosmtplib.SMTP
    #: Set when the server offers PIPELINING (and ``pipelining`` is on): MAIL, RCPT and DATA go
    #: in one write.
    pipeline: PipeliningProtocol | None = None
    messages: int = 0
    last_used: float = field(default_factory=time.monotonic)


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
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._idle: list[_Connection] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.TimerHandle | None = None
        self._tls_context = self._make_tls_context() if settings.security != "none" else None

    @classmethod
    def from_options(cls, name: str, options: Options) -> Self:
        security = options.choice("security", SECURITY_MODES, "starttls")
        oauth2 = None
        if options.raw("oauth2") is not None:
            oauth2 = OAuth2Settings.from_options(options.table("oauth2"))
        settings = SMTPSettings(
            host=options.string("host"),
            port=options.integer("port", DEFAULT_PORTS[security], minimum=1),
            security=security,
            username=options.string("username", None),
            password=options.secret("password"),
            tls_verify=options.boolean("tls_verify", True),
            tls_ca_file=_optional_path(options, "tls_ca_file"),
            helo_name=options.string("helo_name", None),
            max_connections=options.integer("max_connections", 10, minimum=1),
            messages_per_connection=options.integer("messages_per_connection", 100, minimum=1),
            connect_timeout=options.duration("connect_timeout", "30s"),
            command_timeout=options.duration("command_timeout", "1m"),
            data_timeout=options.duration("data_timeout", "10m"),
            idle_timeout=options.duration("idle_timeout", "30s"),
            pipelining=options.boolean("pipelining", True),
            oauth2=oauth2,
        )
        if oauth2 is not None:
            _check_oauth2(options, settings)
        elif settings.username and settings.password is None:
            raise options.error(
                "password_file",
                f"username {settings.username!r} needs a password: set "
                "password_file (or password_env)",
            )
        if settings.password is not None and not settings.username:
            raise options.error("username", "a password is set but no username")
        if settings.security == "none" and settings.username:
            raise options.error(
                "security",
                '"none" sends in clear text, so mqd will not send credentials over it: use '
                '"starttls" or "tls", or remove username/password for an open local relay',
            )
        if settings.port > 65535:
            raise options.error("port", f"{settings.port} is not a TCP port")
        if settings.tls_ca_file:
            try:
                ssl.create_default_context(cafile=settings.tls_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise options.error("tls_ca_file", f"cannot load CA certificates: {exc}") from None
        if not settings.tls_verify:
            log.warning(
                "relay %s: tls_verify = false: the server's certificate is not checked", name
            )
        return cls(name, settings)

    def describe(self) -> str:
        s = self.settings
        if self._tokens is not None:
            auth = f" oauth2 for {s.username} ({self._tokens.describe()})"
        else:
            auth = f" as {s.username}" if s.username else ""
        return f"smtp {s.host}:{s.port} {s.security}{auth}"

    # -- delivery ---------------------------------------------------------------------------------

    async def deliver(self, envelope: Envelope) -> DeliveryResult:
        # A plain loop, not a retry library: this runs once per message, and building a retry
        # object each time cost more than the rest of the method.
        for last_try in (False, True):
            try:
                return await self._deliver_once(envelope)
            except _StaleConnection as exc:
                if last_try:  # twice in a row: report the underlying failure
                    raise _translate(exc.__cause__ or exc, self.settings, self.name) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _deliver_once(self, envelope: Envelope) -> DeliveryResult:
        async with self._slots:
            conn, reused = await self._acquire()
            reusable = False
            try:
                result = await self._transaction(conn, envelope, reused)
                reusable = True
                return result
            finally:
                self._release(conn, reusable)

    async def _transaction(
        self, conn: _Connection, envelope: Envelope, reused: bool
    ) -> DeliveryResult:
        conn.messages += 1
        try:
            if conn.pipeline is not None:
                return await self._pipelined(conn.client, conn.pipeline, envelope, reused)
            return await self._stepwise(conn.client, envelope, reused)
        except (_StaleConnection, RelayError):
            raise
        except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
            raise _translate(exc, self.settings, self.name) from exc

    async def _stepwise(
        self, client: aiosmtplib.SMTP, envelope: Envelope, reused: bool
    ) -> DeliveryResult:
        """One command, one reply: for a server that does not offer PIPELINING."""
        s = self.settings
        mail_options, encoding = self._mail_options(client, envelope)
        replies: dict[str, Reply] = {}
        try:
            await self._mail(client, envelope.sender, mail_options, encoding)
        except aiosmtplib.SMTPServerDisconnected as exc:
            if reused:
                raise _StaleConnection() from exc
            raise
        except aiosmtplib.SMTPSenderRefused as exc:
            await self._reset(client)
            return DeliveryResult.all(
                envelope.recipients, Reply.parse(exc.code, exc.message), remote=s.host
            )
        accepted = []
        for rcpt in envelope.recipients:
            try:
                await self._rcpt(client, rcpt, encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                replies[rcpt] = Reply.parse(exc.code, exc.message)
            else:
                accepted.append(rcpt)
        if not accepted:
            await self._reset(client)
            return DeliveryResult(replies, remote=s.host)
        try:
            response = await client.data(envelope.message, timeout=s.data_timeout)
            reply = Reply.parse(response.code, response.message)
        except aiosmtplib.SMTPDataError as exc:
            reply = Reply.parse(exc.code, exc.message)
            await self._reset(client)
        for rcpt in accepted:
            replies[rcpt] = reply
        return DeliveryResult(replies, remote=s.host)

    async def _pipelined(
        self,
        client: aiosmtplib.SMTP,
        pipeline: PipeliningProtocol,
        envelope: Envelope,
        reused: bool,
    ) -> DeliveryResult:
        """MAIL, every RCPT and DATA in one write, then the body: every reply is checked, as
        RFC 2920 asks, and the outcome is the same as command by command."""
        s = self.settings
        mail_options, encoding = self._mail_options(client, envelope)
        recipients = envelope.recipients
        group = [
            _mail_words(envelope.sender, mail_options, encoding),
            *(_rcpt_words(rcpt, encoding) for rcpt in recipients),
            (b"DATA",),
        ]
        try:
            responses = await pipeline.execute_group(group, timeout=s.command_timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
            client.close()  # as aiosmtplib does: the replies can no longer be paired
            if reused and isinstance(exc, aiosmtplib.SMTPServerDisconnected):
                raise _StaleConnection() from exc
            raise
        if len(responses) < len(group):  # a 421: the server closed; it answers the rest
            client.close()
            responses += [responses[-1]] * (len(group) - len(responses))
        mail, data = responses[0], responses[-1]
        replies = {
            rcpt: Reply.parse(response.code, response.message)
            for rcpt, response in zip(recipients, responses[1:-1], strict=True)
        }
        accepted = [rcpt for rcpt, reply in replies.items() if reply.code in (250, 251)]
        if mail.code != 250:
            replies = dict.fromkeys(recipients, Reply.parse(mail.code, mail.message))
            accepted = []
        if data.code == 354 and not accepted:  # DATA taken though nobody is to receive it
            await self._end_data(client, pipeline, None)  # ended empty: nothing is sent
            await self._reset(client)
            return DeliveryResult(replies, remote=s.host)
        if data.code == 354:
            body = await self._end_data(client, pipeline, envelope.message)
            reply = Reply.parse(body.code, body.message)
        else:
            reply = Reply.parse(data.code, data.message)
        if reply.code != 250 and client.is_connected:
            await self._reset(client)
        for rcpt in accepted:
            replies[rcpt] = reply
        return DeliveryResult(replies, remote=s.host)

    async def _end_data(
        self, client: aiosmtplib.SMTP, pipeline: PipeliningProtocol, message: bytes | None
    ) -> aiosmtplib.SMTPResponse:
        try:
            return await pipeline.send_data(message, timeout=self.settings.data_timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            client.close()
            raise

    # MAIL and RCPT go through aiosmtplib's command layer (its timeouts, its CR/LF check, its
    # closing on 421 or a lost connection) with the address as _mail_words and _rcpt_words put
    # it: what aiosmtplib's mail() and rcpt() send, without their reparsing every address with
    # the email package (a tenth of a millisecond per message).

    async def _mail(
        self, client: aiosmtplib.SMTP, sender: str, options: list[str], encoding: str
    ) -> None:
        response = await client.execute_command(
            *_mail_words(sender, options, encoding), timeout=self.settings.command_timeout
        )
        if response.code != 250:
            raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)

    async def _rcpt(self, client: aiosmtplib.SMTP, recipient: str, encoding: str) -> None:
        response = await client.execute_command(
            *_rcpt_words(recipient, encoding), timeout=self.settings.command_timeout
        )
        if response.code not in (250, 251):
            raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)

    def _mail_options(self, client: aiosmtplib.SMTP, envelope: Envelope) -> tuple[list[str], str]:
        options: list[str] = []
        encoding = "ascii"
        if envelope.needs_smtputf8:
            if not client.supports_extension("smtputf8"):
                raise PermanentRelayError(
                    "the server does not support SMTPUTF8, needed for a non-ASCII address",
                    reply=Reply(553, "the server does not support SMTPUTF8", "5.6.7"),
                )
            options.append("SMTPUTF8")
            encoding = "utf-8"
        if client.supports_extension("size"):
            message = envelope.message  # as sent: every bare LF becomes CRLF
            size = len(message) + message.count(b"\n") - message.count(b"\r\n")
            limit = client.esmtp_extensions.get("size", "").strip()
            if limit.isdigit() and 0 < int(limit) < size:
                raise PermanentRelayError(
                    f"the message ({size} bytes) is larger than the server accepts ({limit})",
                    reply=Reply(552, f"message size {size} exceeds the limit of {limit}", "5.3.4"),
                )
            options.append(f"SIZE={size}")
        if client.supports_extension("8bitmime") and not envelope.message.isascii():
            options.append("BODY=8BITMIME")
        return options, encoding

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await client.rset(timeout=self.settings.command_timeout)

    # -- the pool ---------------------------------------------------------------------------------

    async def _acquire(self) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.client.is_connected and now - conn.last_used < self.settings.idle_timeout:
                return conn, True
            self._close(conn)
        return await self._connect(), False

    async def _connect(self) -> _Connection:
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
                if isinstance(exc, aiosmtplib.SMTPException | OSError | ValueError):
                    raise _translate(exc, s, self.name) from exc
                raise
            client.timeout = s.command_timeout
            return _Connection(client, enable_pipelining(client) if s.pipelining else None)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _oauth2_token(self) -> str | None:
        """The access token to log in with, or None without oauth2 (fetched before connecting,
        so that a slow token endpoint does not keep an idle session open)."""
        if self._tokens is None:
            return None
        try:
            return await self._tokens.token()
        except TokenError as exc:
            raise _translate(exc, self.settings, self.name) from exc

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

    def _release(self, conn: _Connection, reusable: bool) -> None:
        limit_reached = conn.messages >= self.settings.messages_per_connection
        if reusable and conn.client.is_connected and not limit_reached:
            conn.last_used = time.monotonic()
            self._idle.append(conn)
            self._schedule_reaper()
        else:
            self._close(conn)

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

    def _close(self, conn: _Connection) -> None:
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

    async def aclose(self) -> None:
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

    def _make_tls_context(self) -> ssl.SSLContext:
        s = self.settings
        context = ssl.create_default_context(cafile=s.tls_ca_file)
        if not s.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _translate(exc: BaseException, s: SMTPSettings, relay: str) -> RelayError:
    """aiosmtplib / socket / TLS / OAuth2 token errors -> a relay error saying what went wrong
    and what to fix. Login failures are transient: the mail waits while the config is fixed."""
    where = f"{s.host}:{s.port}"
    if isinstance(exc, RelayError):
        return exc
    if isinstance(exc, TokenError):
        message = (
            f"relay {relay}: no OAuth2 access token for the mailbox {s.username!r}: {exc}; "
            "mail is kept and retried"
        )
        return TransientRelayError(message, reply=Reply(454, message, "4.7.0"))
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError) and s.oauth2 is not None:
        message = (
            f"relay {relay}: {where} refused XOAUTH2 for the mailbox {s.username!r} "
            f"({exc.code} {' '.join(exc.message.split())}), with a freshly fetched token too. "
            "Check that username is the mailbox the token is for; that the app has the SMTP "
            "permission with admin or user consent (Microsoft 365: SMTP.SendAsApp for client "
            "credentials, SMTP.Send for a user's refresh token; Gmail: the "
            "https://mail.google.com/ scope) and that scope asks for it; and for Microsoft 365 "
            "that SMTP AUTH is enabled for the mailbox "
            "(Set-CASMailbox <mailbox> -SmtpClientAuthenticationDisabled $false) "
            "and the app's service principal has access to it. Mail is kept and retried"
        )
        return TransientRelayError(message, reply=Reply(454, message, "4.7.0"))
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return TransientRelayError(
            f"{where} refused the login for {s.username!r} ({exc.code} {exc.message}): check "
            "username and the password file; mail is kept and retried",
            reply=Reply.parse(exc.code, exc.message),
        )
    if isinstance(exc, ssl.SSLCertVerificationError) or isinstance(
        exc.__cause__, ssl.SSLCertVerificationError
    ):
        return TransientRelayError(
            f"{where}: TLS certificate verification failed ({exc}); fix the server's "
            "certificate or name its CA in tls_ca_file",
            reply=Reply(451, "TLS certificate verification failed", "4.7.5"),
        )
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return TransientRelayError(
            f"{where} did not answer in time ({exc})", reply=Reply(451, "timed out", "4.4.2")
        )
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return TransientRelayError(
            f"{where} closed the connection ({exc})", reply=Reply(451, "connection lost", "4.4.2")
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        # A refused greeting, EHLO or STARTTLS: the relay as a whole is unusable right now.
        reply = Reply.parse(exc.code, exc.message)
        return TransientRelayError(f"{where} answered {reply}", reply=reply)
    if isinstance(exc, aiosmtplib.SMTPConnectError | ConnectionError | OSError):
        return TransientRelayError(
            f"cannot connect to {where}: {exc}", reply=Reply(451, "cannot connect", "4.4.1")
        )
    if isinstance(exc, aiosmtplib.SMTPNotSupported) or (
        isinstance(exc, aiosmtplib.SMTPException) and "STARTTLS" in str(exc)
    ):
        return TransientRelayError(
            f'{where}: {exc}; mqd will not fall back to clear text (security = "{s.security}")',
            reply=Reply(451, "the server does not offer STARTTLS", "4.7.0"),
        )
    if isinstance(exc, ValueError):
        return PermanentRelayError(
            f"an address cannot be sent safely: {exc}",
            reply=Reply(553, "invalid address", "5.1.3"),
        )
    return TransientRelayError(f"{where}: {exc}", reply=Reply(451, str(exc), "4.3.0"))


def _check_quoting(address: str) -> None:
    """ValueError (a permanent failure) when aiosmtplib would send ``address`` as another one:
    its parser reads ``a"b@example.net`` as ``<a>``. mqd refuses rather than reinterprets."""
    quoted = quote_address(address)  # ValueError for characters unsafe on a command line
    if quoted != f"<{address}>":
        raise ValueError(f"{address!r} would go out as {quoted}")


def _wire_address(address: str, encoding: str) -> bytes:
    """``<address>`` as MAIL or RCPT carries it: what aiosmtplib's mail() and rcpt() send, for
    an address _check_quoting lets through (a plain one needs no check)."""
    if address and not _PLAIN_ADDRESS.fullmatch(address):
        _check_quoting(address)
    return b"<" + address.encode(encoding) + b">"


def _mail_words(sender: str, options: list[str], encoding: str) -> tuple[bytes, ...]:
    return (
        b"MAIL",
        b"FROM:" + _wire_address(sender, encoding),
        *[option.encode("ascii") for option in options],
    )


def _rcpt_words(recipient: str, encoding: str) -> tuple[bytes, ...]:
    return (b"RCPT", b"TO:" + _wire_address(recipient, encoding))


def _check_oauth2(options: Options, settings: SMTPSettings) -> None:
    """XOAUTH2 replaces the password, needs the mailbox, and never goes over clear text."""
    if settings.password is not None:
        present = options.keys()
        given = next(k for k in ("password_file", "password_env", "password") if k in present)
        raise options.error(
            given,
            f"is given together with [{options.section}.oauth2]: XOAUTH2 logs in with a token "
            "instead of a password, so remove the password (or the oauth2 table)",
        )
    if not settings.username:
        raise options.error(
            "username",
            "is required with oauth2: the mailbox to send as (the account the token is for), "
            'e.g. username = "noreply@example.com"',
        )
    if settings.security == "none":
        raise options.error(
            "security",
            '"none" sends in clear text, so mqd will not send an OAuth2 token over it: use '
            '"starttls" or "tls"',
        )


def _optional_path(options: Options, key: str) -> str | None:
    path = options.filepath(key, None)
    return str(path) if path is not None else None


@hookimpl
def mqd_register_relays(register: RegisterRelay) -> None:
    register("smtp", SMTPRelay)
