"""Default plugin: the sender allow-list. mqd is never an open relay (DESIGN invariant 4)."""

from __future__ import annotations

from collections.abc import Iterable

from .config import Config, SpoolConfig
from .envelope import ParsedMessage
from .hookspecs import hookimpl

__all__ = ["sender_allowed"]


def sender_allowed(sender: str, patterns: Iterable[str]) -> bool:
    """True when ``sender`` matches one pattern: an exact address or ``*@domain``.

    Domains compare case-insensitively and without a trailing dot; local parts compare
    case-insensitively too (a looser match would never widen the list beyond one mailbox).
    """
    local, at, domain = sender.rpartition("@")
    if not at or not local:
        return False
    domain = domain.rstrip(".").lower()
    local = local.casefold()
    for pattern in patterns:
        p_local, _, p_domain = pattern.rpartition("@")
        if p_domain.rstrip(".").lower() != domain:
            continue
        if p_local == "*" or p_local.casefold() == local:
            return True
    return False


@hookimpl
def mqd_check_policy(
    message: ParsedMessage, spool: SpoolConfig, relay_name: str, config: Config
) -> str | None:
    relay = config.relays[relay_name]
    if spool.allowed_senders and not sender_allowed(message.sender, spool.allowed_senders):
        return (
            f"sender {message.sender} is not allowed: it matches no entry of allowed_senders "
            f"of the spool {spool.path}"
        )
    if relay.allowed_senders and not sender_allowed(message.sender, relay.allowed_senders):
        return (
            f"sender {message.sender} is not allowed: it matches no entry of allowed_senders "
            f"of the relay {relay_name!r}"
        )
    return None
