"""The event store interface: what the tracker, the queries and ``mqd history`` need of a store.

``SQLiteStore`` (``mqd.tracking.sqlite``) and ``PostgresEventStore`` (``mqd.tracking.postgresql``,
shared by every node of a fleet) implement it. Only typed values cross it (records, keys,
statuses, times, positions), never SQL.

Readers of the feed (``mqd events -f``, the notifier) go by *position*: an int, opaque, that
orders the events as ``events_after`` returns them (each ``FeedEvent.position``). In SQLite it is
the ``seq``. In PostgreSQL, where a sequence's numbers can commit out of order between nodes,
it is the writing transaction's id and the ``seq`` together, and ``events_after`` returns only
events that nothing still running can precede: a position once passed is never preceded by an
event committed later. A cursor is a reader's position, kept in the store.

Results are typed (``mqd.tracking.answers``): ``MessageSummary`` for a message (its
recipients' ``RecipientStatus`` included), ``TimelineEvent`` for an event, ``FeedEvent`` for an
event with its message's Message-ID and sender.

Every method may be called from a worker thread, one call at a time per store object. A store's
own exceptions (``sqlite3.Error``, ...) pass through; ``StoreHome.fault`` says what they mean.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence

from mqd.tracking.activity import Activity, Window
from mqd.tracking.answers import FeedEvent, MessageSummary, TimelineEvent
from mqd.tracking.records import Record
from mqd.tracking.vocabulary import ProviderEvent, Status

__all__ = ["CommitInDoubt", "EventStore", "Fault"]


class EventStore(abc.ABC):
    """Messages, their recipients' current status and every event."""

    # -- writing ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def record(self, records: Sequence[Record]) -> list[Record]:
        """Record ``records`` in one transaction; return those that were new (not duplicates
        of an event recorded before, by ``event_key``). Raises ``CommitInDoubt`` when the
        commit failed where it may have gone through."""

    def committed(self, token: object) -> bool | None:
        """Whether the batch whose commit raised ``CommitInDoubt(token)`` committed after all
        (None: not known yet, ask again). A store whose commit is never in doubt (SQLite's, on
        one machine) never raises it, and is never asked."""
        raise NotImplementedError(f"{type(self).__name__} never leaves a commit in doubt")

    @abc.abstractmethod
    def set_cursor(self, name: str, position: int) -> None:
        """Remember ``position`` as the cursor ``name`` (a reader's position in the events)."""

    @abc.abstractmethod
    def prune(self, before: float) -> int:
        """Delete events older than ``before`` and messages with nothing newer; return how
        many events went."""

    # -- matching a provider's event --------------------------------------------------------------

    @abc.abstractmethod
    def match(self, source: str, event: ProviderEvent) -> str | None:
        """The mqd id a provider's event belongs to (by its ``mqd_id``, else its
        ``provider_id``), or None."""

    # -- reading ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def find_messages(
        self,
        *,
        ids: Sequence[str] = (),
        message_ids: Sequence[str] = (),
        sender: str | None = None,
        recipient: str | None = None,
        limit: int,
    ) -> list[MessageSummary]:
        """Summaries of the messages that match any of the criteria given, newest first: one
        of ``ids`` (mqd's queue ids), one of ``message_ids`` (``Message-ID`` with its angle
        brackets), from ``sender`` or to ``recipient`` (addresses, in any case). None given:
        none found."""

    @abc.abstractmethod
    def recent_messages(
        self, *, status: Status | None = None, account: str | None = None, limit: int
    ) -> list[MessageSummary]:
        """Summaries of the newest messages, all or those showing ``status``, newest first."""

    @abc.abstractmethod
    def failed_messages(self, *, since: float | None = None, limit: int) -> list[MessageSummary]:
        """Summaries of the messages that went wrong, newest first: those showing a status in
        ``records.BAD`` or with a recipient in one, updated at or after ``since`` if given."""

    @abc.abstractmethod
    def events_of(self, message: str) -> list[TimelineEvent]:
        """A message's events in the order they happened (within one second, mqd's own before
        a provider's, which whole seconds cannot order)."""

    @abc.abstractmethod
    def events_after(self, position: int, limit: int) -> list[FeedEvent]:
        """At most ``limit`` events after ``position`` (0: from the first), in position order,
        each also with its message's ``message_id`` and ``sender``: only those no event
        committed later can come before."""

    @abc.abstractmethod
    def last_position(self, back: int = 0) -> int:
        """The position after which ``events_after`` finds the newest ``back`` events (0: the
        newest event's, now); 0 when there are no more events than that."""

    @abc.abstractmethod
    def cursor(self, name: str) -> int:
        """The cursor ``name`` (a position); -1 if it was never set."""

    @abc.abstractmethod
    def lead(self, name: str) -> bool:
        """Whether this store object is, or has now become, the one reader of the cursor
        ``name`` among every node sharing the store (the notifier: one node sends each
        notification). It stays so until the store is closed or its connection is lost."""

    @abc.abstractmethod
    def activity(self, window: Window) -> Activity:
        """Messages per bucket of ``window`` by outcome, per relay and per sender, and the
        delivery latency (``mqd.tracking.activity``)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's connection; the object is not used after it."""


class Fault(enum.Enum):
    """What an exception raised by a store means for the tracker (``StoreHome.fault``)."""

    #: The store is damaged (not a database, a malformed page): set it aside, start afresh.
    DAMAGED = "damaged"
    #: The store cannot be used for now (locked, unreadable, a full disk, an I/O error, a
    #: directory it cannot be created in): pause tracking and try again later.
    UNAVAILABLE = "unavailable"
    #: Not the store's condition (a bug, a bad argument): the caller's to report.
    OTHER = "other"


class CommitInDoubt(Exception):
    """A batch's commit failed where it may have committed all the same (the connection was
    lost during ``COMMIT``): ``token`` asks ``EventStore.committed`` which, once the store can
    be reached again. Writing the batch again without asking could record it twice."""

    def __init__(self, token: object, why: str) -> None:
        super().__init__(f"the commit of a batch may or may not have gone through: {why}")
        self.token = token
