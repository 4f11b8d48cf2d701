"""Reloading the config (SIGHUP, ``mqd reload``) without dropping in-flight deliveries.

Everything is checked before anything changes: a config that does not load, a relay that cannot
be built, or a different ``queue.dir`` is reported and the running config kept. Deliveries in
flight finish on the relays they started with; those are closed after.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from dataclasses import replace
from typing import Protocol

import mqd.daemon.systemd as systemd
from mqd.clock import Clock
from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.firstworker import sources_handover
from mqd.daemon.preflight import check_environment
from mqd.daemon.scheduler import Scheduler
from mqd.delivery.deliverer import Deliverer
from mqd.errors import ConfigError, MQDError, raise_gathered
from mqd.intake.handover import Handover
from mqd.intake.sources import Sources, build_sources
from mqd.intake.spools import SpoolIntake
from mqd.plugins.host import PluginHost
from mqd.queue.store import QueueStore
from mqd.relays.base import Relay
from mqd.relays.build import build_relays

__all__ = ["Reloader"]

log = logging.getLogger("mqd.daemon")


class Reloadable(Protocol):
    """The parts of the daemon a reload replaces or tells."""

    config: Config
    relays: dict[str, Relay]

    @property
    def host(self) -> PluginHost: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def store(self) -> QueueStore: ...
    @property
    def deliverer(self) -> Deliverer: ...
    @property
    def spools(self) -> SpoolIntake: ...
    @property
    def scheduler(self) -> Scheduler: ...
    @property
    def handover(self) -> Handover: ...
    @property
    def sources(self) -> Sources: ...

    def spawn(self, work: Coroutine[object, object, object], what: str) -> None: ...


class Reloader:
    def __init__(self, daemon: Reloadable) -> None:
        self.daemon = daemon

    async def reload(self) -> str:
        """Re-read the config file and apply it. Returns a one-line summary; raises ConfigError
        for a refused config."""
        daemon = self.daemon
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={int(daemon.clock.monotonic() * 1e6)}")
        try:
            return await self._reload()
        finally:
            queued = await daemon.store.queued()
            systemd.notify("READY=1", f"STATUS=delivering; {queued} queued")

    async def _reload(self) -> str:
        daemon = self.daemon
        current = daemon.config
        path = current.source
        if path is None:
            raise ConfigError(
                "mqd runs on its embedded defaults: there is no config file to reload; "
                "write one with 'mqd init' and restart mqd with it"
            )
        try:
            new = await asyncio.to_thread(load_config, path)
            if new.queue.dir.absolute() != current.queue.dir.absolute():
                raise ConfigError(
                    f"queue.dir changed from {current.queue.dir} to {new.queue.dir}: a new "
                    "queue directory needs a restart",
                    path=path,
                    key="queue.dir",
                )
            _check_same_store(current, new)
            new = _as_worker(current, new)
            # The directories too, as 'mqd run' and 'mqd config check' check them.
            raise_gathered((await asyncio.to_thread(check_environment, new)).errors)
            relays = build_relays(new, daemon.host)
            # The last check (nothing to undo after it): a source reads its own keys.
            sources = build_sources(new, daemon.host, sources_handover(new, daemon.handover))
        except MQDError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            raise
        old_relays = dict(daemon.relays)
        # The HTTP tokens are read per request; the rest of these tables is read at start-up.
        http_was, http_is = (
            replace(c.http, token=None, operator_token=None) for c in (current, new)
        )
        for table, changed in (
            ("tracking", new.tracking != current.tracking),
            ("tracing", new.tracing != current.tracing),
            ("http", http_is != http_was),
            ("notify", new.notify != current.notify),
        ):
            if changed:
                log.warning("[%s] changed: that takes effect at the next restart", table)
        daemon.config = new
        daemon.relays.clear()
        daemon.relays.update(relays)
        daemon.deliverer.reconfigure(new)
        daemon.spools.open(new)
        daemon.handover.config = new
        await daemon.sources.replace(sources)
        in_flight = daemon.scheduler.tasks()
        daemon.spawn(_close_relays(old_relays.values(), in_flight), "close-old-relays")
        daemon.scheduler.wake()
        summary = f"reloaded {path}: {len(new.spools)} spool(s), relays {', '.join(new.relays)}"
        if new.sources:
            summary += f", sources {', '.join(source.name for source in new.sources)}"
        log.warning("%s", summary)
        return summary


def _check_same_store(current: Config, new: Config) -> None:
    """A reload keeps the queue it runs on: another store, database, node name or role needs a
    restart (ConfigError); a new database password is used from the next restart."""
    was, now = current.queue.database, new.queue.database
    where = [(c.queue.store, d and (d.dsn, d.node)) for c, d in ((current, was), (new, now))]
    if where[0] != where[1]:
        raise ConfigError(
            "queue.store, queue.dsn or queue.node changed: another queue needs a restart",
            path=new.source,
            key="queue.store",
        )
    if current.queue.role != new.queue.role:
        raise ConfigError(
            f"queue.role changed from {current.queue.role!r} to {new.queue.role!r}: a node's "
            "role changes at a restart",
            path=new.source,
            key="queue.role",
        )
    if was is not None and now is not None and was.password != now.password:
        log.warning("the queue database's password changed: it is used from the next restart")


def _as_worker(current: Config, new: Config) -> Config:
    """``new`` as this process's share of it; the number of workers stays until a restart."""
    running = current.queue.workers
    if new.queue.workers != running:
        log.warning(
            "queue.workers changed from %d to %d: that takes effect at the next restart",
            running,
            new.queue.workers,
        )
        new = replace(new, queue=replace(new.queue, workers=running))
    return new.for_worker(current.queue.worker) if running > 1 else new


async def _close_relays(relays: Iterable[Relay], in_flight: list[asyncio.Task[None]]) -> None:
    if in_flight:
        await asyncio.wait(in_flight)
    for relay in relays:
        try:
            await relay.aclose()
        except Exception:
            log.exception("relay %s failed to close", relay.name)
