"""The queue store protocol: the store owns the queue, its schedule and its failed folder.

Intake hands the store batches of accepted messages (``accept``) and refused ones (``refuse``).
Delivery asks the store what is due: ``lease`` gives the next due entries to this node, each
with a fencing token; the holder marks the lease ``dispatching`` before a relay gets the message,
then ends it with ``save`` (still queued), ``complete`` (delivered), ``fail`` (to the failed
folder) or ``release`` (given back unchanged). Those four are fenced: a holder whose lease was
revoked (an administrator deleted the entry) or lost gets ``LeaseLost`` and never overwrites the
store's state. Administration (list, hold, retry, delete, ...) is store operations too, so the
same commands work on a running node, a stopped one, and a shared store with many nodes.

Contract, for every implementation (``tests/queue_contract.py`` holds them to it):

* ``accept`` returns once the entries survive a crash, or, when a store takes over the claimed
  files themselves (``Incoming.file``), once each is in the store by an atomic rename (a crash
  then leaves it in the claim area or in the store, and intake's recovery accepts it again:
  ``accept`` is idempotent on the entry id).
* An ``Incoming`` with a hand-over ``key`` (``mqd.queue.keys``) records key -> entry id in the
  same durable write as the entry, shared by every node of the store; while the key is kept
  (until its ``expires``), an item with the same key queues nothing and ``accept`` answers it
  with the first (its id and note): across restarts, crashes and nodes. Expired keys are pruned
  by the store.
* ``save``, ``complete`` and ``fail`` are durable on return; a crash leaves the old state or the
  new one, never a torn one. A bounce given with them is durable before the entry records it
  and is due from then on.
* An entry leaves the queue only by ``complete``, ``fail`` or ``delete``.
* A lease is given to one holder at a time; an entry being dispatched cannot be deleted (the
  administrator is told it is being delivered); a hold or retry of a leased entry takes effect
  when its holder saves it.
* ``release(lease, not_before=...)`` reschedules without counting an attempt and need not be
  durable (an entry kept back by a quota or an open circuit).
* Nothing here knows a relay, a spool or a screen: entries are data, bodies are bytes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from mqd.errors import QueueError
from mqd.queue.entry import QueueEntry
from mqd.queue.failed import FailedFolder, FailureRecord
from mqd.queue.keys import Handed, HandoverKey
from mqd.queue.shared import FleetState

__all__ = [
    "AcceptError",
    "Bounce",
    "EntryBusy",
    "EntryState",
    "Handed",
    "HandoverKey",
    "Incoming",
    "Lease",
    "LeaseLost",
    "Listed",
    "QueueCounts",
    "QueueStore",
    "Refused",
    "UnknownEntry",
]


class LeaseLost(QueueError):
    """The lease on an entry is gone (revoked by an administrator, or expired and taken by
    another node): its holder must neither send the message nor write the entry."""


class AcceptError(QueueError):
    """Part of a batch could not be queued (the disk is full, the store is unreachable): those
    in ``accepted`` were, the others were not and stay with the caller."""

    def __init__(self, message: str, accepted: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.accepted = list(accepted)


class EntryBusy(QueueError):
    """The entry is being delivered right now: it cannot be deleted or bounced this moment."""


class UnknownEntry(QueueError):
    """No entry has this id, or the id prefix names several (the message says which)."""


class EntryState(StrEnum):
    ACTIVE = "active"  # leased: being delivered
    WAITING = "waiting"  # never attempted
    DEFERRED = "deferred"  # attempted, waiting for its next attempt
    HELD = "held"  # held by the administrator
    SCHEDULED = "scheduled"  # never attempted, to go later (X-Mqd-Send-At)


@dataclass(frozen=True, slots=True)
class Lease:
    """An entry given to one holder until it saves, completes, fails or releases it."""

    entry: QueueEntry
    #: The fencing token: every write of the holder names it.
    token: int
    #: The node holding it.
    node: str


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message intake accepted: its new entry and its bytes."""

    entry: QueueEntry
    body: bytes
    #: The claimed file holding ``body``, in intake's node-local claim area: a store may take
    #: it over (rename it) rather than write ``body``. Intake removes it if it is still there
    #: once ``accept`` returned.
    file: str | None = None
    #: The producer's own name for it (queued once per key: see the module docstring).
    key: HandoverKey | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """A claimed file intake refused (unreadable, malformed, sender not allowed)."""

    entry_id: str
    record: FailureRecord
    #: Its bytes; None when it could not be read (a FIFO, a symlink, too large).
    body: bytes | None = None
    #: The claimed file, as for ``Incoming.file``; a store that cannot take it leaves it there
    #: and says where in the failed record.
    file: str | None = None


