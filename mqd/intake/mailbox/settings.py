"""The keys of a ``[[mailbox]]`` table of its own (``relay``, ``allowed_senders`` and
``check_from`` are every source's: ``mqd.config.sources``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from urllib.parse import SplitResult, quote, unquote, urlsplit

from mqd.config.options import Options, Secret
from mqd.config.schema import Config, SourceConfig

__all__ = ["MailboxSettings"]

SCHEMES = ("amqp", "amqps")


@dataclass(frozen=True)
class MailboxSettings:
    #: ``amqp://user@host:port/vhost``: never a password (``password_file`` / ``_env``).
    url: str
    queue: str
    #: Deliveries the broker sends ahead of their acks (basic.qos prefetch_count).
    prefetch: int = 32
    #: How long a handed-over AMQP message_id is remembered (a redelivery within it is acked
    #: and queues nothing).
    dedup_window: float = 7 * 86400.0
    #: The longest wait between two connection attempts (from 1s, doubling).
    reconnect_max: float = 30.0
    #: The broker's heartbeat, in seconds: a dead connection is noticed within about twice it.
    heartbeat: int = 30
    password: Secret | None = field(default=None, compare=False, repr=False)

    @classmethod
    def read(cls, source: SourceConfig, app: Config) -> MailboxSettings:
        """Read and check the table's own keys; ConfigError names the first wrong one."""
        opts = source.options or Options({}, section=source.name, path=app.source)
        url = opts.string("url")
        parts = _check_url(opts, url)
        queue = opts.string("queue")
        if not queue:
            raise opts.error("queue", 'must name the queue to consume, e.g. "mail"')
        settings = cls(
            url=url,
            queue=queue,
            prefetch=opts.integer("prefetch", 32, minimum=1),
            dedup_window=opts.duration("dedup_window", "7d"),
            reconnect_max=opts.duration("reconnect_max", "30s"),
            heartbeat=opts.integer("heartbeat", 30, minimum=0),
            password=opts.secret("password"),
        )
        opts.finish()
        if settings.prefetch > 65535:
            raise opts.error("prefetch", "must be at most 65535 (AMQP's prefetch_count)")
        if settings.reconnect_max < 1:
            raise opts.error("reconnect_max", 'must be at least 1s, e.g. "30s"')
        if settings.password is not None and not parts.username:
            raise opts.error("url", "a password is set but the url names no user (amqp://user@)")
        return settings

    def connect_url(self) -> str:
        """The url with the password in it, for the client library only (never logged)."""
        if self.password is None:
            return self.url
        parts = urlsplit(self.url)
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{user}:{quote(self.password.reveal(), safe='')}@{host}"
        return parts._replace(netloc=netloc).geturl()

    @property
    def where(self) -> str:
        """``amqp://127.0.0.1:5672/ queue mail``: the broker and queue, for the log."""
        parts = urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]
        return f"{parts.scheme}://{host}{parts.path or '/'} queue {self.queue}"

    @property
    def key(self) -> str:
        """A name for the remembered message_ids that follows the broker and queue, not the
        table's place in the file."""
        parts = urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]
        digest = hashlib.sha256(f"{host}\0{unquote(parts.path)}\0{self.queue}".encode())
        return digest.hexdigest()[:16]


def _check_url(opts: Options, url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise opts.error("url", f"not a URL: {exc}") from None
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise opts.error("url", f'expected amqp://user@host/ or amqps://..., got "{url}"')
    if parts.password is not None:
        raise opts.error(
            "url",
            "holds a password: give it in password_file (or password_env), never in the url "
            "(it would show in logs and mqd config check)",
        )
    return parts
