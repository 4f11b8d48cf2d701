"""The exceptions mqd raises, as one tree.

::

    MQDError
    ├── ConfigError            a config file or option is wrong (names the file and key)
    ├── SpoolError             a spool file cannot be taken in
    │   └── MessageParseError  its content is not a message mqd can relay
    ├── PolicyError            the message is not allowed (sender not on the allow-list)
    ├── SubmissionError        a source's message was not queued; ``.stage``, ``.permanent``
    ├── QueueError             the queue directory is unusable
    │   └── QueueLockedError   another mqd process holds the queue directory
    ├── RelayError             a relay could not deliver; carries ``.reply``
    │   ├── TransientRelayError   try again later (4xx, timeout, dropped connection)
    │   └── PermanentRelayError   will never work (5xx, bad address)
    ├── PluginError            a plugin failed to load or misbehaved
    ├── TrackingError          the event store (history) cannot be read or written; names it
    └── TokenError             no OAuth2 access token could be had (``mqd.relays.smtp.oauth2``)

Relays translate their library's exceptions (aiosmtplib, httpx, ...) into
``TransientRelayError`` / ``PermanentRelayError`` at one place, chaining ``from exc``.
"""

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know it)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from mqd.message.reply import Reply

__all__ = [
    "ConfigError",
    "ConfigErrors",
    "DirectoryError",
    "MQDError",
    "MessageParseError",
    "PermanentRelayError",
    "PluginError",
    "PolicyError",
    "QueueError",
    "QueueLockedError",
    "QueueSchemaError",
    "QueueUnavailableError",
    "RelayError",
    "SpoolError",
    "SubmissionError",
    "TrackingError",
    "TransientRelayError",
    "WorkerError",
    "raise_gathered",
]


class MQDError(Exception):
    """Root of every exception mqd raises on purpose."""


class ConfigError(MQDError):
    """The configuration is invalid.

    ``path`` is the file (None for embedded defaults), ``key`` the dotted key at fault.
    ``str()`` names both, so the message alone tells the user what to fix.
    """

    def __init__(self, message: str, *, path: "Path | None" = None, key: str | None = None) -> None:
        self.message = message
        self.path = path
        self.key = key
        super().__init__(message)

    def with_location(self, *, path: "Path | None" = None, key: str | None = None) -> "ConfigError":
        """A copy of this error that also names ``path`` / ``key`` when it did not already."""
        return ConfigError(self.message, path=self.path or path, key=self.key or key)

    def __str__(self) -> str:
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.key:
            where.append(f"key '{self.key}'")
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class DirectoryError(ConfigError):
    """A directory the config names that mqd cannot create or write (exit 73, EX_CANTCREAT:
    the config may be right and the filesystem wrong)."""


class ConfigErrors(ConfigError):
    """Several problems in one configuration, all reported at once (``mqd config check`` and
    ``mqd run`` alike): ``str()`` gives one line per problem, each naming its file and key."""

    def __init__(self, errors: "Sequence[ConfigError]") -> None:
        self.errors = tuple(errors)
        first = self.errors[0]
        super().__init__(first.message, path=first.path, key=first.key)

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


def raise_gathered(errors: "Sequence[ConfigError]") -> None:
    """Raise the one error, or all of them as ConfigErrors; nothing when there is none."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


class SpoolError(MQDError):
    """A spool file cannot be taken in (not a regular file, too big, unreadable)."""


class MessageParseError(SpoolError):
    """The file is not a message mqd can relay (empty, binary, no recipients, ...)."""


class PolicyError(MQDError):
    """The message is refused by policy (its sender is not allowed)."""


class SubmissionError(MQDError):
    """A message a source handed over (``mqd.intake.handover``) was not queued: ``stage`` says
    where ("policy": the sender is not allowed; "limit": its account is over its limits, for
    now; "intake": the message cannot be read; "queue": the store cannot take it now) and
    ``permanent`` whether the producer must give up (an SMTP source answers 5xx) or may try
    again (4xx)."""

    def __init__(self, reason: str, *, stage: str, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stage = stage
        self.permanent = permanent


class WorkerError(MQDError):
    """One of queue.workers' other processes failed (with ``mqd run --once``)."""


class QueueError(MQDError):
    """The queue directory cannot be used."""


class QueueLockedError(QueueError):
    """Another mqd process holds the lock on this queue directory."""


class QueueUnavailableError(QueueError):
    """The queue's database cannot be reached now (it may come back: try again later)."""


class QueueSchemaError(QueueError):
    """The queue database's schema is missing, older or newer than this mqd knows."""


class RelayError(MQDError):
    """A relay could not deliver a message. ``reply`` is what the far end said, if anything.

    ``retry_after`` (seconds) is the far end's own word on when to come back (HTTP
    ``Retry-After``, a provider's throttling hint): the next attempt is no sooner, and the relay
    is paused for every message until then.
    """

    def __init__(
        self, message: str, *, reply: "Reply | None" = None, retry_after: float | None = None
    ) -> None:
        self.reply = reply
        self.retry_after = retry_after
        super().__init__(message)


class TransientRelayError(RelayError):
    """Delivery failed for now; the queue retries later."""


class PermanentRelayError(RelayError):
    """Delivery can never succeed; the queue bounces the message."""


class PluginError(MQDError):
    """A plugin failed to load, registered something invalid, or raised."""


class TrackingError(MQDError):
    """The event store cannot be used: damaged, unreadable, paused, or written by a newer mqd.

    ``path`` is the store's file (None when it has none). ``str()`` says what to do. Delivery
    never waits on it: only history (``mqd history``, the API, notifications) does.
    """

    def __init__(self, message: str, *, path: "Path | None" = None) -> None:
        self.path = path
        super().__init__(message)


class AdminError(MQDError):
    """An administrative request cannot be carried out (unknown id, message in flight, ...)."""
