"""``[tracking]``: the event store, and where it is (a SQLite file, or the queue's database)."""

from __future__ import annotations

from mqd.config.options import Options
from mqd.config.schema import Config, DatabaseConfig, TrackingConfig

__all__ = ["parse_tracking", "tracking_database"]

#: ``[tracking] store``: ``auto`` is PostgreSQL when the queue is there, else SQLite.
TRACKING_STORES = ("auto", "sqlite", "postgresql")


def parse_tracking(opts: Options, queue_store: str = "file") -> TrackingConfig:
    config = TrackingConfig(
        enabled=opts.boolean("enabled", True),
        path=opts.filepath("path", None),
        retention=opts.duration("retention", "30d"),
        store=opts.choice("store", TRACKING_STORES, "auto"),
        keep_while_paused=opts.integer("keep_while_paused", 100_000, minimum=0),
    )
    if config.store == "postgresql" and queue_store != "postgresql":
        raise opts.error(
            "store",
            'is "postgresql", which needs the queue there too (queue.store = "postgresql"); '
            'say "auto" or "sqlite"',
        )
    if config.retention <= 0:
        raise opts.error("retention", 'must be more than 0, e.g. "30d"')
    opts.finish()
    return config


def tracking_database(config: Config) -> DatabaseConfig | None:
    """The queue's database when ``config``'s event store is in it, else None (the SQLite file
    ``config.tracking_path``)."""
    if config.tracking.store == "sqlite" or config.queue.store != "postgresql":
        return None
    return config.queue.database
