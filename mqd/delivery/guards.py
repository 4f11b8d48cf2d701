"""What stands between a message and a relay: the relay's circuit breaker and its quota.

``Guards.admit(name)`` answers whether relay ``name`` may take a message now (and counts it
against the quota), or how long to wait; a per-second quota that frees up within ``PACE``
seconds is waited for here, so a burst is paced rather than diverted or deferred. The quota
counts survive restarts: they are kept in the queue store's small state (``save``/``load``).

On a store shared by a fleet (``QueueStore.fleet()``: PostgreSQL), ``load`` switches the
guards to the fleet's counts (``mqd.delivery.fleet``): the relays' minute/hour/day limits, the
accounts' limits and the suppression list are then one for the fleet, in the database; the
per-second rate and the circuits stay each node's own. The delivery code asks the guards the
same either way.
"""

from __future__ import annotations

import logging

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.config.schema import Config
from mqd.delivery.accounts import ACCOUNT_STATE, AccountLimits
from mqd.delivery.circuit import Circuit, CircuitState
from mqd.delivery.fleet import SharedQuota, per_node, sync_suppressions, windows_of
from mqd.delivery.health import RelayHealth
from mqd.delivery.quota import Hold, Quota, dump_quotas, load_quotas
from mqd.delivery.suppression import SUPPRESSION_STATE, Suppressions
from mqd.queue.shared import FleetState, Returned
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
        #: The fleet's shared counts (None: this node counts alone, in its small state).
        self.fleet: FleetState | None = None
        #: Relays' and accounts' windows counted for the fleet, by "relay:NAME"/"account:NAME".
        self.shared: dict[str, SharedQuota] = {}
        #: Nodes that delivered lately (the fleet's per-second rates are shared among them).
        self.nodes = 1
        self._version = 0
        self._back: list[Returned] = []
        self._active = False
        self.config = config
        self.reconfigure(config)

    def health_of(self, name: str) -> RelayHealth:
        health = self.health.get(name)
        if health is None:
            health = self.health[name] = RelayHealth()
        return health

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config. A relay whose breaker and quota settings did not change keeps
        its circuit state; quota counts always carry over (the provider still counts them)."""
        self.config = config
        circuits, quotas = {}, {}
        for name, relay in config.relays.items():
            circuit = self.circuits.get(name)
            circuits[name] = (
                circuit
                if circuit is not None and circuit.config == relay.circuit
                else Circuit(name, relay.circuit, clock=self.clock.monotonic)
            )
            quota = self.quotas.get(name)
            share = relay.quota.divided(config.queue.limit_shares)  # this worker's part
            if self.fleet is not None:
                share = per_node(relay.quota, self.nodes)
            quotas[name] = (
                quota
                if quota is not None and quota.config == share
                else Quota(name, share, clock=self.clock.time, monotonic=self.clock.monotonic)
            )
            if quota is not None and quotas[name] is not quota:
                quotas[name].load(quota.to_json())
        self.circuits, self.quotas = circuits, quotas
        self.accounts.reconfigure(config)
        if self.fleet is not None:
            self._share(config, self.fleet)

    def _share(self, config: Config, fleet: FleetState) -> None:
        """The fleet's windows of every relay and waiting account (kept when unchanged)."""
        wanted = {f"relay:{name}": relay.quota for name, relay in config.relays.items()}
        for account in config.accounts:
            wanted[f"account:{account.name}"] = account.limits
        shared = {}
        for key, limits in wanted.items():
            windows = windows_of(limits)
            old = self.shared.pop(key, None)
            if old is not None and old.windows == windows:
                shared[key] = old
            elif windows:
                shared[key] = SharedQuota(key, windows, fleet, self.clock)
        for gone in self.shared.values():
            self._back += gone.stale(everything=True)
        self.shared = shared

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
                self._active = self.fleet is not None
                try:
                    hold = await self._take_shared(f"relay:{name}")
                except BaseException:  # the database out of reach: nothing taken
                    quota.refund()
                    circuit.release()
                    raise
                if hold is None:
                    return None
                quota.refund()
            circuit.release()
            if hold.limit == "per-second" and hold.seconds <= PACE:
                await self.clock.sleep(hold.seconds)
                continue
            return hold.seconds, f"reached its {hold.limit} quota"

    async def _take_shared(self, key: str) -> Hold | None:
        shared = self.shared.get(key)
        if shared is None:
            return None
        self._active = True
        return await shared.take()

    async def admit_account(self, name: str) -> tuple[float, str] | None:
        """A delivery of account ``name``'s mail: None when it may go (counted), or (seconds
        to wait, why): ``AccountLimits.admit``, for the fleet when the store is shared."""
        if self.fleet is None:
            return self.accounts.admit(name)
        shared = self._waiting(name)
        if shared is None:
            return None
        hold = await self._take_shared(shared.key)
        self.accounts.seen[name] = shared.used
        if hold is None:
            return None
        return hold.seconds, f"account {name} reached its {hold.limit} limit"

    async def _check_in(self, name: str) -> Hold | None:
        """An account that refuses over its limits: one message handed over, for the fleet."""
        shared = self.shared.get(f"account:{name}")
        if shared is None:
            return None
        hold = await shared.take()
        self.accounts.seen[name] = shared.used
        return hold

    def _check_out(self, name: str) -> None:
        shared = self.shared.get(f"account:{name}")
        if shared is not None:
            shared.refund()

    def give_back_account(self, name: str) -> None:
        """A delivery admitted by ``admit_account`` did not go out after all."""
        if self.fleet is None:
            self.accounts.give_back(name)
            return
        shared = self._waiting(name)
        if shared is not None:
            shared.refund()

    def _waiting(self, name: str) -> SharedQuota | None:
        """The fleet's counts of account ``name`` when it waits over its limits (one that
        refuses was counted at hand-over)."""
        account = self.accounts.configs.get(name)
        if account is None or account.over_limit != "wait":
            return None
        return self.shared.get(f"account:{name}")

    def sent(self, name: str, seconds: float) -> int:
        """Relay ``name``'s sends in the last hour or day (``seconds``): the fleet's as its last
        reservation saw them, or this node's own count."""
        shared = self.shared.get(f"relay:{name}")
        if shared is not None:
            return shared.used.get("per-hour" if seconds <= 3600 else "per-day", 0)
        quota = self.quotas.get(name)
        return quota.sent_within(seconds) if quota is not None else 0

    def holds(self, name: str) -> int:
        """How often relay ``name``'s quota held a message back (on this node)."""
        quota, shared = self.quotas.get(name), self.shared.get(f"relay:{name}")
        return (quota.holds if quota else 0) + (shared.holds if shared else 0)

    def reset(self, names: list[str] | None = None) -> None:
        """Close the circuits of ``names`` (None: every relay): ``mqd queue flush``."""
        for name in names if names is not None else list(self.circuits):
            circuit = self.circuits.get(name)
            if circuit is not None and circuit.state is not CircuitState.CLOSED:
                circuit.reset()

    async def load(self, store: QueueStore) -> None:
        fleet = store.fleet()
        if fleet is not None:
            await self._join(fleet)
            return
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

    async def _join(self, fleet: FleetState) -> None:
        """Count with the fleet from now on, and take its suppression list."""
        self.fleet = fleet
        self.accounts.shared = self._check_in
        self.accounts.shared_refund = self._check_out
        self.suppressions = Suppressions()
        self.suppressions.shared = True
        self.reconfigure(self.config)
        self._version = await sync_suppressions(fleet, self.suppressions, 0, self.clock.time())

    async def _sync(self, fleet: FleetState, *, stopping: bool = False) -> None:
        """Give back stale reservations, say this node is alive (when it delivered lately),
        and exchange the suppression list's changes with the fleet."""
        now = self.clock.time()
        back, self._back = self._back, []
        for shared in self.shared.values():
            back += shared.stale(everything=stopping)
        try:
            await fleet.give_back(back)
        except Exception:
            self._back = back + self._back
            raise
        if self._active and not stopping:
            self._active = False
            nodes = await fleet.heartbeat(now)
            if nodes != self.nodes:
                self.nodes = nodes
                self.reconfigure(self.config)
        self._version = await sync_suppressions(fleet, self.suppressions, self._version, now)

    async def stop(self, store: QueueStore) -> None:
        """The node stops: give back every reservation (the last save)."""
        if self.fleet is None:
            await self.save(store)
            return
        try:
            await self._sync(self.fleet, stopping=True)
            await self.fleet.leave()
        except Exception as exc:
            log.warning("cannot give back the reserved sends: %s", exc)

    async def save(self, store: QueueStore) -> None:
        """Save the counts (and the suppression list) when they changed since the last save."""
        if self.fleet is not None:
            try:
                await self._sync(self.fleet)
            except Exception as exc:
                log.warning("cannot reach the fleet's counts and suppression list: %s", exc)
            return
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
