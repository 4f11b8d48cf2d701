"""Default plugin: the sender allow-list. mqd is never an open relay (DESIGN invariant 4).

Two addresses are checked against the same lists: the envelope sender, and (unless the spool
says ``check_from = false``) every address in the From header, which is what recipients see.
The lists are the spool's ``allowed_senders`` when it has one, and that of every relay of the
message's route that has one: an address must match each of them.
"""

from __future__ import annotations

from mqd.config.schema import Config, SpoolConfig
from mqd.config.senders import sender_allowed
from mqd.errors import MessageParseError
from mqd.intake.routing import route_for
from mqd.message.envelope import ParsedMessage
from mqd.message.headers import header_addresses
from mqd.plugins.hookspecs import hookimpl

__all__ = ["sender_allowed"]

#: How a refusal of the From header ends: what to do instead, and how to turn the check off.
_FROM_ADVICE = (
    "recipients see the From header, so it must be an allowed sender too (an application "
    "that shows a visitor's address puts it in Reply-To); set check_from = false on the spool "
    "{path} to allow any From"
)


@hookimpl
def mqd_check_policy(
    message: ParsedMessage, spool: SpoolConfig, relay_name: str, config: Config
) -> str | None:
    # Failover may hand the message to any relay of its route, so each one's list must allow it.
    relays = tuple(dict.fromkeys((relay_name, *route_for(config, spool, message.sender))))
    refusal = _refusal(f"sender {message.sender}", message.sender, spool, relays, config)
    if refusal or not spool.check_from or "from" not in message.headers:
        return refusal  # without a From header, the envelope sender alone is checked
    advice = _FROM_ADVICE.format(path=spool.path)
    try:
        addresses = header_addresses(message.headers["from"], "from", strict=True)
    except MessageParseError as exc:
        return f"{exc}: {advice}"
    if not addresses:
        return f"the From header holds no address ({message.headers['from']!r}): {advice}"
    for address in addresses:
        refusal = _refusal(f"From address {address}", address, spool, relays, config)
        if refusal:
            return f"{refusal}; {advice}"
    return None


def _refusal(
    what: str, address: str, spool: SpoolConfig, relays: tuple[str, ...], config: Config
) -> str | None:
    """Why ``address`` (``what`` names it in the reason) is not allowed, or None when the
    spool's list and the list of each of ``relays`` that has one all match it."""
    if spool.allowed_senders and not sender_allowed(address, spool.allowed_senders):
        return (
            f"{what} is not allowed: it matches no entry of allowed_senders "
            f"of the spool {spool.path}"
        )
    for name in relays:
        relay = config.relays[name]
        if relay.allowed_senders and not sender_allowed(address, relay.allowed_senders):
            return (
                f"{what} is not allowed: it matches no entry of "
                f"allowed_senders of the relay {name!r}"
            )
    return None
