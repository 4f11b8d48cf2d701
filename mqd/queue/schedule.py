"""What is due, leased and held, in memory: the schedule of a store that lives in one process.

The file store and the memory store keep their entries here: a heap of due times, the leases
given out (with fencing tokens), and what administrators asked for while an entry was leased (a
hold, a retry, a delete), applied when its holder gives it back. Writing anything durably is the
store's business; this module only decides.

A clock that jumps back is noticed (``CLOCK_SLACK``): times set in its future are re-planned from
the new now, so that the queue does not stall for the size of the jump.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.queue.entry import QueueEntry
from mqd.queue.store import EntryBusy, EntryState, Lease, LeaseLost, QueueCounts, UnknownEntry

__all__ = ["CLOCK_SLACK", "Schedule", "ambiguous", "unknown"]

log = logging.getLogger("mqd.daemon")

#: A clock that moved back by more than this is treated as a jump back.
CLOCK_SLACK = 5.0


def unknown(wanted: str) -> UnknownEntry:
    return UnknownEntry(f"no message {wanted!r} in the queue ('mqd queue list' shows the ids)")


def ambiguous(wanted: str, count: int) -> UnknownEntry:
    return UnknownEntry(f"{wanted!r} is the start of {count} queue ids: give more of it")


@dataclass(slots=True)
class _Held:
    """What a lease holder does not know yet."""

    token: int
    dispatching: bool = False
    #: An administrator asked for a hold / a retry / a deletion while it was leased.
    hold: bool = False
    retry: bool = False
    revoked: bool = False


class Schedule:
    """Entries by id, due times, leases. Every method is synchronous and cheap."""

    def __init__(self, node: str, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.node = node
        self.clock = clock
        self.entries: dict[str, QueueEntry] = {}
        self._heap: list[tuple[float, str]] = []
        self._leases: dict[str, _Held] = {}
        self._tokens = itertools.count(1)
        self._last_now = clock.time()
        self._wake: list[Callable[[], None]] = []

    # -- entries ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self.entries

    def __iter__(self) -> Iterator[QueueEntry]:
        return iter(list(self.entries.values()))

    def subscribe(self, wake: Callable[[], None]) -> None:
        self._wake.append(wake)

    def wake(self) -> None:
        for wake in self._wake:
            wake()

    def add(self, entry: QueueEntry) -> None:
        """Put ``entry`` on the schedule at its ``next_attempt_at`` (held ones wait unlisted)."""
        self._undo_jump_back(entry, self.clock.time())
        self.entries[entry.id] = entry
        if not entry.held:
            heapq.heappush(self._heap, (entry.next_attempt_at, entry.id))
            self.wake()

    def remove(self, entry_id: str) -> QueueEntry | None:
        self._leases.pop(entry_id, None)
        return self.entries.pop(entry_id, None)

    def state(self, entry: QueueEntry) -> EntryState:
        if entry.id in self._leases:
            return EntryState.ACTIVE
        if entry.held:
            return EntryState.HELD
        if entry.attempts:
            return EntryState.DEFERRED
        if entry.scheduled(self.clock.time()):
            return EntryState.SCHEDULED
        return EntryState.WAITING

    def holder(self, entry_id: str) -> str | None:
        return self.node if entry_id in self._leases else None

    # -- leases -----------------------------------------------------------------------------------

    def due(self, limit: int) -> list[Lease]:
        """Lease up to ``limit`` entries due now, oldest due first."""
        now = self._now()
        leases: list[Lease] = []
        heap = self._heap
        while heap and len(leases) < limit:
            due, entry_id = heap[0]
            entry = self.entries.get(entry_id)
            if (
                entry is None
                or entry.next_attempt_at != due
                or entry.held
                or entry_id in self._leases
            ):
                heapq.heappop(heap)  # stale: rescheduled, finished, held or leased since
                continue
            if due > now:
                break
            heapq.heappop(heap)
            leases.append(self._lease(entry))
        return leases

    def lease_ids(self, ids: Iterable[str]) -> list[Lease]:
        entries = []
        for entry_id in ids:
            entry = self.entries.get(entry_id)
            if entry is None:
                raise unknown(entry_id)
            if entry_id in self._leases:
                raise EntryBusy(
                    f"{entry_id} is being delivered right now; try again in a moment "
                    "(or 'mqd queue hold' it first)"
                )
            entries.append(entry)
        return [self._lease(entry) for entry in entries]

    def _lease(self, entry: QueueEntry) -> Lease:
        token = next(self._tokens)
        self._leases[entry.id] = _Held(token)
        return Lease(entry, token, self.node)

    def next_due(self) -> float | None:
        """The earliest due time of an entry not leased and not held (stale heap items are
        dropped on the way)."""
        heap = self._heap
        while heap:
            due, entry_id = heap[0]
            entry = self.entries.get(entry_id)
            if (
                entry is not None
                and entry.next_attempt_at == due
                and not entry.held
                and entry_id not in self._leases
            ):
                return due
            heapq.heappop(heap)
        return None

    def check(self, lease: Lease) -> _Held:
        """The lease's state; LeaseLost when it was revoked or is not current."""
        held = self._leases.get(lease.entry.id)
        if held is None or held.token != lease.token or held.revoked:
            raise LeaseLost(f"{lease.entry.id}: its lease was revoked (deleted meanwhile?)")
        return held

    def dispatching(self, lease: Lease) -> None:
        self.check(lease).dispatching = True

    def settle(self, lease: Lease, entry: QueueEntry) -> None:
        """Apply to ``entry`` what administrators asked while it was leased (a hold, a retry),
        before its holder writes it. LeaseLost when the lease was revoked."""
        held = self.check(lease)
        if held.hold:
            entry.held = True
        if held.retry:
            entry.next_attempt_at = min(entry.next_attempt_at, self.clock.time())

    def end(self, lease: Lease, entry: QueueEntry, *, keep: bool) -> None:
        """End ``lease`` (``settle`` first) and, with ``keep``, put ``entry`` back on the
        schedule. LeaseLost when it was revoked."""
        self.settle(lease, entry)
        del self._leases[entry.id]
        if keep:
            self.entries[entry.id] = entry
            if not entry.held:
                heapq.heappush(self._heap, (entry.next_attempt_at, entry.id))
                self.wake()
        else:
            self.entries.pop(entry.id, None)

    def give_back(self, lease: Lease, not_before: float | None) -> None:
        """``release``: unchanged, due at ``not_before`` when given. Silent for a revoked lease."""
        held = self._leases.get(lease.entry.id)
        if held is None or held.token != lease.token:
            return
        entry = lease.entry
        if held.revoked:
            del self._leases[entry.id]
            return
        if not_before is not None and not held.retry:
            entry.next_attempt_at = not_before
        self.end(lease, entry, keep=True)

    # -- administration ---------------------------------------------------------------------------

    def matching(self, wanted: str) -> list[str]:
        if wanted in self.entries:
            return [wanted]
        if not wanted:
            return []
        return [entry_id for entry_id in self.entries if entry_id.startswith(wanted)]

    def hold(self, entry: QueueEntry) -> bool:
        """Hold ``entry``; False when it is leased (the hold then applies when it comes back)."""
        held = self._leases.get(entry.id)
        if held is not None:
            held.hold = True
            return False
        entry.held = True
        return True

    def unhold(self, entry: QueueEntry) -> None:
        """Released: due now, or at its send-later time if that is still ahead."""
        entry.held = False
        now = self.clock.time()
        later = entry.send_at if entry.send_at is not None and not entry.attempts else None
        entry.next_attempt_at = max(now, later) if later is not None else now
        self.add(entry)

    def retry(self, entry: QueueEntry) -> bool:
        """Make ``entry`` due now; False when it is leased (due as soon as it comes back)."""
        held = self._leases.get(entry.id)
        if held is not None:
            held.retry = True
            return False
        now = entry.next_attempt_at = self.clock.time()
        if entry.send_at is not None and entry.send_at > now:
            entry.send_at = now  # brought forward: its lifetime counts from now
        self.add(entry)
        return True

    def check_deletable(self, entries: Iterable[QueueEntry]) -> None:
        busy = [e.id for e in entries if (h := self._leases.get(e.id)) and h.dispatching]
        if busy:
            raise EntryBusy(
                f"cannot delete {', '.join(busy)}: being delivered right now; try again in a "
                "moment (or 'mqd queue hold' it first)"
            )

    def delete(self, entry: QueueEntry) -> None:
        """Forget ``entry``; a lease on it is revoked (its holder gets LeaseLost)."""
        held = self._leases.get(entry.id)
        if held is not None:
            held.revoked = True
        self.entries.pop(entry.id, None)

    def counts(self) -> QueueCounts:
        """The entries held here in numbers (a store adds what it keeps elsewhere)."""
        by_state = dict.fromkeys(EntryState, 0)
        by_relay: dict[str, int] = {}
        now = self.clock.time()
        due = size = 0
        oldest: float | None = None
        unheld: float | None = None
        for entry in self.entries.values():
            state = self.state(entry)
            by_state[state] += 1
            if state is not EntryState.ACTIVE and not entry.held and entry.next_attempt_at <= now:
                due += 1
            size += entry.size
            oldest = entry.created_at if oldest is None else min(oldest, entry.created_at)
            if not entry.held and state is not EntryState.SCHEDULED:  # (its wait is planned)
                unheld = entry.created_at if unheld is None else min(unheld, entry.created_at)
            for relay in entry.relays:
                by_relay[relay] = by_relay.get(relay, 0) + 1
        return QueueCounts(by_state, size, oldest, unheld, by_relay, due=due)

    # -- the clock --------------------------------------------------------------------------------

    def _now(self) -> float:
        now = self.clock.time()
        if now < self._last_now - CLOCK_SLACK:
            self._replan(now)
        self._last_now = now
        return now

    def _replan(self, now: float) -> None:
        """Re-plan every entry whose times lie in the future of a clock that jumped back."""
        log.warning("the system clock went back; re-planning the schedule from the new time")
        self._heap = []
        for entry in self.entries.values():
            self._undo_jump_back(entry, now)
            if not entry.held:
                heapq.heappush(self._heap, (entry.next_attempt_at, entry.id))

    @staticmethod
    def _undo_jump_back(entry: QueueEntry, now: float) -> None:
        """Times in the future of ``now`` that were set in the past mean the clock went back
        (or a state file came from a machine whose clock was ahead). The planned wait is kept,
        counted from now: a deferred entry keeps its backoff interval, a new one is due now."""
        if entry.last_attempt_at is not None and entry.last_attempt_at > now + CLOCK_SLACK:
            wait = max(0.0, entry.next_attempt_at - entry.last_attempt_at)
            entry.last_attempt_at = now
            entry.next_attempt_at = now + wait
        elif entry.last_attempt_at is None and entry.created_at > now + CLOCK_SLACK:
            entry.next_attempt_at = min(entry.next_attempt_at, now)
