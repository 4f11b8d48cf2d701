"""Default plugin: the sender allow-list. mqd is never an open relay (DESIGN invariant 4).

The envelope sender is checked, and (unless the spool says ``check_from = false``) so is every
address in the From header, which is what recipients see, against the same lists.
The lists are the spool's ``allowed_senders`` when it has one, and that of every relay of the
message's route that has one: an address must match each of them.
"""

from __future__ import annotations

import functools

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
    refusal = _refusal("sender", message.sender, spool, relays, config)
    if refusal or not spool.check_from or "from" not in message.headers:
        return refusal  # without a From header, the envelope sender alone is checked
    addresses = _from_addresses(message.headers["from"])
    if isinstance(addresses, str):
        return f"{addresses}: {_FROM_ADVICE.format(path=spool.path)}"
    for address in addresses:
        refusal = _refusal("From address", address, spool, relays, config)
        if refusal:
            return f"{refusal}; {_FROM_ADVICE.format(path=spool.path)}"
    return None


def _from_addresses(value: str) -> tuple[str, ...] | str:
    """The addresses of a From header's value, or why it cannot be checked."""
    # An application sends from a few From values, many times: those are read once (reading
    # one costs several times the rest of the check). A long value, rare, is not kept.
    return _read_from(value) if len(value) > 200 else _read_short_from(value)


def _read_from(value: str) -> tuple[str, ...] | str:
    try:
        addresses = header_addresses(value, "from", strict=True)
    except MessageParseError as exc:
        return str(exc)
    return tuple(addresses) or f"the From header holds no address ({value!r})"


_read_short_from = functools.lru_cache(maxsize=1024)(_read_from)


def _refusal(
    what: str, address: str, spool: SpoolConfig, relays: tuple[str, ...], config: Config
) -> str | None:
    """Why ``address`` (``what``, e.g. "sender", names it in the reason) is not allowed, or None
    when the spool's list and the list of each of ``relays`` that has one all match it."""
    if spool.allowed_senders and not sender_allowed(address, spool.allowed_senders):
        return (
            f"{what} {address} is not allowed: it matches no entry of allowed_senders "
            f"of the spool {spool.path}"
        )
    for name in relays:
        relay = config.relays[name]
        if relay.allowed_senders and not sender_allowed(address, relay.allowed_senders):
            return (
                f"{what} {address} is not allowed: it matches no entry of "
                f"allowed_senders of the relay {name!r}"
            )
    return None
