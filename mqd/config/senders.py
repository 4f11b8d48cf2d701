"""Sender allow-lists: the patterns a config may name (an address or ``*@domain``) and the match.

mqd is never an open relay: every spool or relay names the senders it takes mail from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["sender_allowed", "validate_sender_pattern"]

_PATTERN = re.compile(r"(\*|[^@\s*<>]+)@([^@\s*<>]+)")


def validate_sender_pattern(pattern: str) -> str:
    """``pattern`` normalised, or ValueError: an address or ``*@domain``, nothing wider."""
    match = _PATTERN.fullmatch(pattern.strip())
    if not match or not match.group(2).rstrip("."):
        raise ValueError(
            f"{pattern!r} is not an address or a '*@domain' pattern "
            "(mqd is never an open relay: list the senders your applications use)"
        )
    return f"{match.group(1)}@{match.group(2).rstrip('.').lower()}"


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
