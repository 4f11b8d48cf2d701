"""What stands between a message and a relay: the relay's circuit breaker and its quota.

``Guards.admit(name)`` answers whether relay ``name`` may take a message now (and counts it
against the quota), or how long to wait; a per-second quota that frees up within ``PACE``
seconds is waited for here, so a burst is paced rather than diverted or deferred. The quota
counts survive restarts: they are kept in the queue store's small state (``save``/``load``).
"""

from __future__ import annotations

import logging

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.config.schema import Config
from mqd.delivery.accounts import ACCOUNT_STATE, AccountLimits
from mqd.delivery.circuit import Circuit, CircuitState
from mqd.delivery.health import RelayHealth
from mqd.delivery.quota import Quota, dump_quotas, load_quotas
from mqd.delivery.suppression import SUPPRESSION_STATE, Suppressions
from mqd.queue.store import QueueStore

__all__ = ["PACE", "QUOTA_STATE", "Guards"]

log = logging.getLogger("mqd.delivery")

#: A per-second quota that frees up within this many seconds is waited for, not deferred.
PACE = 1.0
#: The store's small-state name of the quota counts.
QUOTA_STATE = "quota"


class Guards:
    def __init__(self, config: Config, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.circuits: dict[str, Circuit] = {}
        self.quotas: dict[str, Quota] = {}
        #: Each relay's recent attempts (kept across reloads, by name).
        self.health: dict[str, RelayHealth] = {}
        #: The ``[[account]]`` limits (intake asks them too, for accounts that refuse).
        self.accounts = AccountLimits(config, clock=clock)
        #: Recipients not mailed again (``mqd.delivery.suppression``).
        self.suppressions = Suppressions()
        self.reconfigure(config)

    def health_of(self, name: str) -> RelayHealth:
        health = self.health.get(name)
        if health is None:
            health = self.health[name] = RelayHealth()
        return health

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config. A relay whose breaker and quota settings did not change keeps
        its circuit state; quota counts always carry over (the provider still counts them)."""
        circuits, quotas = {}, {}
        for name, relay in config.relays.items():
            circuit = self.circuits.get(name)
            circuits[name] = (
                circuit
                if circuit is not None and circuit.config == relay.circuit
                else Circuit(name, relay.circuit, clock=self.clock.monotonic)
            )
            quota = self.quotas.get(name)
            share = relay.quota.divided(config.queue.workers)  # this worker's part of the limits
            quotas[name] = (
                quota
                if quota is not None and quota.config == share
                else Quota(name, share, clock=self.clock.time, monotonic=self.clock.monotonic)
            )
            if quota is not None and quotas[name] is not quota:
                quotas[name].load(quota.to_json())
        self.circuits, self.quotas = circuits, quotas
        self.accounts.reconfigure(config)

    async def admit(self, name: str) -> tuple[float, str] | None:
        """None when ``name`` may take a message now (counted against its quota); otherwise
        (seconds to wait, why)."""
        circuit, quota = self.circuits[name], self.quotas[name]
        while True:
            wait = circuit.admit()
            if wait is not None:
                return wait, f"is unhealthy ({circuit.reason})"
            hold = quota.take()
            if hold is None:
                return None
            circuit.release()
            if hold.limit == "per-second" and hold.seconds <= PACE:
                await self.clock.sleep(hold.seconds)
                continue
            return hold.seconds, f"reached its {hold.limit} quota"

    def reset(self, names: list[str] | None = None) -> None:
        """Close the circuits of ``names`` (None: every relay): ``mqd queue flush``."""
        for name in names if names is not None else list(self.circuits):
            circuit = self.circuits.get(name)
            if circuit is not None and circuit.state is not CircuitState.CLOSED:
                circuit.reset()

    async def load(self, store: QueueStore) -> None:
        try:
            raw = await store.load_state(QUOTA_STATE)
        except OSError as exc:
            log.warning("cannot read the saved quota counts: %s", exc)
            return
        if raw is not None:
            load_quotas(self.quotas, raw)
        try:
            raw = await store.load_state(ACCOUNT_STATE)
        except OSError as exc:
            log.warning("cannot read the saved account counts: %s", exc)
            return
        if raw is not None:
            self.accounts.load(raw)
        try:
            raw = await store.load_state(SUPPRESSION_STATE)
        except OSError as exc:
            log.warning("cannot read the suppression list: %s", exc)
            return
        if raw is not None:
            self.suppressions.load(raw)

    async def save(self, store: QueueStore) -> None:
        """Save the counts (and the suppression list) when they changed since the last save."""
        if self.suppressions.dirty:
            try:
                await store.save_state(SUPPRESSION_STATE, self.suppressions.dump())
            except OSError as exc:
                self.suppressions.dirty = True
                log.warning("cannot save the suppression list: %s", exc)
        if self.accounts.dirty:
            try:
                await store.save_state(ACCOUNT_STATE, self.accounts.dump())
            except OSError as exc:
                log.warning("cannot save the account counts: %s", exc)
        if not any(quota.dirty for quota in self.quotas.values()):
            return
        for quota in self.quotas.values():
            quota.dirty = False
        try:
            await store.save_state(QUOTA_STATE, dump_quotas(self.quotas))
        except OSError as exc:
            log.warning("cannot save the quota counts: %s", exc)
