"""The queue store a config names, made for a node: the one place that picks a store.

The file store rebuilds the entry of a message never attempted from its body after a restart,
as intake made it; with a plugin host it checks the policy again (a daemon), without one it only
reads (a command looking at a stopped queue).
"""

from __future__ import annotations

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.config.schema import Config
from mqd.intake.entries import rebuilder
from mqd.intake.routing import route_for
from mqd.plugins.host import PluginHost
from mqd.queue.failed import FailedFolder
from mqd.queue.file.failed import FileFailedFolder
from mqd.queue.file.store import FileStore

__all__ = ["failed_folder", "open_store"]


def open_store(
    config: Config, *, host: PluginHost | None = None, clock: Clock = SYSTEM_CLOCK
) -> FileStore:
    """The store of ``config``'s queue (not opened yet)."""
    return FileStore(
        config.queue.own_dir,
        rebuild=rebuilder(config, host, route_for, clock.time),
        failed_dir=config.failed_dir,
        active_limit=config.queue.active_limit,
        clock=clock,
    )


def failed_folder(config: Config) -> FailedFolder:
    """The failed folder of ``config``'s queue, without opening the queue (it works the same
    whether a daemon runs or not)."""
    return FileFailedFolder(config.failed_dir)
