"""Sender allow-lists and the built-in sender policy: one implementation, wherever it runs.

mqd is never an open relay: every spool or relay names the senders it takes mail from. The
patterns a config may name are an address or ``*@domain`` (``validate_sender_pattern``). The
policy (``policy_refusal``) checks the envelope sender and, unless the spool says
``check_from = false``, every address in the From header, which is what recipients see, against
the spool's ``allowed_senders`` when it has one and that of every relay of the message's route
(``route_of``) that has one: an address must match each of them.

It runs in the daemon on every message taken in (``mqd.intake.policy``), and in ``mqd send`` and
``mqd sendmail`` while the caller waits, before anything is written (``SenderRules``: one spool's
rule as plain data, which ``mqd install-sendmail`` writes into its launcher). The sendmail path
runs once per message, so this module imports nothing at run time but ``mqd.message.headers``
(``re`` only when a pattern is validated, as the config is loaded) and quotes its annotations.
"""

from mqd.errors import MessageParseError
from mqd.message.headers import header_addresses

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know it)
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from os import PathLike
    from typing import Any, Protocol

    from mqd.config.schema import Config, SpoolConfig

    class RouteLike(Protocol):
        @property
        def senders(self) -> "Sequence[str]": ...
        @property
        def relays(self) -> tuple[str, ...]: ...

    class SpoolLike(Protocol):
        @property
        def path(self) -> "str | PathLike[str]": ...
        @property
        def allowed_senders(self) -> "Sequence[str]": ...
        @property
        def check_from(self) -> bool: ...


__all__ = [
    "SenderRules",
    "policy_refusal",
    "route_of",
    "sender_allowed",
    "validate_sender_pattern",
]

#: How a refusal of the From header ends: what to do instead, and how to turn the check off.
FROM_ADVICE = (
    "recipients see the From and Sender headers, so their addresses must be allowed senders "
    "too (an application that shows a visitor's address puts it in Reply-To); set "
    "check_from = false on the spool {path} to allow any From"
)


def validate_sender_pattern(pattern: str) -> str:
    """``pattern`` normalised, or ValueError: an address or ``*@domain``, nothing wider."""
    import re  # only as the config is loaded: the sendmail path never validates a pattern

    match = re.fullmatch(r"(\*|[^@\s*<>]+)@([^@\s*<>]+)", pattern.strip())
    if not match or not match.group(2).rstrip("."):
        raise ValueError(
            f"{pattern!r} is not an address or a '*@domain' pattern "
            "(mqd is never an open relay: list the senders your applications use)"
        )
    return f"{match.group(1)}@{match.group(2).rstrip('.').lower()}"


#: A-Z to a-z, and nothing else: the case mail software agrees on.
_ASCII_LOWER = {upper: upper + 32 for upper in range(65, 91)}


