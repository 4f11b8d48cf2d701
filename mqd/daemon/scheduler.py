"""The delivery loop: lease what the store says is due, deliver it with bounded concurrency.

The store owns the schedule; this loop only asks it for up to ``queue.concurrency`` leases at a
time (from a store whose leases cost per call, half as many more, kept for the next free slots) and
sleeps until the next entry is due, the store says something changed, or a delivery ends. A
graceful stop leases nothing more, gives deliveries in flight ``shutdown_timeout`` seconds, then
cancels them: a cancelled attempt is not counted, and its entry is given back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.delivery.deliverer import Deliverer
from mqd.errors import QueueError, QueueUnavailableError
from mqd.faults import Fault
from mqd.queue.store import Lease, QueueStore

__all__ = ["MAX_SLEEP", "Scheduler"]

#: Seconds after a hurry's cancellations before those a delivery lost are made again.
HURRY_AGAIN = 0.2

log = logging.getLogger("mqd.daemon")

#: The loop asks the store at least this often, so that a clock jump is noticed.
MAX_SLEEP = 30.0


class Scheduler:
    def __init__(
        self,
        store: QueueStore,
        deliverer: Deliverer,
        *,
        concurrency: int,
        delivers: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """``delivers`` False: an intake node (``queue.role = "intake"``), which leases nothing
        and leaves the shared queue to the delivery nodes."""
        self.store = store
        self.delivers = delivers
        self.deliverer = deliverer
        self.concurrency = concurrency
        self.clock = clock
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._leases: dict[str, Lease] = {}
        #: How many leases to take ahead of a free slot: from a store with a cost per call (a
        #: database's round trip and index scan), a lease asks for this many more than the free
        #: slots, and the next ones to end start those kept without asking. They are leased, not
        #: dispatching (a crash sends none of them), renewed with the rest, released at a stop.
        self._lease_ahead = concurrency // 2 if store.leases_in_batches else 0
        self._ahead: collections.deque[Lease] = collections.deque()
        #: Leases whose outcome (or release) could not be written: the database was down.
        self._stranded: list[Lease] = []
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        #: How many passes (lease what is due, then look when the next is) have begun, and
        #: whether the loop is asleep after one: a pass begun after a change and then asleep
        #: has seen the change (what a test waits for before it asserts that nothing happened).
        self.passes = 0
        self.asleep = False
        #: Set while outcomes cannot be written (a full disk): said once, cleared by success.
        self.fault = Fault("delivery", log, clock=clock, verb="is failing")
        #: Set while the queue's database cannot be reached (a PostgreSQL queue): leasing
        #: pauses, retried with backoff, said once in the log and shown by ``mqd status``.
        self.database = Fault("the queue database", log, clock=clock, most=15.0, verb="is down")
        store.subscribe(self._wake.set)

    @property
    def in_flight(self) -> set[str]:
        """Ids of the entries being delivered right now."""
        return set(self._in_flight)

    def tasks(self) -> list[asyncio.Task[None]]:
        """The deliveries in flight (a reload closes the old relays once they end)."""
        return list(self._in_flight.values())

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Lease nothing more; ``run`` returns."""
        self._stopping.set()
        self._wake.set()

    def hurry(self) -> None:
        """Cancel the deliveries in flight now (a second stop request), and again a moment
        later those still running: on Python 3.11 a cancellation that lands as an inner
        ``wait_for`` completes is lost (aiosmtplib's connect and commands use one), and such a
        delivery would run on for as long as the server takes."""
        running = [task for task in self._in_flight.values() if not task.done()]
        for task in running:
            task.cancel()
        if running:
            asyncio.get_running_loop().call_later(HURRY_AGAIN, self._hurry_again, running)

    def _hurry_again(self, tasks: list[asyncio.Task[None]]) -> None:
        still = [task for task in tasks if not task.done()]
        for task in still:
            log.debug(
                "%s still running after its cancellation: cancelling it again", task.get_name()
            )
            task.cancel()
        if still:
            asyncio.get_running_loop().call_later(HURRY_AGAIN, self._hurry_again, still)

    async def run(self, *, once: asyncio.Event | None = None) -> None:
        """Deliver until stopped; with ``once`` (set when intake has nothing more to take),
        until nothing is due now and nothing is in flight. An intake node only waits: until
        stopped, or with ``once`` until intake is done."""
        if not self.delivers:
            await self._stopping.wait() if once is None else await _first(self._stopping, once)
            return
        renewing = None
        if self.store.lease_renewal is not None:
            renewing = asyncio.create_task(self._renew(self.store.lease_renewal), name="mqd-renew")
        try:
            await self._lease_and_start(once)
        finally:
            await asyncio.shield(self._release_ahead())
            if renewing is not None:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing

    async def _renew(self, every: float) -> None:
        """Renew the leases in flight (a store whose leases expire: another node takes the
        entries of a node that stops renewing, that is, one that died)."""
        while True:
            await self.clock.sleep(every)
            leases = list(self._leases.values())
            if leases:
                try:
                    await self.store.renew(leases)
                except Exception as exc:  # said once; the fenced writes will tell the rest
                    self._failed(exc, f"cannot renew leases ({exc})")

    def _failed(self, exc: BaseException, why: str) -> None:
        """A store call failed: the database fault when it is out of reach, else delivery's."""
        if isinstance(exc, QueueUnavailableError):
            self.database.failed(str(exc), kind="unreachable")
        else:
            self.fault.failed(why)

    async def _lease_and_start(self, once: asyncio.Event | None) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            self.passes += 1
            # Intake done and nothing in flight before the store is asked, not while: a store
            # that answers over the network may answer from before intake's last batch or a
            # delivery's outcome (a bounce); those wake the next pass, which looks again.
            settled = once is not None and once.is_set() and not self._in_flight
            settled = settled and not self._ahead
            room = self.concurrency - len(self._in_flight)
            while room > 0 and self._ahead:
                self._start(self._ahead.popleft())
                room -= 1
            asked = room > 0 or settled  # the store answers this pass (not only kept leases)
            try:
                if room > 0:
                    leased = await self.store.lease(room + self._lease_ahead)
                    for lease in leased[:room]:
                        self._start(lease)
                    for lease in leased[room:]:
                        self._ahead.append(lease)
                        self._leases[lease.entry.id] = lease
                    room = self.concurrency - len(self._in_flight)
                # Full, it sleeps until a delivery ends whenever the next is due: not asked (a
                # round trip to a database store, per message in a drain).
                due = await self.store.next_due() if room > 0 or settled else None
            except QueueUnavailableError as exc:  # the database is down: wait, then again
                log.debug("leasing failed: %r (cause %r)", exc, exc.__cause__)
                self.database.failed(str(exc), kind="unreachable")
                await self.clock.wait(self._stopping, self.database.retry_in())
                continue
            if self.database.active and asked:  # leases kept ahead tell nothing of the store
                self.database.cleared()
            if self._stranded:
                await self._give_back()
            # Now after the store answered: an entry accepted while it was asked (a store that
            # answers over the network) is not taken for one due in the future.
            now = self.clock.time()
            if settled and not self._in_flight:
                if due is None or due > now:
                    return
                continue
            timeout = MAX_SLEEP
            if room > 0 and due is not None:
                timeout = min(MAX_SLEEP, max(0.0, due - now))
            self.asleep = True
            try:
                await self.clock.wait(self._wake, timeout)
            finally:
                self.asleep = False

    async def _release_ahead(self) -> None:
        """At a stop: the leases taken ahead are due again at once, for this node's next start
        or another node (a lease that cannot be released expires)."""
        while self._ahead:
            lease = self._ahead.popleft()
            self._leases.pop(lease.entry.id, None)
            with contextlib.suppress(Exception):
                await self.store.release(lease)

    async def _give_back(self) -> None:
        """The leases whose outcome could not be written while the database was down: due
        again now rather than when they expire."""
        stranded = [lease for lease in self._stranded if lease.entry.id not in self._in_flight]
        try:
            await self.store.give_back(stranded)
        except QueueError as exc:
            self._failed(exc, f"cannot give entries back ({exc})")
        else:
            self._stranded = [lease for lease in self._stranded if lease not in stranded]

    def _start(self, lease: Lease) -> None:
        entry_id = lease.entry.id
        task = asyncio.create_task(self._deliver(lease), name=f"mqd-deliver-{entry_id}")
        self._in_flight[entry_id] = task
        self._leases[entry_id] = lease

    async def _deliver(self, lease: Lease) -> None:
        entry = lease.entry
        try:
            await self.deliverer.attempt(lease)
        except asyncio.CancelledError:
            log.info("%s delivery cancelled by shutdown; it is retried after the restart", entry.id)
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release(lease))
            raise
        except Exception as exc:
            # The store failed (disk full, I/O error): the message stays where it was, and is
            # tried again on its backoff. Said once, not once per message.
            if not isinstance(exc, OSError | QueueError):  # a bug: its traceback, loudly
                log.exception("%s could not be processed; keeping it", entry.id)
            self._failed(exc, f"messages could not be processed, keeping them ({exc})")
            delay = self.deliverer.backoff.delay(max(1, entry.attempts))
            if isinstance(exc, QueueUnavailableError):  # given back when it is there again
                self._stranded.append(lease)
                return
            try:
                await self.store.release(lease, not_before=self.clock.time() + delay)
            except QueueUnavailableError:
                self._stranded.append(lease)
            except Exception:  # noqa: S110 - the fault is said; the lease expires
                pass
        else:
            if self.fault.active:
                self.fault.cleared()
        finally:
            self._in_flight.pop(entry.id, None)
            self._leases.pop(entry.id, None)
            self._wake.set()

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109
        """Give the deliveries in flight ``timeout`` seconds, then cancel those left."""
        if not self._in_flight:
            return
        tasks = list(self._in_flight.values())
        log.info("waiting up to %gs for %d delivery(ies) in flight", timeout, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


async def _first(*events: asyncio.Event) -> None:
    """Until one of ``events`` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
