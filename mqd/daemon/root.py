"""The daemon: the composition root. It builds the parts from the config and runs them.

Intake (``mqd.intake``) takes files from the spools into the queue store (``mqd.queue``); the
scheduler (``mqd.daemon.scheduler``) leases what the store says is due and hands it to delivery
(``mqd.delivery``); administration (``mqd.admin``), the HTTP server and the metrics look at the
same store. This module only wires them and runs them: it does not deliver, schedule or store.

With ``once=True`` it takes what is in the spools, delivers everything due now (bounces
included) and returns: cron-friendly, and what the tests use. Signal handlers only set flags
(``mqd.daemon.signals``); the loops then stop taking work, give in-flight deliveries
``shutdown_timeout`` seconds, and cancel the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING

import mqd.daemon.systemd as systemd
from mqd.admin.control import ControlServer
from mqd.admin.service import QueueAdmin
from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.config.schema import ROLE_WORDS, Config
from mqd.daemon.firstworker import serving_handovers, sources_handover
from mqd.daemon.reload import Reloader
from mqd.daemon.scheduler import Scheduler
from mqd.daemon.servers import Servers
from mqd.daemon.stores import open_store
from mqd.daemon.workers import WorkerPool, warn_of_retired_workers, watch_parent
from mqd.delivery.deliverer import Deliverer
from mqd.delivery.guards import Guards
from mqd.events import Event, EventKind
from mqd.faults import Paused
from mqd.intake.handover import Handover
from mqd.intake.pipeline import Intake
from mqd.intake.source import Source, SourceStatus
from mqd.intake.sources import Sources, build_sources
from mqd.intake.spools import SpoolIntake
from mqd.plugins.host import PluginHost
from mqd.relays.base import Relay
from mqd.relays.build import build_relays

if TYPE_CHECKING:
    from mqd.http.metrics import MetricsServer
    from mqd.http.server import HttpServer
    from mqd.tracing.spans import Tracing
    from mqd.tracking.tracker import Tracker

__all__ = ["Daemon"]

log = logging.getLogger("mqd.daemon")

#: Quota counts are saved this often (when they changed) and at shutdown.
QUOTA_SAVE_INTERVAL = 5.0
#: The failed folder is pruned (``queue.failed_retention``) at start-up and this often.
PRUNE_INTERVAL = 3600.0
#: Worker 1 waits this much longer than ``queue.shutdown_timeout`` for the others to stop.
WORKER_STOP_SLACK = 10.0


#: Events of a message leaving the queue: room for a paused intake.
_LEFT_THE_QUEUE = frozenset({EventKind.COMPLETED, EventKind.FAILED, EventKind.DELETED})


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        host: PluginHost | None = None,
        once: bool = False,
        shutdown_timeout: float | None = None,
        cli_args: Sequence[str] = (),
        clock: Clock = SYSTEM_CLOCK,
        tracing: Tracing | None = None,
    ) -> None:
        """``tracing``: spans to make whatever ``[tracing]`` says (tests give one exporting to
        memory); None builds them from ``[tracing]`` and the ``OTEL_*`` variables."""
        self.config = config
        self.host = host or PluginHost()
        self.once = once
        self.clock = clock
        #: None: the config's ``queue.shutdown_timeout``.
        self.shutdown_timeout = (
            shutdown_timeout if shutdown_timeout is not None else config.queue.shutdown_timeout
        )
        #: Global command-line options passed on to the other workers of ``queue.workers``.
        self.cli_args = tuple(cli_args)
        self.relays: dict[str, Relay] = build_relays(config, self.host)
        self.store = open_store(config, host=self.host, clock=clock)
        self.guards = Guards(config, clock=clock)
        self.intake = Intake(
            config, self.store, self.host, self.emit, accounts=self.guards.accounts, clock=clock
        )
        #: The sources other than the spools ([[smtpd]]): started once the queue is open.
        self.handover = Handover(
            config, self.store, self.host, self.emit, accounts=self.guards.accounts, clock=clock
        )
        self.sources = Sources(
            build_sources(config, self.host, sources_handover(config, self.handover))
        )
        self.deliverer = Deliverer(
            config, self.store, self.relays, self.host, self.emit, guards=self.guards, clock=clock
        )
        self.scheduler = Scheduler(
            self.store,
            self.deliverer,
            concurrency=config.queue.concurrency,
            delivers=config.queue.delivers,
            clock=clock,
        )
        self.spools = SpoolIntake(
            config,
            self.intake,
            self.store.node,
            once=once,
            on_idle=self.scheduler.wake,
            clock=clock,
        )
        self.admin = QueueAdmin(self, clock=clock)
        self.servers = Servers(self, tracing=tracing)
        self.reloader = Reloader(self)
        #: Workers 2..N, in worker 1 (None with one worker, and in the others).
        self.workers: WorkerPool | None = None
        self.started_at = clock.time()
        self.ready = asyncio.Event()
        self._control: ControlServer | None = None
        self._stopping = asyncio.Event()
        self._stop_requested = False
        self._background: set[asyncio.Task[object]] = set()

    # -- what the parts share ---------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        self.servers.observe(event)
        self.host.track_event(event)
        if event.kind in _LEFT_THE_QUEUE:
            self.spools.made_room()

    @property
    def tracker(self) -> Tracker | None:
        return self.servers.tracker

    @property
    def http(self) -> HttpServer | None:
        """The HTTP server (None unless [http] is enabled and the daemon runs)."""
        return self.servers.http

    @property
    def metrics(self) -> MetricsServer | None:
        """The Prometheus endpoint (None unless [metrics] is enabled and the daemon runs)."""
        return self.servers.metrics_server

    @property
    def faults(self) -> Sequence[Paused]:
        intake = self.intake
        return [
            intake.fault,
            intake.claiming,
            intake.refusing,
            self.handover.fault,
            self.scheduler.fault,
            self.scheduler.database,
            *self.servers.faults,
        ]

    def source_status(self) -> list[SourceStatus]:
        """The running sources other than the spools ([[smtpd]]): addresses and counts."""
        return self.sources.status()

    def intake_sources(self) -> list[Source]:
        """The running sources other than the spools (the HTTP server serves [[submit]]'s)."""
        return self.sources.sources if self.sources.started else []

    @property
    def in_flight(self) -> set[str]:
        """Ids of the entries being delivered right now."""
        return self.scheduler.in_flight

    # -- control ----------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking work and shut down gracefully (what SIGTERM does); asked again, cancel
        the deliveries in flight."""
        if self._stop_requested:
            self._hurry()
            return
        self._stop_requested = True
        self._begin_stop()

    def _begin_stop(self) -> None:
        self._stopping.set()
        self.scheduler.stop()
        self.spools.stop()
        if self.workers is not None:
            self.workers.stop()

    def _hurry(self) -> None:
        log.warning("second stop request: cancelling in-flight deliveries now")
        self.scheduler.hurry()
        if self.workers is not None:
            self.workers.stop()

    def _told_to_stop(self) -> None:
        """Worker 1 asked this worker to stop, or its pipe ended. Not a stop request of its own:
        the service manager's SIGTERM to every process may come too, and that one is the first
        request here, so deliveries in flight still get their ``shutdown_timeout``."""
        if not self._stopping.is_set():
            log.info("stopping: worker 1 stops")
            self._begin_stop()

    def flush(self) -> None:
        """Retry everything deferred now (what SIGUSR1 and 'mqd queue flush' do)."""
        self.spawn(self.admin.op_flush(), "flush")
        if self.workers is not None:
            self.workers.flush()

    def request_reload(self) -> None:
        """Re-read the config (what SIGHUP does); a bad one is reported and the old one kept."""
        self.spawn(self.reload(), "reload")
        if self.workers is not None:
            self.workers.reload()

    async def reload(self) -> str:
        return await self.reloader.reload()

    def spawn(self, work: Coroutine[object, object, object], what: str) -> None:
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
            work, name=f"mqd-{what}"
        )
        self._background.add(task)

        def done(task: asyncio.Task[object]) -> None:
            self._background.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("%s failed: %s", what, task.exception())

        task.add_done_callback(done)

    # -- running ----------------------------------------------------------------------------------

    async def run(self) -> None:
        notes = await self.store.open()
        try:
            for note in notes:
                log.info("recovery: %s", note)
            counts = await self.store.counts()
            if counts.total:
                log.info(
                    "recovered %d queued message(s) from %s (%d not yet attempted: read from "
                    "their bodies as deliveries make room)",
                    counts.total,
                    self._where(),
                    counts.not_read,
                )
            self.spools.node = self.store.node
            await self.guards.load(self.store)
            await self._prune_failed()
            await self.servers.start()
            self._announce()
            if self.config.queue.worker == 1:
                await asyncio.to_thread(warn_of_retired_workers, self.config.queue)
                if self.config.queue.workers > 1:
                    self.workers = WorkerPool(self.config, once=self.once, cli_args=self.cli_args)
                    self.workers.start()
            else:
                watch_parent(self._told_to_stop, self._hurry)
            self.spools.open(self.config)
            if not self.once:
                self.spools.watch()
                await self.sources.start()
                await self._start_control()
            await self._notify_ready()
            self.ready.set()
            await self._serve()
        finally:
            systemd.notify("STOPPING=1")
            if self.workers is not None:
                await self.workers.wait(self.shutdown_timeout + WORKER_STOP_SLACK)
            await self.sources.stop()
            if self._control is not None:
                await self._control.close()
            await self.servers.stop()
            await self.guards.stop(self.store)
            await self.spools.aclose()
            for relay in self.relays.values():
                try:
                    await relay.aclose()
                except Exception:
                    log.exception("relay %s failed to close", relay.name)
            await self.store.close()
            log.info("mqd stopped")

    async def _serve(self) -> None:
        intake = asyncio.create_task(self.spools.run(), name="mqd-intake")
        watchdog = asyncio.create_task(self._watchdog_loop(), name="mqd-watchdog")
        quotas = asyncio.create_task(self._quota_loop(), name="mqd-quota")
        pruning = asyncio.create_task(self._prune_loop(), name="mqd-prune-failed")
        try:
            await self.scheduler.run(once=self.spools.idle if self.once else None)
        finally:
            self._stopping.set()
            self.spools.stop()
            await self.sources.stop()  # no new mail; each hand-over under way is answered
            for task in (watchdog, quotas, pruning):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await intake
            for task in (watchdog, quotas, pruning):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.scheduler.drain(self.shutdown_timeout)

    async def _start_control(self) -> None:
        handle = serving_handovers(self.admin.handle, lambda: self.config, self.handover)
        control = ControlServer(self.config.queue.own_dir, handle)
        try:
            await control.start()
        except OSError as exc:
            log.error(
                "cannot open the control socket in %s (%s): 'mqd queue' and 'mqd status' "
                "will not reach this daemon",
                self.config.queue.own_dir,
                exc,
            )
            return
        self._control = control

    def _where(self) -> str:
        """The queue, for the log: its directory, or its database (whose DSN never holds the
        password: the config refuses one) and this node's name in it."""
        database = self.config.queue.database
        if self.config.queue.store == "postgresql" and database is not None:
            role = ROLE_WORDS[self.config.queue.role]
            return f"{database.dsn} (PostgreSQL, node {self.store.node}, {role})"
        return str(self.config.queue.own_dir)

    def _announce(self) -> None:
        log.info(
            "mqd starting: queue %s, %d spool(s), concurrency %d%s",
            self._where(),
            len(self.config.spools),
            self.config.queue.concurrency,
            " (--once: deliver what is due, then exit)" if self.once else "",
        )
        for spool in self.config.spools:
            log.info("spool %s -> relay %s", spool.path, spool.relay)
        for source in self.config.sources:
            log.info("%s -> relay %s", source.name, source.relay)
        for relay in self.relays.values():
            log.info("relay %s: %s", relay.name, relay.describe())
        if self.config.is_embedded_default:
            log.warning(
                "\n*** mqd is running on its EMBEDDED DEFAULTS (no config file found). ***\n"
                "*** Nothing is sent: the 'outbox' relay writes each message to a folder. ***\n"
                "*** Write a real config with 'mqd init', then 'mqd config check'.        ***"
            )

    async def _notify_ready(self) -> None:
        queued = await self.store.queued()
        systemd.notify("READY=1", f"STATUS=delivering; {queued} queued")

    async def _prune_loop(self) -> None:
        while True:
            await self.clock.sleep(PRUNE_INTERVAL)
            await self._prune_failed()

    async def _prune_failed(self) -> None:
        """Remove failed messages older than ``queue.failed_retention`` (worker 1 only: the
        workers share one folder)."""
        retention = self.config.queue.failed_retention
        if self.config.queue.worker != 1 or retention <= 0:
            return
        try:
            removed = await self.store.failed.prune(self.clock.time() - retention)
        except Exception as exc:  # a folder that cannot be read: the next time
            log.warning("cannot prune the failed folder: %s", exc)
            return
        if removed:
            log.info("removed %d failed message(s) older than queue.failed_retention", len(removed))

    async def _quota_loop(self) -> None:
        while True:
            await self.clock.sleep(QUOTA_SAVE_INTERVAL)
            await self.guards.save(self.store)

    async def _watchdog_loop(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        while True:
            queued = await self.store.queued()
            systemd.notify("WATCHDOG=1", f"STATUS=delivering; {queued} queued")
            await asyncio.sleep(interval)
