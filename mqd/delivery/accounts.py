"""Sending limits per ``[[account]]`` (``mqd.config.accounts``), counted in messages.

An account over a limit either holds its mail back (``over_limit = "wait"``: the delivery is
released uncounted and tried again when the window has room, as a relay's quota does) or has
intake refuse it at hand-over (``"refuse"``: counted when accepted, with the reason in failed/
or given to the caller). The counts survive restarts in the store's small state, as the relays'
quota counts do; on a store shared by a fleet they are the fleet's (``mqd.delivery.fleet``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.config.schema import AccountConfig, Config
from mqd.delivery.quota import Hold, Quota

__all__ = ["ACCOUNT_STATE", "AccountLimits", "AccountUse"]

log = logging.getLogger("mqd.delivery")

#: The store's small-state name of the accounts' counts.
ACCOUNT_STATE = "accounts"


@dataclass(frozen=True)
class AccountUse:
    """One account's use against its limits, for ``mqd status``, the API and the metrics."""

    name: str
    over_limit: str
    #: (window, sent in it, its limit) for each window the account limits.
    windows: tuple[tuple[str, int, int], ...]
    #: Deliveries held back (wait) or messages refused (refuse) over a limit.
    held: int
    refused: int


class AccountLimits:
    def __init__(self, config: Config, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.configs: dict[str, AccountConfig] = {}
        self.quotas: dict[str, Quota] = {}
        self.refused: dict[str, int] = {}
        #: The fleet's sends per window (name -> "per-hour" -> n), as the guards last saw them
        #: (only when the counts are the fleet's).
        self.seen: dict[str, dict[str, int]] = {}
        #: Set by the guards when the counts are a fleet's: takes one of an account's sends
        #: there (None: the counts are this node's).
        self.shared: Callable[[str], Awaitable[Hold | None]] | None = None
        #: Set with ``shared``: gives one of an account's sends back to the fleet's counts.
        self.shared_refund: Callable[[str], None] | None = None
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config; an account keeps its counts across it (by name)."""
        quotas: dict[str, Quota] = {}
        for account in config.accounts:
            share = account.limits.divided(config.queue.limit_shares)
            old = self.quotas.get(account.name)
            quota = Quota(
                f"account {account.name}",
                share,
                clock=self.clock.time,
                monotonic=self.clock.monotonic,
            )
            if old is not None:
                quota.load(old.to_json())
                quota.holds = old.holds
            quotas[account.name] = quota
        self.configs = {account.name: account for account in config.accounts}
        self.quotas = quotas

    def admit(self, name: str) -> tuple[float, str] | None:
        """A delivery of account ``name``'s mail: None when it may go (counted), or (seconds to
        wait, why). Accounts that refuse at hand-over were counted then: None."""
        quota = self.quotas.get(name)
        if quota is None or self.configs[name].over_limit != "wait":
            return None
        hold = quota.take()
        if hold is None:
            return None
        return hold.seconds, f"account {name} reached its {hold.limit} limit"

    def give_back(self, name: str) -> None:
        """A delivery admitted by ``admit`` did not go out after all (no relay could take it)."""
        quota = self.quotas.get(name)
        if quota is not None and self.configs[name].over_limit == "wait":
            quota.refund()

    def check_out(self, name: str) -> None:
        """A hand-over ``check_in`` counted queued nothing after all (a repeat of a key handed
        over before, or the queue could not take it): its send is given back."""
        quota = self.quotas.get(name)
        if quota is None or self.configs[name].over_limit != "refuse":
            return
        if self.shared_refund is not None:
            self.shared_refund(name)
        else:
            quota.refund()

    async def check_in(self, name: str) -> str | None:
        """A message of account ``name`` handed over: None when it is taken (counted, for an
        account that refuses over its limits), or why it is refused."""
        quota = self.quotas.get(name)
        if quota is None or self.configs[name].over_limit != "refuse":
            return None
        if self.shared is not None:  # counted for the fleet
            hold = await self.shared(name)
            if hold is None:
                return None
        else:
            hold = quota.take()
            if hold is None:
                return None
            quota.holds -= 1  # a refusal, not a hold
        self.refused[name] = self.refused.get(name, 0) + 1
        return (
            f'account {name} reached its {hold.limit} limit (over_limit = "refuse"): '
            f"try again in {hold.seconds:.0f}s"
        )

    def use(self) -> list[AccountUse]:
        used = []
        for name, quota in self.quotas.items():
            limits = self.configs[name].limits
            seen = self.seen.get(name)
            windows = tuple(
                (
                    window,
                    quota.sent_within(seconds) if seen is None else seen.get(f"per-{window}", 0),
                    limit,
                )
                for window, seconds, limit in (
                    ("minute", 60.0, limits.max_per_minute),
                    ("hour", 3600.0, limits.max_per_hour),
                    ("day", 86400.0, limits.max_per_day),
                )
                if limit
            )
            used.append(
                AccountUse(
                    name,
                    self.configs[name].over_limit,
                    windows,
                    held=quota.holds,
                    refused=self.refused.get(name, 0),
                )
            )
        return used

    @property
    def dirty(self) -> bool:
        return any(quota.dirty for quota in self.quotas.values())

    def dump(self) -> bytes:
        for quota in self.quotas.values():
            quota.dirty = False
        data = {name: quota.to_json() for name, quota in self.quotas.items()}
        return json.dumps({"version": 1, "accounts": data}, sort_keys=True).encode()

    def load(self, raw: bytes) -> None:
        try:
            accounts = json.loads(raw)["accounts"]
            if not isinstance(accounts, dict):
                raise TypeError("accounts is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the saved account counts: not valid (%s)", exc)
            return
        for name, quota in self.quotas.items():
            saved = accounts.get(name)
            if isinstance(saved, dict):
                quota.load(saved)
