"""The event store interface: what the tracker, the queries and ``mqd history`` need of a store.

``SQLiteStore`` (``mqd.tracking.sqlite``) implements it; a PostgreSQL store will implement the
same. Only typed values cross it (records, keys, statuses, times), never SQL.

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

__all__ = ["EventStore", "Fault"]


class EventStore(abc.ABC):
    """Messages, their recipients' current status and every event."""

    # -- writing ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def record(self, records: Sequence[Record]) -> list[Record]:
        """Record ``records`` in one transaction; return those that were new (not duplicates
        of an event recorded before, by ``event_key``)."""

    @abc.abstractmethod
    def set_cursor(self, name: str, seq: int) -> None:
        """Remember ``seq`` as the cursor ``name`` (a reader's position in the events)."""

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
    def events_after(self, seq: int, limit: int) -> list[FeedEvent]:
        """At most ``limit`` events recorded after ``seq``, in ``seq`` order, each also with its
        message's ``message_id`` and ``sender``."""

    @abc.abstractmethod
    def last_seq(self) -> int:
        """The ``seq`` of the newest event; 0 when there is none."""

    @abc.abstractmethod
    def cursor(self, name: str) -> int:
        """The cursor ``name``; -1 if it was never set."""

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
