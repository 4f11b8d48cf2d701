"""The delivery loop: lease what the store says is due, deliver it with bounded concurrency.

The store owns the schedule; this loop only asks it for up to ``queue.concurrency`` leases at a
time and sleeps until the next entry is due, the store says something changed, or a delivery
ends. A graceful stop leases nothing more, gives deliveries in flight ``shutdown_timeout``
seconds, then cancels them: a cancelled attempt is not counted, and its entry is given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.delivery.deliverer import Deliverer
from mqd.errors import QueueError
from mqd.faults import Fault
from mqd.queue.store import Lease, QueueStore

__all__ = ["MAX_SLEEP", "Scheduler"]

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
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.deliverer = deliverer
        self.concurrency = concurrency
        self.clock = clock
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._leases: dict[str, Lease] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        #: How many passes (lease what is due, then look when the next is) have begun, and
        #: whether the loop is asleep after one: a pass begun after a change and then asleep
        #: has seen the change (what a test waits for before it asserts that nothing happened).
        self.passes = 0
        self.asleep = False
        #: Set while outcomes cannot be written (a full disk): said once, cleared by success.
        self.fault = Fault("delivery", log, clock=clock, verb="is failing")
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
        """Cancel the deliveries in flight now (a second stop request)."""
        for task in self._in_flight.values():
            task.cancel()

    async def run(self, *, once: asyncio.Event | None = None) -> None:
        """Deliver until stopped; with ``once`` (set when intake has nothing more to take),
        until nothing is due now and nothing is in flight."""
        renewing = None
        if self.store.lease_renewal is not None:
            renewing = asyncio.create_task(self._renew(self.store.lease_renewal), name="mqd-renew")
        try:
            await self._lease_and_start(once)
        finally:
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
                    self.fault.failed(f"cannot renew leases ({exc})")

    async def _lease_and_start(self, once: asyncio.Event | None) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            self.passes += 1
            # Intake done and nothing in flight before the store is asked, not while: a store
            # that answers over the network may answer from before intake's last batch or a
            # delivery's outcome (a bounce); those wake the next pass, which looks again.
            settled = once is not None and once.is_set() and not self._in_flight
            room = self.concurrency - len(self._in_flight)
            if room > 0:
                for lease in await self.store.lease(room):
                    self._start(lease)
                room = self.concurrency - len(self._in_flight)
            due = await self.store.next_due()
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
            self.fault.failed(f"messages could not be processed, keeping them ({exc})")
            delay = self.deliverer.backoff.delay(max(1, entry.attempts))
            with contextlib.suppress(Exception):
                await self.store.release(lease, not_before=self.clock.time() + delay)
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
