"""The keys of an ``[[smtpd]]`` table of its own (``relay``, ``allowed_senders`` and
``check_from`` are every source's: ``mqd.config.sources``)."""

from __future__ import annotations

import functools
import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from mqd.config.options import Options
from mqd.config.schema import Config, SourceConfig
from mqd.errors import ConfigError
from mqd.intake.smtpd.users import User, read_users

__all__ = ["Listen", "SMTPSettings"]

TLS_MODES = ("none", "starttls", "implicit")
#: What a message with a bare CR or LF gets: its line endings made CRLF, or 554 5.6.0.
BARE_LINE_ENDINGS = ("normalize", "refuse")


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @functools.cached_property  # (asked at each connection)
    def loopback(self) -> bool:
        """Only this machine can connect: no AUTH needed (a null client's ``localhost:25``)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SMTPSettings:
    listen: tuple[Listen, ...]
    #: The name in the greeting and EHLO reply.
    hostname: str
    #: SIZE: the largest message taken; larger ones get 552 5.3.4.
    max_message_size: int
    max_recipients: int = 100
    #: The longest line of a message, without its CRLF (RFC 5321: 998).
    max_line_length: int = 998
    max_connections: int = 100
    idle_timeout: float = 300.0
    #: "normalize": a bare CR or LF becomes CRLF; "refuse": 554 5.6.0. Either way SMTP
    #: smuggling (``\n.\n`` ...) cannot split a message on its way through mqd.
    bare_line_endings: str = "normalize"
    #: "none", "starttls" (offered; required before AUTH on a non-loopback address) or
    #: "implicit" (TLS from the first byte: port 465).
    tls: str = "none"
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    #: The logins (from ``users_file``); needed on a non-loopback address.
    users: dict[str, User] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def read(cls, source: SourceConfig, app: Config) -> SMTPSettings:
        """Read and check the table's own keys; ConfigError names the first wrong one."""
        opts = source.options or Options({}, section=source.name, path=app.source)
        listen = tuple(
            _listen(opts, value) for value in opts.string_list("listen", ["127.0.0.1:25"])
        )
        if not listen:
            raise opts.error("listen", 'expected at least one address, e.g. ["127.0.0.1:25"]')
        tls = opts.choice("tls", TLS_MODES, "none")
        cert = opts.filepath("tls_cert", None)
        key = opts.filepath("tls_key", None)
        users_file = opts.filepath("users_file", None)
        settings = cls(
            listen=listen,
            hostname=opts.string("hostname", app.queue.hostname),
            max_message_size=opts.size("max_message_size", str(app.queue.max_message_size)),
            max_recipients=opts.integer("max_recipients", 100, minimum=1),
            max_line_length=opts.integer("max_line_length", 998, minimum=78),
            max_connections=opts.integer("max_connections", 100, minimum=1),
            idle_timeout=opts.duration("idle_timeout", "5m"),
            bare_line_endings=opts.choice("bare_line_endings", BARE_LINE_ENDINGS, "normalize"),
            tls=tls,
            tls_context=_tls_context(opts, tls, cert, key),
            users=_users(opts, users_file),
        )
        opts.finish()
        if settings.max_message_size > app.queue.max_message_size:
            raise opts.error("max_message_size", "must not be more than queue.max_message_size")
        if settings.idle_timeout <= 0:
            raise opts.error("idle_timeout", 'must be more than 0s, e.g. "5m"')
        for address in listen:
            if address.loopback:
                continue
            if not settings.users:
                raise opts.error(
                    "users_file",
                    f"is required: {address} is not a loopback address, so clients must log "
                    "in (AUTH), and mqd is never an open relay",
                )
            if tls == "none":
                raise opts.error(
                    "tls",
                    f'"starttls" or "implicit" is required: {address} is not a loopback '
                    "address, and credentials never cross a plaintext connection",
                )
        return settings


def _listen(opts: Options, value: str) -> Listen:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise opts.error("listen", f"expected host:port such as '127.0.0.1:25', got {value!r}")
    return Listen(host, int(port))


def _tls_context(
    opts: Options, tls: str, cert: Path | None, key: Path | None
) -> ssl.SSLContext | None:
    if tls == "none":
        return None
    if cert is None or key is None:
        raise opts.error(
            "tls_cert" if cert is None else "tls_key", f'is required with tls = "{tls}"'
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise opts.error("tls_cert", f"cannot load {cert} with {key}: {exc}") from None
    return context


def _users(opts: Options, path: Path | None) -> dict[str, User]:
    if path is None:
        return {}
    try:
        users = read_users(path)
    except OSError as exc:
        raise opts.error("users_file", f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise opts.error("users_file", f"{path}: {exc}") from None
    if not users:
        raise opts.error("users_file", f"{path} holds no login")
    return users


def config_error(source: SourceConfig, app: Config, message: str) -> ConfigError:
    return ConfigError(message, path=app.source, key=source.name)
