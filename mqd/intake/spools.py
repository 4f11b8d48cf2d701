"""The spool directories as an intake source: watched, rescanned, claimed a batch at a time.

Files are taken as soon as the watcher reports them, and every spool is rescanned each
``queue.scan_interval`` whatever the traffic, so that a missed event delays a file, never strands
it. Before anything new, the files still in the claim area (a crash or a fault came between
their claim and the store) are taken again. While the store or the failed folder cannot take
what is claimed, intake pauses (``Intake.fault``) and tries again on its backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.config.schema import Config
from mqd.intake.pipeline import Intake
from mqd.intake.spool import Spool, is_spool_name
from mqd.intake.watch import Watcher, make_watcher

__all__ = ["SpoolIntake"]

log = logging.getLogger("mqd.daemon")


class SpoolIntake:
    def __init__(
        self,
        config: Config,
        intake: Intake,
        node: str,
        *,
        once: bool = False,
        on_idle: Callable[[], None] = lambda: None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        #: Called each time nothing is left to take (the scheduler's ``--once`` then looks).
        self.on_idle = on_idle
        self.intake = intake
        self.node = node
        self.once = once
        self.clock = clock
        self.spools: list[Spool] = []
        #: Set while nothing is left to take (the scheduler's ``--once`` waits for it).
        self.idle = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        #: Ends a pause early: stopping, or the queue made room (a message left it).
        self._resume = asyncio.Event()
        self._pending: dict[int, set[str]] = {}
        self._rescan: set[int] = set()
        self._waiting: set[int] = set()
        self._watcher: Watcher | None = None

    # -- set-up -----------------------------------------------------------------------------------

    def open(self, config: Config) -> None:
        """(Re)make the spools of ``config``, create their directories, rescan them all and
        take what waits in their claim areas; the watcher follows when the paths changed."""
        old = [spool.path for spool in self.spools]
        self.config = config
        self.intake.config = config
        claim_dir = config.queue.own_dir / "claim"
        self.spools = [Spool(spool, self.node, claim_dir) for spool in config.spools]
        for spool in self.spools:
            spool.prepare()
            if not os.access(spool.path, os.W_OK | os.X_OK):
                log.warning(
                    "the spool %s cannot be written by this user or is read-only: mqd cannot "
                    "claim files from it (each claim is a rename out of it); fix its "
                    "permissions or mount",
                    spool.path,
                )
        self._pending.clear()
        every = set(range(len(self.spools)))
        self._rescan, self._waiting = set(every), set(every)
        if self._watcher is not None and [s.path for s in self.spools] != old:
            watcher, self._watcher = self._watcher, None
            asyncio.get_running_loop().create_task(watcher.aclose(), name="mqd-close-watcher")
            self.watch()
        self._wake.set()

    def watch(self) -> None:
        try:
            watcher = make_watcher(self.config.queue.watch)
            watcher.start([spool.path for spool in self.spools], self._changed)
        except (OSError, ImportError) as exc:
            log.warning(
                "cannot watch the spools (%s); rescanning every %gs instead",
                exc,
                self.config.queue.scan_interval,
            )
            return
        self._watcher = watcher
        log.debug("watching spools with %s", watcher.name)

    def _changed(self, index: int, name: str | None) -> None:
        if name is None:
            self._rescan.add(index)
        elif is_spool_name(name):
            self._pending.setdefault(index, set()).add(name)
        else:
            return
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._resume.set()

    def made_room(self) -> None:
        """A message left the queue: a pause for a full queue tries again now rather than at
        its backoff's next try (which a long outage stretched to a minute)."""
        if self.intake.fault.active:
            self._resume.set()

    async def aclose(self) -> None:
        await self.intake.settle()  # the last batch's fsyncs
        if self._watcher is not None:
            await self._watcher.aclose()
            self._watcher = None

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Take files until stopped (with ``once``: until the spools are empty)."""
        interval = self.config.queue.scan_interval
        last_full_scan = self.clock.monotonic()
        fault = self.intake.fault
        # (a method, not the property: a type checker would take it for unchanged below)
        while not self._stopping.is_set():
            if self._paused():
                # Paused: the claimed files wait in the claim area; try them again first.
                self._idle()
                if self.once:
                    return
                self._wake.clear()
                self._resume.clear()
                await self.clock.wait(self._resume, fault.retry_in())
                if self._stopping.is_set():
                    return
                # The retry: what waits in the claim areas first; when all of it went in (or
                # nothing waited: an fsync that failed), the fault is over.
                self._waiting.update(range(len(self.spools)))
                if await self._take_waiting():
                    fault.cleared()
                continue
            refusing = self.intake.refusing
            if refusing.active and refusing.retry_in() <= 0:
                # Refused files wait in the claim areas for the failed folder: try them again.
                self._waiting.update(range(len(self.spools)))
            if self.clock.monotonic() - last_full_scan >= interval:
                self._rescan.update(range(len(self.spools)))
            if len(self._rescan) == len(self.spools):
                last_full_scan = self.clock.monotonic()
            await self._take_waiting()
            if self._paused():
                continue
            await self._take_new()
            if self._paused() or self._pending or self._rescan:
                continue
            self._idle()
            if self.once:
                return
            self._wake.clear()
            wait = max(0.0, last_full_scan + interval - self.clock.monotonic())
            if refusing.active:
                wait = min(wait, refusing.retry_in())
            await self.clock.wait(self._wake, wait)

    def _paused(self) -> bool:
        return self.intake.fault.active

    def _idle(self) -> None:
        self.idle.set()
        self.on_idle()

    async def _take_waiting(self) -> bool:
        """Take what waits in the claim areas of the spools marked for it; True when all of it
        went in (a failure leaves the rest, and that spool marked, for the next try)."""
        waiting, self._waiting = self._waiting, set()
        failures = self.intake.fault.failures
        complete = True
        for index in sorted(waiting):
            if self._stopping.is_set() or not complete:
                self._waiting.add(index)
                continue
            spool = self.spools[index]
            try:
                taken = await self.intake.take_waiting(spool)
            except Exception as exc:
                log.exception("cannot take the files claimed from %s", spool.path)
                self.intake.fault.failed(f"cannot take the files claimed from {spool.path}: {exc}")
            else:
                if taken:
                    log.info("took %d claimed message(s) of %s again", taken, spool.path)
            if self.intake.fault.failures != failures:  # this try failed again
                self._waiting.add(index)
                complete = False
        return complete

    async def _take_new(self) -> None:
        rescan, self._rescan = self._rescan, set()
        named, self._pending = self._pending, {}
        for index in sorted(rescan | set(named)):
            spool = self.spools[index]
            if index in rescan:
                try:
                    found = await asyncio.to_thread(spool.scan)
                except OSError as exc:  # e.g. a spool made unreadable: keep delivering
                    log.error("cannot list the spool %s: %s", spool.path, exc)
                    continue
                names = sorted(set(found) | named.get(index, set()))
            else:
                names = sorted(named[index])
            if not names or self._stopping.is_set():
                continue
            self.idle.clear()
            try:
                await self.intake.take_names(spool, names)
            except Exception:
                log.exception("intake from %s failed; retrying at the next scan", spool.path)
            if self.intake.fault.active:
                self._rescan.add(index)
                return
