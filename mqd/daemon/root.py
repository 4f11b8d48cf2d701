"""The daemon: recover the queue, watch the spools, deliver what is due with bounded concurrency.

``run()`` is for the CLI, ``async_run()`` for tests and embedding. With ``once=True`` it takes
what is in the spools, delivers everything due now (bounces included) and returns: cron-friendly,
and what the tests use. Signal handlers only set flags; the loop then stops claiming, gives
in-flight deliveries ``shutdown_timeout`` seconds, and cancels the rest (a cancelled attempt is
not counted and its message is retried after the restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import signal
import sys
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import mqd.daemon.systemd as systemd
from mqd.admin.control import ControlServer
from mqd.admin.service import QueueAdmin
from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.workers import WorkerPool, warn_of_retired_workers, watch_parent
from mqd.delivery.deliverer import Deliverer
from mqd.delivery.quota import dump_quotas, load_quotas
from mqd.errors import ConfigError, MQDError, WorkerError
from mqd.events import Event
from mqd.fsutil import atomic_write
from mqd.intake.pipeline import RECOVERY_BATCH, Intake, entry_from_body
from mqd.intake.spool import Spool, is_spool_name
from mqd.intake.watch import Watcher, make_watcher
from mqd.plugins.host import PluginHost
from mqd.queue.entry import QueueEntry
from mqd.queue.file.backlog import Backlog
from mqd.queue.file.store import FileStore
from mqd.relays.base import Relay
from mqd.relays.build import build_relays

if TYPE_CHECKING:
    from mqd.http.metrics import MetricsServer
    from mqd.http.server import HttpServer
    from mqd.tracking.notify import Notifier
    from mqd.tracking.tracker import Tracker

__all__ = ["Daemon", "async_run", "run"]

log = logging.getLogger("mqd.daemon")

#: At most this many files are claimed in one intake batch (one fsync of the dirs per batch).
INTAKE_BATCH = 256
#: The backlog is read this far ahead of the deliveries (and never past ``queue.active_limit``):
#: a body read is then delivered within a second or so, while the store still keeps it in memory,
#: instead of being read a second time after waiting behind 10,000 others.
BACKLOG_READ_AHEAD = 1024
#: The scheduler re-reads the clock at least this often, so a clock jump is noticed.
MAX_SLEEP = 30.0
#: A clock that moved back by more than this is treated as a jump back.
CLOCK_SLACK = 5.0
#: Quota counts are saved this often (when they changed) and at shutdown.
QUOTA_SAVE_INTERVAL = 5.0
#: Worker 1 waits this much longer than ``queue.shutdown_timeout`` for the others to stop.
WORKER_STOP_SLACK = 10.0


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        host: PluginHost | None = None,
        once: bool = False,
        shutdown_timeout: float | None = None,
        cli_args: Sequence[str] = (),
    ) -> None:
        self.config = config
        #: Global command-line options passed on to the other workers of ``queue.workers``.
        self.cli_args = tuple(cli_args)
        #: Workers 2..N, in worker 1 (None with one worker, and in the others).
        self.workers: WorkerPool | None = None
        self.host = host or PluginHost()
        self.once = once
        #: None: the config's ``queue.shutdown_timeout``.
        self.shutdown_timeout = (
            shutdown_timeout if shutdown_timeout is not None else config.queue.shutdown_timeout
        )
        self.relays: dict[str, Relay] = build_relays(config, self.host)
        self.store = FileStore(config.queue.own_dir, config.failed_dir)
        self.spools: list[Spool] = []
        self.intake = Intake(config, self.store, self.host, self.emit)
        self.deliverer = Deliverer(
            config, self.store, self.relays, self.host, self.emit, self.schedule
        )
        self.entries: dict[str, QueueEntry] = {}
        #: Queued bodies not read yet (the rest of a large queue at start-up, see
        #: mqd.queue.file.backlog).
        self.backlog = Backlog()
        #: Entries held in memory and not attempted, held or removed yet (taken in from a spool
        #: or read from the backlog): what ``queue.active_limit`` bounds.
        self._fresh: set[str] = set()
        self._backlog_room = asyncio.Event()
        self._heap: list[tuple[float, str]] = []
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._intake_wake = asyncio.Event()
        self._pending_names: dict[int, set[str]] = {}
        self._rescan: set[int] = set()
        self._stopping = asyncio.Event()
        #: A stop was asked for (SIGTERM, Ctrl-C, the service): a second request hurries it.
        self._stop_requested = False
        self._intake_idle = asyncio.Event()
        self._watcher: Watcher | None = None
        self.metrics: MetricsServer | None = None
        #: The event store's writer and reader (None when [tracking] is off).
        self.tracker: Tracker | None = None
        #: Webhooks, the JSON API and the web view (None unless [http] is enabled).
        self.http: HttpServer | None = None
        #: Status changes POSTed to the application (None unless [notify] url is set).
        self.notifier: Notifier | None = None
        self._control: ControlServer | None = None
        self._background: set[asyncio.Task[object]] = set()
        #: Entries an administrator asked to retry while they were being delivered: they are
        #: due again as soon as that attempt ends (if it did not finish them).
        self.retry_when_done: set[str] = set()
        self.started_at = time.time()
        self.ready = asyncio.Event()

    # -- public control ---------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        if self.metrics is not None:
            self.metrics.observe(event)
        if self.tracker is not None:
            self.tracker.observe(event)
        self.host.track_event(event)

    @property
    def in_flight(self) -> set[str]:
        """Ids of the entries being delivered right now."""
        return set(self._in_flight)

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
        self._wake.set()
        self._intake_wake.set()
        if self.workers is not None:
            self.workers.stop()

    def _hurry(self) -> None:
        log.warning("second stop request: cancelling in-flight deliveries now")
        for task in self._in_flight.values():
            task.cancel()
        if self.workers is not None:
            self.workers.stop()

    def _told_to_stop(self) -> None:
        """Worker 1 asked this worker to stop, or its pipe ended. Not a stop request of its own:
        the service manager's SIGTERM to every process may come too, and that one is the first
        request here, so deliveries in flight still get their ``shutdown_timeout``."""
        if not self._stopping.is_set():
            log.info("stopping: worker 1 stops")
            self._begin_stop()

    def schedule(self, entry: QueueEntry) -> None:
        """Put ``entry`` on the schedule at its ``next_attempt_at``."""
        _undo_clock_jump_back(entry, time.time())
        self.entries[entry.id] = entry
        heapq.heappush(self._heap, (entry.next_attempt_at, entry.id))
        self._wake.set()

    def _clock_went_back(self, now: float) -> None:
        """Re-plan every entry whose times lie in the future of a clock that jumped back, so
        that the queue does not stall for the size of the jump."""
        log.warning("the system clock went back; re-planning the schedule from the new time")
        self._heap = []
        for entry in list(self.entries.values()):
            _undo_clock_jump_back(entry, now)
            heapq.heappush(self._heap, (entry.next_attempt_at, entry.id))

    @property
    def queue_size(self) -> int:
        return len(self.entries) + len(self.backlog)

    def forget(self, entry_id: str) -> None:
        """``entry_id`` left the queue (delivered, bounced, deleted)."""
        self.entries.pop(entry_id, None)
        self.make_room(entry_id)

    def make_room(self, entry_id: str) -> None:
        """``entry_id`` no longer counts against ``queue.active_limit`` (it was attempted, held
        or removed): read more of the backlog once a batch's worth of room is free."""
        if entry_id not in self._fresh:
            return
        self._fresh.discard(entry_id)
        if self.backlog:
            ahead = self._read_ahead
            if ahead - len(self._fresh) >= min(RECOVERY_BATCH, ahead, len(self.backlog)):
                self._backlog_room.set()

    @property
    def _read_ahead(self) -> int:
        return min(self.config.queue.active_limit, BACKLOG_READ_AHEAD)

    async def take_from_backlog(self, entry_ids: Iterable[str]) -> None:
        """Read these backlog ids now, out of turn (an administrator named them)."""
        found = []
        for entry_id in entry_ids:
            key = self.backlog.take_id(entry_id)
            if key is not None:
                found.append((key, entry_id))
        await self._read_from_backlog(found, fresh=False)

    def flush(self) -> None:
        """Retry everything deferred now (what SIGUSR1 and 'mqd queue flush' do)."""
        self._spawn(QueueAdmin(self).op_flush(), "flush")
        if self.workers is not None and sys.platform != "win32":
            self.workers.send_signal(signal.SIGUSR1)

    def request_reload(self) -> None:
        """Re-read the config (what SIGHUP does); a bad one is reported and the old one kept."""
        self._spawn(self.reload(), "reload")
        if self.workers is not None and sys.platform != "win32":
            self.workers.send_signal(signal.SIGHUP)

    def _spawn(self, work: Coroutine[object, object, object], what: str) -> None:
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
            work, name=f"mqd-{what}"
        )
        self._background.add(task)

        def done(task: asyncio.Task[object]) -> None:
            self._background.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("%s failed: %s", what, task.exception())

        task.add_done_callback(done)

    async def open_offline(self) -> None:
        """Open the queue of a stopped daemon for ``mqd queue ...`` (takes the queue lock)."""
        recovery = await self.store.open()
        for entry in recovery.entries:
            self.entries[entry.id] = entry
        # Messages never deferred have no state file: read them from their bodies, so that
        # 'mqd queue list' shows every queued message. Read only: the policy check, and moving
        # what fails it to failed/, are left to the daemon's start.
        paths = [path for group in recovery.unaccepted.values() for path in group]
        found = await asyncio.to_thread(
            lambda: [entry_from_body(self.config, path) for path in paths]
        )
        taken = [entry for entry in found if entry is not None]
        self.store.add_claimed(taken)
        self.entries.update((entry.id, entry) for entry in taken)
        await self._load_quotas()

    async def _start_control(self) -> None:
        control = ControlServer(self.store.directory, QueueAdmin(self).handle)
        try:
            await control.start()
        except OSError as exc:
            log.error(
                "cannot open the control socket in %s (%s): 'mqd queue' and 'mqd status' "
                "will not reach this daemon",
                self.store.directory,
                exc,
            )
            return
        self._control = control

    async def reload(self) -> str:
        """Re-read the config file and apply it without dropping in-flight deliveries.

        Everything is checked before anything changes: a config that does not load, a relay that
        cannot be built, or a different ``queue.dir`` is reported and the running config kept.
        Deliveries in flight finish on the relays they started with; those are closed after.
        Returns a one-line summary; raises ConfigError for a refused config.
        """
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            return await self._reload()
        finally:
            systemd.notify("READY=1", f"STATUS=delivering; {self.queue_size} queued")

    async def _reload(self) -> str:
        path = self.config.source
        if path is None:
            raise ConfigError(
                "mqd runs on its embedded defaults: there is no config file to reload; "
                "write one with 'mqd init' and restart mqd with it"
            )
        try:
            new = await asyncio.to_thread(load_config, path)
            if new.queue.dir.absolute() != self.config.queue.dir.absolute():
                raise ConfigError(
                    f"queue.dir changed from {self.config.queue.dir} to {new.queue.dir}: a new "
                    "queue directory needs a restart",
                    path=path,
                    key="queue.dir",
                )
            new = self._as_this_worker(new)
            relays = build_relays(new, self.host)  # the last check: nothing to undo after it
        except MQDError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            raise
        old_relays = dict(self.relays)
        # The HTTP token is read per request; the rest of these tables is read at start-up.
        http_was, http_is = (replace(c.http, token=None) for c in (self.config, new))
        for table, changed in (
            ("tracking", new.tracking != self.config.tracking),
            ("http", http_is != http_was),
            ("notify", new.notify != self.config.notify),
        ):
            if changed:
                log.warning("[%s] changed: that takes effect at the next restart", table)
        self.config = new
        self.relays.clear()
        self.relays.update(relays)
        self.deliverer.reconfigure(new)
        self.intake.config = new
        self._reopen_spools()
        in_flight = list(self._in_flight.values())
        self._spawn(self._close_relays(old_relays.values(), in_flight), "close-old-relays")
        self._wake.set()
        summary = f"reloaded {path}: {len(new.spools)} spool(s), relays {', '.join(new.relays)}"
        log.warning("%s", summary)
        return summary

    def _as_this_worker(self, new: Config) -> Config:
        """``new`` as this process's share of it; the number of workers stays until a restart."""
        running = self.config.queue.workers
        if new.queue.workers != running:
            log.warning(
                "queue.workers changed from %d to %d: that takes effect at the next restart",
                running,
                new.queue.workers,
            )
            new = replace(new, queue=replace(new.queue, workers=running))
        return new.for_worker(self.config.queue.worker) if running > 1 else new

    def _reopen_spools(self) -> None:
        """New spool objects for the new config; the watcher follows if the paths changed."""
        old_paths = [spool.path for spool in self.spools]
        self.spools = self._make_spools()
        for spool in self.spools:
            spool.prepare()
        self._pending_names.clear()
        self._rescan.update(range(len(self.spools)))
        if [spool.path for spool in self.spools] != old_paths and self._watcher is not None:
            watcher, self._watcher = self._watcher, None
            self._spawn(watcher.aclose(), "close-watcher")
            self._start_watcher()
        self._intake_wake.set()

    def _make_spools(self) -> list[Spool]:
        return [
            Spool(spool, self.store.queue_key, self.store.staging_path)
            for spool in self.config.spools
        ]

    async def _close_relays(
        self, relays: Iterable[Relay], in_flight: list[asyncio.Task[None]]
    ) -> None:
        if in_flight:
            await asyncio.wait(in_flight)
        for relay in relays:
            try:
                await relay.aclose()
            except Exception:
                log.exception("relay %s failed to close", relay.name)

    # -- main -------------------------------------------------------------------------------------

    async def run(self) -> None:
        recovery = await self.store.open()
        try:
            self.spools = self._make_spools()
            for spool in self.spools:
                spool.prepare()
            for note in recovery.notes:
                log.info("recovery: %s", note)
            await self._load_quotas()
            if self.config.metrics.enabled:
                from mqd.http.metrics import MetricsServer  # prometheus_client: only when asked for

                self.metrics = MetricsServer(self)
                self.metrics.start()
            if self.config.tracking.enabled:
                from mqd.tracking.tracker import Tracker

                self.tracker = await Tracker.open(self.config)
                if self.config.notify.url:
                    from mqd.tracking.notify import Notifier

                    self.notifier = Notifier(self.tracker, self.config.notify)
                    self.notifier.start()
            if self.config.http.enabled:
                from mqd.http.server import HttpServer

                self.http = HttpServer(self)
                await self.http.start()
            self._announce()
            if self.config.queue.worker == 1:
                await asyncio.to_thread(warn_of_retired_workers, self.config.queue)
                if self.config.queue.workers > 1:
                    self.workers = WorkerPool(self.config, once=self.once, cli_args=self.cli_args)
                    self.workers.start()
            else:
                watch_parent(self._told_to_stop, self._hurry)
            await self._recover(recovery.unaccepted, recovery.entries)
            del recovery  # its lists (100,000 paths for a large queue) are not needed any more
            await self._read_backlog()
            if not self.once:
                self._start_watcher()
                await self._start_control()
            self._rescan.update(range(len(self.spools)))
            systemd.notify("READY=1", f"STATUS=delivering; {self.queue_size} queued")
            self.ready.set()
            await self._serve()
        finally:
            systemd.notify("STOPPING=1")
            if self.workers is not None:
                await self.workers.wait(self.shutdown_timeout + WORKER_STOP_SLACK)
            if self._control is not None:
                await self._control.close()
            if self.http is not None:
                await self.http.stop()
            if self.metrics is not None:
                await asyncio.to_thread(self.metrics.stop)
            if self.notifier is not None:
                await self.notifier.stop()
            if self.tracker is not None:
                await self.tracker.close()
            await self._save_quotas()
            if self._watcher is not None:
                await self._watcher.aclose()
            for relay in self.relays.values():
                try:
                    await relay.aclose()
                except Exception:
                    log.exception("relay %s failed to close", relay.name)
            await self.store.close()

    async def _serve(self) -> None:
        intake = asyncio.create_task(self._intake_loop(), name="mqd-intake")
        backlog = asyncio.create_task(self._backlog_loop(), name="mqd-backlog")
        scheduler = asyncio.create_task(self._scheduler_loop(), name="mqd-scheduler")
        watchdog = asyncio.create_task(self._watchdog_loop(), name="mqd-watchdog")
        quotas = asyncio.create_task(self._quota_loop(), name="mqd-quota")
        try:
            await scheduler
        finally:
            self._stopping.set()
            self._intake_wake.set()
            watchdog.cancel()
            quotas.cancel()
            backlog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await intake
            for task in (watchdog, quotas, backlog):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._drain_in_flight()

    async def _recover(
        self, unaccepted: dict[str, list[Path]], entries: Iterable[QueueEntry]
    ) -> None:
        by_key = {spool.config.key: spool for spool in self.spools}
        entries = list(entries)
        ids = {entry.id for entry in entries}
        count = 0
        for entry in entries:
            if entry.unnotified_failures and f"{entry.id}b{entry.bounces}" in ids:
                # A crash came after this entry's DSN was queued and before the entry noted it:
                # note it now rather than queue a second DSN.
                for failure in entry.unnotified_failures:
                    failure.notified = True
                entry.bounces += 1
                log.info("recovery: %s's bounce was already queued", entry.id)
            self.schedule(entry)
            count += 1
        for key, paths in unaccepted.items():
            if key in by_key:
                # Listed only: read by _read_backlog a little ahead of the deliveries.
                self.backlog.add(key, [path.stem for path in paths])
            else:
                for path in paths:
                    await self._reject_unconfigured(path)
        from_bodies = len(self.backlog)
        if count or from_bodies:
            log.info(
                "recovered %d queued message(s) from %s (%d not yet attempted: read from their "
                "bodies as deliveries make room)",
                count + from_bodies,
                self.store.directory,
                from_bodies,
            )
        for spool in self.spools:
            recovered = await asyncio.to_thread(spool.recover_claims)
            for entry in await self.intake.take_claimed(recovered):
                self.schedule(entry)

    async def _reject_unconfigured(self, path: Path) -> None:
        await self.store.reject(
            path.stem,
            path,
            {
                "stage": "recovery",
                "reason": "claimed from a spool that is no longer configured; "
                "re-inject it into a configured spool to send it",
            },
        )
        log.error("%s: its spool is no longer configured; moved to failed/", path.stem)

    # -- the backlog ------------------------------------------------------------------------------

    async def _read_backlog(self) -> None:
        """Read backlog bodies, oldest first, while fewer than ``BACKLOG_READ_AHEAD`` read ones
        wait (with --once, all of them: it delivers everything before it exits)."""
        while self.backlog and not self._stopping.is_set():
            room = self._read_ahead - len(self._fresh)
            if self.once:
                room = len(self.backlog)
            if room <= 0:
                return
            taken = self.backlog.take(min(room, RECOVERY_BATCH))
            try:
                await self._read_from_backlog(taken)
            except BaseException:  # not stranded until a restart: first in line again
                self.backlog.put_back([t for t in taken if t[1] not in self.entries])
                raise

    async def _read_from_backlog(self, taken: list[tuple[str, str]], fresh: bool = True) -> None:
        by_key = {spool.config.key: spool for spool in self.spools}
        claimed = []
        for key, entry_id in taken:
            path = self.store.staging_path(key, entry_id)
            spool = by_key.get(key)
            if spool is None:  # a reload removed its spool since start-up
                await self._reject_unconfigured(path)
            else:
                claimed.append(spool.claimed_file(path))
        for entry in await self.intake.take_claimed(claimed):
            if fresh:
                self._fresh.add(entry.id)
            self.schedule(entry)

    def _admit(self, entry: QueueEntry) -> None:
        """A message just taken in from a spool: scheduled, or, once ``queue.active_limit``
        never-attempted messages are read (or older ones wait unread), listed in the backlog: its
        body is its record, read again when its turn comes. Memory then stays bounded while a
        flood is taken in faster than it is delivered, or while its relay is down."""
        if not self.once and (self.backlog or len(self._fresh) >= self.config.queue.active_limit):
            self.backlog.add(entry.source, [entry.id])
            self.store.drop_kept(entry.id)
            if len(self._fresh) < self._read_ahead:
                self._backlog_room.set()
            return
        self._fresh.add(entry.id)
        self.schedule(entry)

    async def _backlog_loop(self) -> None:
        """Read more of the backlog each time deliveries have made room for it."""
        while True:
            await self._backlog_room.wait()
            self._backlog_room.clear()
            try:
                await self._read_backlog()
            except Exception:  # they were put back (_read_backlog): try again in a while
                log.exception("cannot read queued messages; retrying in a while")
                await asyncio.sleep(self.config.queue.scan_interval)
                self._backlog_room.set()

    def _announce(self) -> None:
        log.info(
            "mqd starting: queue %s, %d spool(s), concurrency %d%s",
            self.store.directory,
            len(self.spools),
            self.config.queue.concurrency,
            " (--once: deliver what is due, then exit)" if self.once else "",
        )
        for spool in self.config.spools:
            log.info("spool %s -> relay %s", spool.path, spool.relay)
        for relay in self.relays.values():
            log.info("relay %s: %s", relay.name, relay.describe())
        if self.config.is_embedded_default:
            log.warning(
                "\n*** mqd is running on its EMBEDDED DEFAULTS (no config file found). ***\n"
                "*** Nothing is sent: the 'outbox' relay writes each message to a folder. ***\n"
                "*** Write a real config with 'mqd init', then 'mqd config check'.        ***"
            )

    def _start_watcher(self) -> None:
        try:
            watcher = make_watcher(self.config.queue.watch)
            watcher.start([spool.path for spool in self.spools], self._on_spool_change)
        except (OSError, ImportError) as exc:
            log.warning(
                "cannot watch the spools (%s); rescanning every %gs instead",
                exc,
                self.config.queue.scan_interval,
            )
            return
        self._watcher = watcher
        log.debug("watching spools with %s", watcher.name)

    def _on_spool_change(self, index: int, name: str | None) -> None:
        if name is None:
            self._rescan.add(index)
        elif is_spool_name(name):
            self._pending_names.setdefault(index, set()).add(name)
        else:
            return
        self._intake_wake.set()

    # -- intake -----------------------------------------------------------------------------------

    async def _intake_loop(self) -> None:
        """Claim what the watcher reports, and rescan every spool each ``scan_interval``
        whatever the traffic, so that a missed event delays a file, never strands it."""
        try:
            await self._take_from_spools()
        finally:
            await self.intake.settle()  # the last batch's fsyncs

    async def _take_from_spools(self) -> None:
        interval = self.config.queue.scan_interval
        last_full_scan = time.monotonic()  # run() already asked for the first full scan
        while not self._stopping.is_set():
            if time.monotonic() - last_full_scan >= interval:
                self._rescan.update(range(len(self.spools)))
            if len(self._rescan) == len(self.spools):
                last_full_scan = time.monotonic()
            try:
                work = await self._collect_intake_work()
            except Exception:  # e.g. a spool made unreadable: keep delivering, retry the scan
                log.exception("cannot list the spools; retrying in %gs", interval)
                work = []
            for index, names in work:
                for start in range(0, len(names), INTAKE_BATCH):
                    if self._stopping.is_set():
                        return
                    batch = names[start : start + INTAKE_BATCH]
                    try:
                        entries = await self.intake.take_names(self.spools[index], batch)
                    except Exception:
                        log.exception(
                            "intake from %s failed; retrying at the next scan",
                            self.spools[index].path,
                        )
                        continue
                    for entry in entries:
                        self._admit(entry)
            if self.intake.write_failed:
                # The queue cannot be written (disk full, I/O error): the files went back into
                # their spools (or, when only their fsyncs failed, are being delivered). Take
                # files again after a scan interval, not in a busy loop.
                self.intake.write_failed = False
                self._pending_names.clear()
                self._rescan.clear()
                self._intake_idle.set()
                self._wake.set()
                if self.once:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=interval)
                last_full_scan = time.monotonic() - interval
                continue
            if self._pending_names or self._rescan:
                continue
            self._intake_idle.set()
            self._wake.set()
            if self.once:
                return
            self._intake_wake.clear()
            wait = max(0.0, last_full_scan + interval - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._intake_wake.wait(), timeout=wait)

    async def _collect_intake_work(self) -> list[tuple[int, list[str]]]:
        rescan, self._rescan = self._rescan, set()
        named, self._pending_names = self._pending_names, {}
        work: list[tuple[int, list[str]]] = []
        for index in sorted(rescan | set(named)):
            if index in rescan:
                names = await asyncio.to_thread(self.spools[index].scan)
                names = sorted(set(names) | named.get(index, set()))
            else:
                names = sorted(named[index])
            if names:
                work.append((index, names))
        return work

    # -- scheduling -------------------------------------------------------------------------------

    async def _scheduler_loop(self) -> None:
        concurrency = self.config.queue.concurrency
        last_now = time.time()
        while True:
            self._wake.clear()
            now = time.time()
            if now < last_now - CLOCK_SLACK:
                self._clock_went_back(now)
            last_now = now
            stopping = self._stopping.is_set()
            while self._heap and not stopping and len(self._in_flight) < concurrency:
                due, entry_id = self._heap[0]
                entry = self.entries.get(entry_id)
                if (
                    entry is None
                    or entry.next_attempt_at != due
                    or entry_id in self._in_flight
                    or entry.held
                ):
                    heapq.heappop(self._heap)  # stale (rescheduled, finished, running) or held
                    continue
                if due > now:
                    break
                heapq.heappop(self._heap)
                self._start(entry)
            if stopping:
                return
            idle = self._intake_idle.is_set() and not self._in_flight
            if self.once and idle and not self._has_due(now):
                return
            timeout = MAX_SLEEP
            if self._heap and len(self._in_flight) < concurrency:
                timeout = min(MAX_SLEEP, max(0.0, self._heap[0][0] - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    def _has_due(self, now: float) -> bool:
        return any(
            self.entries.get(entry_id) is not None
            and not self.entries[entry_id].held
            and self.entries[entry_id].next_attempt_at == due
            and due <= now
            for due, entry_id in self._heap
        )

    def _start(self, entry: QueueEntry) -> None:
        task = asyncio.create_task(self._deliver(entry), name=f"mqd-deliver-{entry.id}")
        self._in_flight[entry.id] = task

    async def _deliver(self, entry: QueueEntry) -> None:
        finished = False
        try:
            await self.deliverer.attempt(entry)
            finished = entry.is_done
        except asyncio.CancelledError:
            log.info("%s delivery cancelled by shutdown; it is retried after the restart", entry.id)
            raise
        except Exception:
            # The store failed (disk full, I/O error): the message stays where it was.
            log.exception("%s could not be processed; keeping it and retrying later", entry.id)
            entry.next_attempt_at = time.time() + self.deliverer.backoff.delay(
                max(1, entry.attempts)
            )
        finally:
            self._in_flight.pop(entry.id, None)
            if entry.id in self.retry_when_done:
                self.retry_when_done.discard(entry.id)
                entry.next_attempt_at = min(entry.next_attempt_at, time.time())
            if finished or entry.attempts or entry.held:
                self.make_room(entry.id)
            if finished:
                self.entries.pop(entry.id, None)
            elif not self._stopping.is_set():
                heapq.heappush(self._heap, (entry.next_attempt_at, entry.id))
            self._wake.set()

    async def _drain_in_flight(self) -> None:
        if not self._in_flight:
            return
        tasks = list(self._in_flight.values())
        log.info(
            "waiting up to %gs for %d delivery(ies) in flight", self.shutdown_timeout, len(tasks)
        )
        _, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # -- quotas -----------------------------------------------------------------------------------

    async def _load_quotas(self) -> None:
        path = self.store.quota_path
        try:
            raw = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read the saved quota counts %s: %s", path, exc)
            return
        load_quotas(self.deliverer.quotas, raw)

    async def _save_quotas(self) -> None:
        quotas = self.deliverer.quotas
        if not any(q.dirty for q in quotas.values()):
            return
        for quota in quotas.values():
            quota.dirty = False
        try:
            await asyncio.to_thread(atomic_write, self.store.quota_path, dump_quotas(quotas))
        except OSError as exc:
            log.warning("cannot save the quota counts to %s: %s", self.store.quota_path, exc)

    async def _quota_loop(self) -> None:
        while True:
            await asyncio.sleep(QUOTA_SAVE_INTERVAL)
            await self._save_quotas()

    async def _watchdog_loop(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        while True:
            systemd.notify("WATCHDOG=1", f"STATUS=delivering; {self.queue_size} queued")
            await asyncio.sleep(interval)


def _undo_clock_jump_back(entry: QueueEntry, now: float) -> None:
    """Times in the future of ``now`` that were set in the past mean the clock went back (or a
    state file came from a machine whose clock was ahead). The wait that was planned is kept, but
    counted from now: a deferred entry keeps its backoff interval, a new one is due now."""
    if entry.last_attempt_at is not None and entry.last_attempt_at > now + CLOCK_SLACK:
        wait = max(0.0, entry.next_attempt_at - entry.last_attempt_at)
        entry.last_attempt_at = now
        entry.next_attempt_at = now + wait
    elif entry.last_attempt_at is None and entry.created_at > now + CLOCK_SLACK:
        entry.next_attempt_at = min(entry.next_attempt_at, now)


async def async_run(
    config: Config,
    *,
    once: bool = False,
    host: PluginHost | None = None,
    install_signals: bool = False,
    cli_args: Sequence[str] = (),
) -> Daemon:
    """Run a daemon until it is stopped (or, with ``once``, until nothing is due)."""
    daemon = Daemon(config, host=host, once=once, cli_args=cli_args)
    if install_signals:
        _install_signal_handlers(daemon)
    await daemon.run()
    return daemon


def run(
    config: Config,
    *,
    once: bool = False,
    host: PluginHost | None = None,
    cli_args: Sequence[str] = (),
) -> None:
    """Blocking entry point for the CLI: signals stop the daemon gracefully. With --once and
    several workers, raises WorkerError when one of the others failed."""
    daemon = asyncio.run(
        async_run(config, once=once, host=host, install_signals=True, cli_args=cli_args)
    )
    if daemon.workers is not None and daemon.workers.failures:
        failed = ", ".join(f"{n} (code {c})" for n, c in sorted(daemon.workers.failures.items()))
        raise WorkerError(f"worker(s) {failed} did not finish: see their log lines above")


def _install_signal_handlers(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    stop_signals = [signal.SIGTERM, signal.SIGINT]
    if sys.platform == "win32":  # pragma: no cover - Windows
        stop_signals.append(signal.SIGBREAK)
        for sig in stop_signals:
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(daemon.request_stop))
        return
    for sig in stop_signals:
        loop.add_signal_handler(sig, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    loop.add_signal_handler(signal.SIGUSR1, daemon.flush)
