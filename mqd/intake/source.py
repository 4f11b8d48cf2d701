"""The contract of an intake source other than the spools: SMTP submission (``[[smtpd]]``) today,
an HTTP submit API or a message broker's consumer tomorrow, a third party's (SQS, Kafka ...)
alike.

A source receives messages over its own protocol and hands each one over, in memory, through
``HandOver.submit``: the sender policy of the spools (``mqd_check_policy``), the route, and the
store's ``accept``, which returns only once the message is durable. The source acknowledges its
producer only then, and passes a refusal on (``SubmissionError``: permanent, or try again).
Where its protocol lets it, it checks the sender before the message comes
(``HandOver.check_sender``: SMTP's MAIL FROM), while the producer is still waiting.

A source class is registered with ``mqd_register_sources`` under the name of its config table
(``register("smtpd", "mqd.intake.smtpd.source:SMTPSource")``); the daemon builds one per table,
starts it once the queue is open, and stops it before the queue closes (and on a reload that
changed its table). This module is a leaf of intake: the plugin host imports it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mqd.config.schema import Config, SourceConfig
from mqd.queue.keys import Handed

__all__ = ["HandOver", "Login", "RegisterSource", "Source", "SourceStatus", "Submission"]


@dataclass(frozen=True)
class Login:
    """A producer that authenticated to a source: its name and, when it has one, its own list
    of allowed senders (checked on top of the source's)."""

    name: str
    allowed_senders: tuple[str, ...] = ()


@dataclass(frozen=True)
class Submission:
    """One message a source received: its envelope as the protocol gave it, and its bytes."""

    sender: str
    recipients: tuple[str, ...]
    #: The message (header and body) as received, line endings CRLF or LF.
    data: bytes
    login: Login | None = None
    #: Who handed it over, for the log and the timeline (``"127.0.0.1:51234"``).
    peer: str | None = None
    #: Trace header fields to put in front of the message, CRLF-terminated (SMTP's
    #: ``Received:``, RFC 5321 section 4.4).
    trace: bytes = b""
    #: The headers mqd looks at, when the source has read ``data`` already
    #: (``mqd.message.envelope.parse_message``'s ``headers``; the data then has no NUL and a
    #: sound header block): the hand-over does not read them again.
    headers: dict[str, str] | None = None


class HandOver(Protocol):
    """What intake offers a source (``mqd.intake.handover.Handover`` implements it)."""

    def check_sender(self, source: SourceConfig, sender: str, login: Login | None) -> str | None:
        """Why mail from ``sender`` is refused for ``source`` (and ``login``), or None: the
        envelope sender alone, before the message is there (the From header is checked with
        the message)."""
        ...

    async def submit(self, source: SourceConfig, submission: Submission) -> str:
        """Queue ``submission``; returns its queue id once it is durable. Raises
        ``SubmissionError`` when it is not queued (``permanent``: refused; otherwise the store
        cannot take it now)."""
        ...

    async def submit_once(
        self,
        source: SourceConfig,
        submission: Submission,
        key: str,
        *,
        scope: str,
        keep_for: float,
        note: str = "",
    ) -> Handed:
        """``submit``, once per ``key`` among the keys of ``scope`` (the producer's own name
        for the message: an HTTP ``Idempotency-Key``, an AMQP ``message_id``): the queue store
        keeps it with the entry, in the same durable write, for ``keep_for`` seconds. While it
        is kept, by any node of the queue, a submission with it queues nothing and gets the
        first one's id and ``note`` (``Handed.replayed``). Raises as ``submit`` does."""
        ...

    def rejected(
        self,
        source: SourceConfig,
        *,
        stage: str,
        reason: str,
        name: str,
        sender: str | None,
        recipients: tuple[str, ...],
    ) -> str:
        """Record a message ``source`` refused on its own and keeps no copy of (a broker's
        delivery it dead-lettered: ``name`` is its id there): the ``rejected`` event of the
        timeline. Returns the queue id the event was given."""
        ...


@dataclass(frozen=True)
class SourceStatus:
    """What ``mqd status`` shows of one source (``mqd.admin.status.SourceStatus`` is its
    typed form in the status document)."""

    #: ``smtpd[0]``.
    name: str
    kind: str
    #: Where it listens (``"127.0.0.1:25"``) or consumes from (``"amqp://host:5672/ queue
    #: mail"``).
    listening: tuple[str, ...]
    #: Producers connected right now.
    connections: int
    #: Messages queued, and refused (policy, malformed, too large, store unavailable), since
    #: it started.
    accepted: int
    refused: int
    #: A source that consumes from a broker ([[mailbox]]): whether it is connected now, and
    #: why not (None for a source that listens).
    connected: bool | None = None
    last_error: str | None = None


class Source(abc.ABC):
    """An intake source built from one table of its kind (``config``) in the daemon's config
    (``app``); it hands messages over through ``handover``."""

    def __init__(self, config: SourceConfig, app: Config, handover: HandOver) -> None:
        self.config = config
        self.app = app
        self.handover = handover
        self.accepted = 0
        self.refused = 0

    @abc.abstractmethod
    async def start(self) -> None:
        """Start receiving (bind the listeners). Raises ConfigError naming the key when it
        cannot (an address in use)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop receiving; a message being handed over is still answered (its ``submit``
        runs to its end) before this returns."""

    @abc.abstractmethod
    def status(self) -> SourceStatus:
        """Its counts now."""

    def take_over(self, old: Source) -> bool:
        """On a reload, before ``start``: carry on from ``old`` (the same table before the
        reload, still running) without stopping it, e.g. keep its listening sockets when its
        addresses did not change. True when done (``old`` is then not stopped and this one not
        started); False (the default) to have ``old`` stopped and this one started."""
        return False


#: ``register(kind, source_class)``: what ``mqd_register_sources`` receives; the class may be
#: given as a ``"module:Class"`` path, imported only when a config has a table of that kind.
RegisterSource = Callable[[str, "type[Source] | str"], None]
