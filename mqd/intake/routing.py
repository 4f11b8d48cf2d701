"""Which relays a message goes through: a route chosen by its envelope sender, else its spool's.

A ``[[route]]`` whose ``senders`` name the sender exactly wins over one that matches its domain
(``*@example.com``); among equals the first in the file wins. The result is a failover chain:
the first relay is preferred, the next ones take over when it fails transiently, is unhealthy or
is held back by a quota.
"""

from __future__ import annotations

from mqd.config.schema import Config, SpoolConfig
from mqd.config.senders import sender_allowed

__all__ = ["route_for"]


def route_for(config: Config, spool: SpoolConfig, sender: str) -> tuple[str, ...]:
    """The relay chain for mail from ``sender`` taken from ``spool``."""
    if sender and config.routes:
        for route in config.routes:
            if sender_allowed(sender, [p for p in route.senders if not p.startswith("*@")]):
                return route.relays
        for route in config.routes:
            if sender_allowed(sender, [p for p in route.senders if p.startswith("*@")]):
                return route.relays
    return spool.relays
