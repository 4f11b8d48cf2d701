"""Default plugin: the sender allow-list. mqd is never an open relay (DESIGN invariant 4).

The envelope sender is checked, and (unless the spool says ``check_from = false``) so is every
address in the From and Sender headers, which is what recipients see, against the same lists.
The lists are the spool's ``allowed_senders`` when it has one, and that of every relay of the
message's route that has one: an address must match each of them. The check itself is
``mqd.config.senders.policy_refusal``, which ``mqd send`` and ``mqd sendmail`` run too, before
they write.
"""

from __future__ import annotations

from mqd.config.schema import Config, SpoolConfig
from mqd.config.senders import policy_refusal, sender_allowed
from mqd.intake.routing import route_for
from mqd.message.envelope import ParsedMessage
from mqd.plugins.hookspecs import hookimpl

__all__ = ["sender_allowed"]


@hookimpl
def mqd_check_policy(
    message: ParsedMessage, spool: SpoolConfig, relay_name: str, config: Config
) -> str | None:
    # Failover may hand the message to any relay of its route, so each one's list must allow it.
    relays = dict.fromkeys((relay_name, *route_for(config, spool, message.sender)))
    return policy_refusal(
        message.sender,
        message.headers.get("from"),
        spool,
        ((name, config.relays[name].allowed_senders) for name in relays),
        message.headers.get("sender"),
    )