@dataclass(frozen=True, slots=True)
class Bounce:
    """A delivery status notification to queue with the bounced entry's update."""

    entry: QueueEntry
    body: bytes


@dataclass(frozen=True, slots=True)
class Listed:
    """An entry as administration sees it."""

    entry: QueueEntry
    state: EntryState
    #: The node that holds its lease (None when it is not leased).
    node: str | None = None


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """The queue in numbers, for ``mqd status``, the API and the metrics."""

    by_state: Mapping[EntryState, int]
    #: Bytes of every queued message.
    size: int
    #: When the oldest queued message, and the oldest not held, were accepted.
    oldest: float | None
    oldest_unheld: float | None
    #: Queued entries by relay (each entry counted for every relay of its route).
    by_relay: Mapping[str, int] = field(default_factory=dict)
    #: Entries the store has not read into memory yet (a file store's backlog), included above,
    #: by their source (not routed yet: counted in ``by_relay`` by no relay).
    not_read: int = 0
    unread_by_source: Mapping[str, int] = field(default_factory=dict)
    #: Entries due now (not held, not leased): what a ``--once`` run has to deliver.
    due: int = 0
    #: Entries that went out, or may have, when a node died with them ("dispatching" when
    #: their lease was taken over): the at-least-once window, counted since the store opened.
    redispatched: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


