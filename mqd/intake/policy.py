"""Default plugin: the sender allow-list. mqd is never an open relay (DESIGN invariant 4)."""

from __future__ import annotations

from mqd.config.schema import Config, SpoolConfig
from mqd.config.senders import sender_allowed
from mqd.intake.routing import route_for
from mqd.message.envelope import ParsedMessage
from mqd.plugins.hookspecs import hookimpl

__all__ = ["sender_allowed"]


@hookimpl
def mqd_check_policy(
    message: ParsedMessage, spool: SpoolConfig, relay_name: str, config: Config
) -> str | None:
    if spool.allowed_senders and not sender_allowed(message.sender, spool.allowed_senders):
        return (
            f"sender {message.sender} is not allowed: it matches no entry of allowed_senders "
            f"of the spool {spool.path}"
        )
    # Failover may hand the message to any relay of its route, so each one's list must allow it.
    for name in dict.fromkeys((relay_name, *route_for(config, spool, message.sender))):
        relay = config.relays[name]
        if relay.allowed_senders and not sender_allowed(message.sender, relay.allowed_senders):
            return (
                f"sender {message.sender} is not allowed: it matches no entry of "
                f"allowed_senders of the relay {name!r}"
            )
    return None