def _fold(text: str) -> str:
    """``text`` with its ASCII letters in lower case. Not Unicode's case mapping: that makes
    look-alikes equal (a long s folds to ``s``, the Kelvin sign lowers to ``k``, the ffi
    ligature folds to ``ffi``), so an allowed address would let another mailbox through."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def sender_allowed(sender: str, patterns: "Iterable[str]") -> bool:
    """True when ``sender`` matches one pattern: an exact address or ``*@domain``.

    Domains compare without a trailing dot; domains and local parts compare with ASCII
    letters case-insensitive and every other character exact, so a pattern never matches
    beyond one mailbox (or one domain), not even a look-alike of it.
    """
    local, at, domain = sender.rpartition("@")
    if not at or not local:
        return False
    domain = _fold(domain.rstrip("."))
    local = _fold(local)
    for pattern in patterns:
        p_local, _, p_domain = pattern.rpartition("@")
        if _fold(p_domain.rstrip(".")) != domain:
            continue
        if p_local == "*" or _fold(p_local) == local:
            return True
    return False


def route_of(
    sender: str, routes: "Sequence[RouteLike]", default: tuple[str, ...]
) -> tuple[str, ...]:
    """The relay chain for mail from ``sender``: the first route naming it exactly, else the
    first matching its domain (``*@domain``), else ``default`` (its spool's)."""
    if sender and routes:
        for route in routes:
            if sender_allowed(sender, [p for p in route.senders if not p.startswith("*@")]):
                return route.relays
        for route in routes:
            if sender_allowed(sender, [p for p in route.senders if p.startswith("*@")]):
                return route.relays
    return default


def policy_refusal(
    sender: str,
    from_value: str | None,
    spool: "SpoolLike",
    relays: "Iterable[tuple[str, Sequence[str]]]",
    sender_value: str | None = None,
) -> str | None:
    """Why the message is refused, or None: ``sender`` (the envelope's) and, unless the spool
    says ``check_from = false``, each address of the From header (``from_value``; None when
    there is none) and of the Sender header (``sender_value``: mail programs show it too, "on
    behalf of") against the spool's list and each of ``relays``' (its name and its list, for
    every relay of the message's route)."""
    relays = tuple(relays)
    refusal = _refusal("sender", sender, spool, relays)
    if refusal or not spool.check_from:
        return refusal  # without From and Sender headers, the envelope sender alone is checked
    for header, value in (("From", from_value), ("Sender", sender_value)):
        if value is None:
            continue
        addresses = _from_addresses(value, header)
        if isinstance(addresses, str):
            return f"{addresses}: {FROM_ADVICE.format(path=spool.path)}"
        for address in addresses:
            refusal = _refusal(f"{header} address", address, spool, relays)
            if refusal:
                return f"{refusal}; {FROM_ADVICE.format(path=spool.path)}"
    return None


def _refusal(
    what: str, address: str, spool: "SpoolLike", relays: "tuple[tuple[str, Sequence[str]], ...]"
) -> str | None:
    """Why ``address`` (``what``, e.g. "sender", names it in the reason) is not allowed, or None
    when the spool's list and each of ``relays``' lists that is not empty all match it."""
    if spool.allowed_senders and not sender_allowed(address, spool.allowed_senders):
        return (
            f"{what} {address} is not allowed: it matches no entry of allowed_senders "
            f"of the spool {spool.path}"
        )
    for name, patterns in relays:
        if patterns and not sender_allowed(address, patterns):
            return (
                f"{what} {address} is not allowed: it matches no entry of "
                f"allowed_senders of the relay {name!r}"
            )
    return None


#: From (and Sender) values read (an application sends from a few, many times; reading one
#: costs several times the rest of the check). Short ones only, and at most _FROM_CACHE_SIZE:
#: emptied when full.
_from_cache: "dict[tuple[str, str], tuple[str, ...] | str]" = {}
_FROM_CACHE_SIZE = 1024


def _from_addresses(value: str, header: str = "From") -> "tuple[str, ...] | str":
    """The addresses of a From (or Sender: ``header``) header's value, or why it cannot be
    checked."""
    found = _from_cache.get((header, value))
    if found is not None:
        return found
    try:
        addresses = header_addresses(value, header.lower(), strict=True)
    except MessageParseError as exc:
        found = str(exc)
    else:
        found = tuple(addresses) or f"the {header} header holds no address ({value!r})"
    if len(value) <= 200:
        if len(_from_cache) >= _FROM_CACHE_SIZE:
            _from_cache.clear()
        _from_cache[(header, value)] = found
    return found


class _Route:
    __slots__ = ("relays", "senders")

    def __init__(self, senders: "Sequence[str]", relays: "Sequence[str]") -> None:
        self.senders = tuple(senders)
        self.relays = tuple(relays)


class SenderRules:
    """One spool's sender policy as plain data: what ``policy_refusal`` needs for mail taken
    from it (its list, ``check_from``, its relays, the routes and the relays' lists). ``mqd
    send`` builds it from the config; ``mqd install-sendmail`` writes ``to_data`` into its
    launcher, so that ``mqd sendmail`` checks the sender without reading the config."""

    __slots__ = ("allowed_senders", "check_from", "path", "relay_lists", "relays", "routes")

    def __init__(
        self,
        *,
        path: str,
        allowed_senders: "Sequence[str]" = (),
        check_from: bool = True,
        relays: "Sequence[str]" = (),
        routes: "Sequence[tuple[Sequence[str], Sequence[str]]]" = (),
        relay_lists: "Mapping[str, Sequence[str]] | None" = None,
    ) -> None:
        self.path = path
        self.allowed_senders = tuple(allowed_senders)
        self.check_from = check_from
        self.relays = tuple(relays)
        self.routes = tuple(_Route(senders, chain) for senders, chain in routes)
        self.relay_lists = {name: tuple(p) for name, p in (relay_lists or {}).items() if p}

    @classmethod
    def from_config(cls, config: "Config", spool: "SpoolConfig") -> "SenderRules":
        return cls(
            path=str(spool.path),
            allowed_senders=spool.allowed_senders,
            check_from=spool.check_from,
            relays=spool.relays,
            routes=[(route.senders, route.relays) for route in config.routes],
            relay_lists={name: relay.allowed_senders for name, relay in config.relays.items()},
        )

    def to_data(self) -> "dict[str, Any]":
        """These rules as a literal (strings, booleans, lists, a dict): ``from_data`` reads it."""
        return {
            "path": self.path,
            "allowed_senders": list(self.allowed_senders),
            "check_from": self.check_from,
            "relays": list(self.relays),
            "routes": [[list(r.senders), list(r.relays)] for r in self.routes],
            "relay_lists": {name: list(p) for name, p in self.relay_lists.items()},
        }

    @classmethod
    def from_data(cls, data: "Mapping[str, Any]") -> "SenderRules":
        return cls(**data)

    def refusal(
        self, sender: str, from_value: str | None, sender_value: str | None = None
    ) -> str | None:
        """Why mail from ``sender`` with the From header ``from_value`` (None: it has none) and
        the Sender header ``sender_value`` is refused, or None: ``policy_refusal`` for this
        spool and the message's route."""
        chain = route_of(sender, self.routes, self.relays)
        lists = [(name, self.relay_lists.get(name, ())) for name in chain]
        return policy_refusal(sender, from_value, self, lists, sender_value)
