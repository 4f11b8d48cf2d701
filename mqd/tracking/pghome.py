"""The PostgreSQL event store's place: opening it for the tracker (``PostgresHome``), what its
errors mean (``classify``), and opening it read-only for ``mqd history`` and ``mqd events``
(``reading``).

A database is never "damaged" the way a file is: nothing is set aside. A database that cannot
be reached, or whose schema is missing or not this mqd's, pauses tracking (the keeper keeps the
events and retries from 1 s doubling to 15 s, as the queue store does: a restart is over in
seconds) and the tracker's logs say why.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.errors import UndefinedTable

from mqd.errors import QueueError, TrackingError
from mqd.queue.postgresql.connect import Database
from mqd.tracking.eventstore import CommitInDoubt, Fault
from mqd.tracking.postgresql import PostgresEventStore

__all__ = ["PostgresHome", "classify", "reading"]

#: Seconds to the first try again after the database failed, and the most (as the queue's).
RETRY = (1.0, 15.0)


def classify(exc: BaseException) -> Fault:
    """UNAVAILABLE for what may pass or be fixed outside mqd (the server unreachable or gone, a
    deadlock tried too often, a schema missing or from another mqd); OTHER for the rest."""
    if isinstance(
        exc,
        psycopg.OperationalError
        | psycopg.InterfaceError
        | UndefinedTable
        | QueueError
        | TrackingError
        | CommitInDoubt
        | OSError,
    ):
        return Fault.UNAVAILABLE
    return Fault.OTHER


class PostgresHome:
    """Where the tracker's ``PostgresEventStore`` lives: ``database``. Implements
    ``keeper.StoreHome``."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @property
    def where(self) -> str:
        return self.database.shown

    @property
    def retry(self) -> tuple[float, float]:
        return RETRY

    def open(self) -> PostgresEventStore:
        return PostgresEventStore.connect(self.database)

    def fault(self, exc: BaseException) -> Fault:
        return classify(exc)

    def replaced(self) -> bool:
        return False

    def set_aside(self) -> None:
        return None


@contextmanager
def reading(database: Database) -> Iterator[PostgresEventStore]:
    """The store, read-only, for one command; its errors as ``TrackingError`` naming the
    database and what to do."""
    try:
        store = PostgresEventStore.connect(database, readonly=True)
    except psycopg.Error as exc:
        raise unreadable(database, exc) from None
    try:
        yield store
    except psycopg.Error as exc:
        raise unreadable(database, exc) from None
    finally:
        store.close()


def unreadable(database: Database, exc: psycopg.Error) -> TrackingError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TrackingError(
        f"cannot read the event store in {database.shown}: {reason} (check [queue] dsn and "
        "that 'mqd db check' passes)"
    )
