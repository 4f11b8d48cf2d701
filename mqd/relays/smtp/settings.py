"""The ``[relays.<name>]`` table of an ``smtp`` relay: ``SMTPSettings`` and ``read_settings``.

Reading checks what can be checked without a network: the security mode and its default port,
that a password has a username and a username a password (or an ``oauth2`` table instead), that
no credential would cross a plaintext connection, that ``tls_ca_file`` loads. Every mistake is a
ConfigError naming the file and key.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field

from mqd.config.options import Options, Secret
from mqd.relays.smtp.oauth2.settings import OAuth2Settings

__all__ = ["DEFAULT_PORTS", "SECURITY_MODES", "SMTPSettings", "read_settings"]

log = logging.getLogger("mqd.relay.smtp")

SECURITY_MODES = ("tls", "starttls", "none")
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


def read_settings(name: str, options: Options) -> SMTPSettings:
    """The relay ``name``'s settings from its table; raises ConfigError naming file and key."""
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
            f"username {settings.username!r} needs a password: set password_file (or password_env)",
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
        log.warning("relay %s: tls_verify = false: the server's certificate is not checked", name)
    return settings


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
