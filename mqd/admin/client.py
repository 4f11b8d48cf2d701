"""Reaching a queue's administration: through the running daemon's control socket, or, when no
daemon runs, by opening the stopped queue in this process (``offline``). Opening it offline
builds no relay: a stopped queue can be listed, shown and held even when a relay's password file
is missing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from mqd.admin.control import ControlError, DaemonNotRunning, call
from mqd.admin.service import AdminError, QueueAdmin
from mqd.config.schema import Config
from mqd.daemon.stores import open_store
from mqd.delivery.deliverer import Deliverer
from mqd.delivery.guards import Guards
from mqd.errors import QueueLockedError
from mqd.events import Event
from mqd.faults import Paused
from mqd.intake.source import SourceStatus
from mqd.plugins.host import PluginHost
from mqd.queue.store import QueueStore
from mqd.relays.base import Relay

__all__ = ["offline", "request"]


class _StoppedNode:
    """A stopped queue, opened by a command: its store, no relays, fresh guards."""

    def __init__(self, config: Config, store: QueueStore, host: PluginHost) -> None:
        self.config = config
        self.store = store
        self.host = host
        self.guards = Guards(config)
        self.relays: Mapping[str, Relay] = {}
        self.started_at = time.time()
        self.faults: Sequence[Paused] = ()
        # Only a bounce needs it, and then only its bounce builder: no relay is used.
        self.deliverer = Deliverer(config, store, self.relays, host, self.emit, guards=self.guards)

    def emit(self, event: Event) -> None:
        self.host.track_event(event)

    async def reload(self) -> str:
        raise AdminError("no daemon is running: there is nothing to reload")

    def source_status(self) -> Sequence[SourceStatus]:
        return ()  # a stopped queue takes nothing in


@contextlib.asynccontextmanager
async def offline(config: Config, host: PluginHost | None = None) -> AsyncIterator[QueueAdmin]:
    """Administer the queue of a stopped daemon: open its store (taking its lock), release it.

    Raises QueueLockedError when a daemon holds the queue (then use the control socket).
    """
    host = host or PluginHost()
    store = open_store(config)
    await store.open()
    node = _StoppedNode(config, store, host)
    try:
        await node.guards.load(store)
        yield QueueAdmin(node, online=False)
    finally:
        await store.close()


async def request(config: Config, op: str, args: dict[str, Any] | None = None) -> Any:
    """Carry out ``op`` on the queue of ``config`` (of one worker: ``mqd.admin.fanout`` asks every
    worker of ``queue.workers``): through the running daemon's control socket, or on the store
    when no daemon runs. Raises AdminError / ControlError with a message for the user."""
    directory = config.queue.own_dir
    try:
        return await call(directory, op, args)
    except DaemonNotRunning:
        pass
    if not directory.is_dir():
        # Opening it offline would create it, owned by whoever runs this command.
        raise AdminError(f"there is no queue at {directory} yet: mqd creates it when it first runs")
    try:
        async with offline(config) as admin:
            return await admin.handle(op, args or {})
    except QueueLockedError:
        raise ControlError(
            f"a daemon holds the queue {directory} but does not answer on its control "
            "socket: is it an older mqd, or still starting? (see its log)"
        ) from None