class QueueStore(abc.ABC):
    """The queue: see the module docstring for the contract."""

    #: This node's name (the file store's is its queue directory's).
    node: str
    #: Where messages the queue gave up on are kept, with their reasons.
    failed: FailedFolder
    #: How often a holder must ``renew`` its leases (None: they never expire, as in a store
    #: that lives in one process: its leases end with it).
    lease_renewal: float | None = None
    #: Whether a lease costs enough per call (a round trip, an index scan) that the scheduler
    #: should take them in larger batches while the queue has a backlog.
    leases_in_batches: bool = False

    # -- lifecycle --------------------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> list[str]:
        """Take the store for this node and recover it; returns what an operator should hear
        about (one line each). Raises QueueError (QueueLockedError when another process holds a
        store only one may hold)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and let go of the store."""

    @abc.abstractmethod
    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (on the event loop, cheaply) whenever an entry may be due sooner than
        ``next_due`` said: accepted, released, retried, a bounce queued."""

    # -- intake -----------------------------------------------------------------------------------

    @abc.abstractmethod
    async def accept(self, batch: Sequence[Incoming]) -> dict[str, Handed]:
        """Queue ``batch``: due now. Idempotent on the entry ids. Returns the items not queued
        because their key was handed over before ({entry id: the first hand-over}). Raises
        AcceptError (naming those that were queued) when the store cannot take them all."""

    @abc.abstractmethod
    async def refuse(self, batch: Sequence[Refused]) -> None:
        """Put refused files into the failed folder with their reasons. Raises OSError (or
        QueueError) when the folder cannot be written; nothing is lost then (the files stay)."""

    # -- the schedule -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def lease(self, limit: int) -> list[Lease]:
        """Up to ``limit`` entries due now (not held, not leased), oldest due first, leased to
        this node."""

    @abc.abstractmethod
    async def lease_ids(self, ids: Sequence[str]) -> list[Lease]:
        """Lease these entries whatever their schedule (an administrator acts on them). Raises
        UnknownEntry for an id not queued, EntryBusy for one leased by anyone."""

    async def renew(self, leases: Sequence[Lease]) -> None:
        """Keep ``leases`` from expiring while their entries are being delivered (every
        ``lease_renewal`` seconds). A lease already lost is left out silently: its holder
        learns it at its next fenced write."""
        return None

    @abc.abstractmethod
    async def next_due(self) -> float | None:
        """When the next unleased, unheld entry is due (a past time: now); None when none is
        queued."""

    @abc.abstractmethod
    async def body(self, entry: QueueEntry) -> bytes:
        """The message bytes of ``entry``, as accepted."""

    def where(self, entry: QueueEntry) -> str | None:
        """Where ``entry``'s message is kept, for a person to look at (a file path), if
        anywhere a person could."""
        return None

    @abc.abstractmethod
    async def dispatching(self, lease: Lease) -> None:
        """Mark ``lease`` as being handed to a relay now (durably where a node's death could
        hand the entry to another). Raises LeaseLost when the lease was revoked."""

    @abc.abstractmethod
    async def checkpoint(self, lease: Lease, entry: QueueEntry) -> None:
        """Write ``entry``'s state durably and keep the lease (before a bounce is queued, so that
        a crash in between finds the failures it is for). LeaseLost when the lease is gone."""

    @abc.abstractmethod
    async def save(self, lease: Lease, entry: QueueEntry, *, bounce: Bounce | None = None) -> None:
        """``entry`` stays queued with this state (``next_attempt_at`` says when); ends the lease.
        A hold or retry asked for meanwhile applies to it."""

    @abc.abstractmethod
    async def complete(self, lease: Lease, entry: QueueEntry) -> None:
        """Every recipient of ``entry`` is delivered: it leaves the queue."""

    @abc.abstractmethod
    async def fail(
        self,
        lease: Lease,
        entry: QueueEntry,
        record: FailureRecord,
        *,
        bounce: Bounce | None = None,
    ) -> None:
        """``entry`` is finished with failures: it moves to the failed folder with ``record``."""

    @abc.abstractmethod
    async def release(self, lease: Lease, *, not_before: float | None = None) -> None:
        """Give ``lease`` back without a change (no attempt counted); due again at
        ``not_before`` when given, else as it was. A revoked lease is released silently."""

    async def give_back(self, leases: Sequence[Lease]) -> None:
        """Give back leases whose delivery's outcome could not be written (the store was out
        of reach): due again now; one marked dispatching may have gone out, and is counted
        so (a store with such marks says so)."""
        for lease in leases:
            await self.release(lease)

    # -- administration ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def entries(self) -> list[Listed]:
        """Every queued entry, oldest first (entries not read yet are read for it, not kept)."""

    @abc.abstractmethod
    async def find(self, wanted: Sequence[str]) -> dict[str, str]:
        """The full ids of ``wanted`` (full ids or unique starts of ids), as {given: id}, for
        those in this queue. Raises UnknownEntry when a start names several."""

    @abc.abstractmethod
    async def get(self, entry_id: str) -> Listed:
        """One entry by its full id; UnknownEntry when it is not queued."""

    @abc.abstractmethod
    async def hold(self, ids: Sequence[str]) -> list[str]:
        """Keep these from being attempted until released (durably); returns the ids held."""

    @abc.abstractmethod
    async def unhold(self, ids: Sequence[str] | None) -> list[str]:
        """Release held entries (None: every held one), due now; returns the ids released."""

    @abc.abstractmethod
    async def retry(self, ids: Sequence[str] | None, *, relay: str | None = None) -> list[str]:
        """Make entries due now (None: every one, or those routed through ``relay``); held
        ones stay held. Returns the ids made due."""

    @abc.abstractmethod
    async def delete(self, ids: Sequence[str]) -> list[QueueEntry]:
        """Remove entries for good (no delivery, no bounce). Raises EntryBusy, and removes
        nothing, when one of them is being dispatched."""

    @abc.abstractmethod
    async def counts(self) -> QueueCounts:
        """The queue in numbers."""

    @abc.abstractmethod
    async def queued(self) -> int:
        """How many entries are queued (cheap: for a status line)."""

    # -- what the fleet shares --------------------------------------------------------------------

    def fleet(self) -> FleetState | None:
        """The counts and the suppression list shared by every node of this queue (an open
        store's); None for a store of one node: the guards keep them in the small state."""
        return None

    # -- a node's small state ---------------------------------------------------------------------

    @abc.abstractmethod
    async def load_state(self, name: str) -> bytes | None:
        """A small blob saved with ``save_state`` (e.g. the relays' quota counts), or None."""

    @abc.abstractmethod
    async def save_state(self, name: str, data: bytes) -> None:
        """Keep ``data`` under ``name`` (durably; the last write wins)."""
