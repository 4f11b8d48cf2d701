"""Which relays a message goes through: a route chosen by its envelope sender, else its spool's.

A ``[[route]]`` whose ``senders`` name the sender exactly wins over one that matches its domain
(``*@example.com``); among equals the first in the file wins. The result is a failover chain:
the first relay is preferred, the next ones take over when it fails transiently, is unhealthy or
is held back by a quota. (``mqd.config.senders.route_of`` decides; ``mqd sendmail`` asks it too.)
"""

from __future__ import annotations

from mqd.config.schema import Config, SpoolConfig
from mqd.config.senders import route_of

__all__ = ["route_for"]


def route_for(config: Config, spool: SpoolConfig, sender: str) -> tuple[str, ...]:
    """The relay chain for mail from ``sender`` taken from ``spool``."""
    return route_of(sender, config.routes, spool.relays)
