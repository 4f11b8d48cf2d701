"""The queue store a config names, made for a node: the one place that picks a store.

The file store rebuilds the entry of a message never attempted from its body after a restart,
as intake made it; with a plugin host it checks the policy again (a daemon), without one it only
reads (a command looking at a stopped queue).

The PostgreSQL store (``queue.store = "postgresql"``) is imported only when a config names it:
psycopg is an optional dependency (``mqd[postgresql]``). The config keeps ``queue.workers`` at 1
with it for now (administration asks every worker, and each would answer for the whole shared
queue); ``node_name`` already names workers 2..N ``<node>.w<n>`` for when that is lifted.
"""

from __future__ import annotations

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.config.schema import Config, DatabaseConfig
from mqd.intake.entries import rebuilder
from mqd.intake.routing import route_for
from mqd.plugins.host import PluginHost
from mqd.queue.failed import FailedFolder
from mqd.queue.file.failed import FileFailedFolder
from mqd.queue.file.store import FileStore
from mqd.queue.store import QueueStore

__all__ = ["failed_folder", "node_name", "open_store"]


def open_store(
    config: Config, *, host: PluginHost | None = None, clock: Clock = SYSTEM_CLOCK
) -> QueueStore:
    """The store of ``config``'s queue (not opened yet)."""
    database = config.queue.database
    if config.queue.store == "postgresql" and database is not None:
        from mqd.queue.postgresql.connect import Database
        from mqd.queue.postgresql.store import PostgresStore

        return PostgresStore(
            Database(database.dsn, database.password.reveal() if database.password else None),
            node=node_name(config, database),
            clock=clock,
            pool_size=min(config.queue.concurrency + 2, 20),
        )
    return FileStore(
        config.queue.own_dir,
        rebuild=rebuilder(config, host, route_for, clock.time),
        failed_dir=config.failed_dir,
        active_limit=config.queue.active_limit,
        clock=clock,
    )


def node_name(config: Config, database: DatabaseConfig) -> str:
    """This process's node name in a shared queue: ``queue.node``, and the worker's number for
    workers 2..N of ``queue.workers``."""
    worker = config.queue.worker
    return database.node if worker == 1 else f"{database.node}.w{worker}"


def failed_folder(config: Config) -> FailedFolder:
    """The failed folder of ``config``'s queue, without opening the queue (it works the same
    whether a daemon runs or not)."""
    database = config.queue.database
    if config.queue.store == "postgresql" and database is not None:
        from mqd.queue.postgresql.connect import Database
        from mqd.queue.postgresql.failed import PgFailedFolder

        password = database.password.reveal() if database.password else None
        return PgFailedFolder(Database(database.dsn, password))
    return FileFailedFolder(config.failed_dir)
