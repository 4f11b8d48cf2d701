"""Queue administration: the operations behind ``mqd queue ...``, ``mqd status`` and ``mqd reload``.

The operations work on a ``Node``: a running daemon (reached through its control socket,
``mqd.admin.control``), or a stopped queue that the command opens itself
(``mqd.admin.client.offline``): listing, showing and holding need no relay, so they work on a
stopped queue whose relays could not even be built. Every queue change is a store operation; a
message being delivered right now cannot be deleted or bounced (the command says so, and can be
repeated a moment later).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mqd.admin.status import (
    AccountStatus,
    FaultStatus,
    QuotaStatus,
    RelayStatus,
    SourceStatus,
    Status,
)
from mqd.admin.suppress import SuppressionOps
from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.config.schema import Config
from mqd.config.units import format_duration
from mqd.delivery.deliverer import Deliverer
from mqd.delivery.guards import Guards
from mqd.delivery.health import circuit_word, verdict
from mqd.errors import AdminError, QueueUnavailableError
from mqd.events import Deleted, Event
from mqd.faults import Paused
from mqd.intake.source import SourceStatus as SourceCounts
from mqd.queue.entry import RcptStatus
from mqd.queue.store import EntryBusy, Listed, QueueCounts, QueueStore, UnknownEntry
from mqd.relays.base import Relay
from mqd.version import __version__

__all__ = ["ADMIN_BOUNCE", "AdminError", "Node", "QueueAdmin", "queue_row"]

log = logging.getLogger("mqd.admin")

#: The reply recorded for recipients returned with ``mqd queue bounce``.
ADMIN_BOUNCE = "554 5.7.0 returned to the sender by the mail administrator"
#: How many header bytes ``show`` returns.
HEADER_LIMIT = 16 * 1024
#: Seconds ``mqd status`` waits for the queue's counts (a database out of reach: it answers
#: without them).
STATUS_WAIT = 5.0


class Node(Protocol):
    """What administration sees of a node: a running daemon, or a stopped queue."""

    @property
    def config(self) -> Config: ...
    @property
    def store(self) -> QueueStore: ...
    @property
    def deliverer(self) -> Deliverer: ...
    @property
    def relays(self) -> Mapping[str, Relay]: ...
    @property
    def guards(self) -> Guards: ...
    @property
    def started_at(self) -> float: ...
    @property
    def faults(self) -> Sequence[Paused]: ...
    def emit(self, event: Event) -> None: ...
    async def reload(self) -> str: ...
    def source_status(self) -> Sequence[SourceCounts]:
        """The running intake sources other than the spools (none for a stopped queue)."""
        ...


def queue_row(item: Listed, now: float) -> dict[str, Any]:
    """One message as ``mqd queue list --json`` prints it."""
    entry = item.entry
    return {
        "id": entry.id,
        "state": item.state.value,
        "node": item.node,
        "sender": entry.sender,
        "subject": entry.subject,
        "recipients": [
            {"address": r.address, "status": r.status.value, "reply": r.reply}
            for r in entry.recipients
        ],
        "size": entry.size,
        "attempts": entry.attempts,
        "next_attempt_at": entry.next_attempt_at,
        "last_reply": entry.last_reply,
        "created_at": entry.created_at,
        "age": round(now - entry.created_at, 1),
        "relays": entry.relays,
    }


class QueueAdmin(SuppressionOps):
    node: Node

    def __init__(self, node: Node, *, online: bool = True, clock: Clock = SYSTEM_CLOCK) -> None:
        self.node = node
        #: False for a stopped queue opened by the command itself.
        self.online = online
        self.clock = clock

    @property
    def store(self) -> QueueStore:
        return self.node.store

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        method = getattr(self, f"op_{op}", None)
        if method is None:
            raise AdminError(f"unknown operation {op!r}")
        try:
            return await method(**args)
        except (UnknownEntry, EntryBusy) as exc:
            raise AdminError(str(exc)) from None

    # -- reading ----------------------------------------------------------------------------------

    async def op_list(
        self, relay: str | None = None, state: str | None = None
    ) -> list[dict[str, Any]]:
        now = self.clock.time()
        rows = []
        for item in await self.store.entries():
            if relay is not None and relay not in item.entry.relays:
                continue
            if state is None or item.state.value == state:
                rows.append(queue_row(item, now))
        return rows

    async def op_show(self, id: str) -> dict[str, Any]:
        entry_id = await self._resolve(id)
        item = await self.store.get(entry_id)
        row = queue_row(item, self.clock.time())
        row["entry"] = dict(json.loads(item.entry.to_json()))
        row["body_path"] = self.store.where(item.entry)
        try:
            body = await self.store.body(item.entry)
        except OSError as exc:
            row["headers"] = f"(cannot read the message: {exc})"
        else:
            end = body.find(b"\r\n\r\n")
            end = body.find(b"\n\n") if end < 0 else end
            head = body[: end if end >= 0 else HEADER_LIMIT][:HEADER_LIMIT]
            row["headers"] = head.decode("utf-8", "replace")
        return row

    async def op_status(self) -> dict[str, Any]:
        return (await self.status()).to_dict()

    async def _counts(self) -> tuple[QueueCounts, int]:
        """The queue's counts and the failed folder's; none (and the fault, shown with the
        others) while a queue database is out of reach, rather than no status at all."""
        try:
            async with asyncio.timeout(STATUS_WAIT):
                return await self.store.counts(), await self.store.failed.count()
        except (QueueUnavailableError, TimeoutError):
            if not self.online:
                raise
            return QueueCounts(by_state={}, size=0, oldest=None, oldest_unheld=None), 0

    async def status(self) -> Status:
        node = self.node
        config = node.config
        counts, failed = await self._counts()
        now = self.clock.time()
        # Not read yet, so routed by their spool: exact unless [[route]] tables route by sender.
        by_relay = dict(counts.by_relay)
        if counts.unread_by_source and not config.routes:
            spools = {spool.key: spool for spool in (*config.spools, *config.sources)}
            for source, count in counts.unread_by_source.items():
                spool = spools.get(source)
                for name in spool.relays if spool is not None else ():
                    by_relay[name] = by_relay.get(name, 0) + count
        relays = {
            name: self._relay_status(name, relay_config.plugin, by_relay.get(name, 0))
            for name, relay_config in config.relays.items()
        }
        return Status(
            running=self.online,
            pid=os.getpid() if self.online else None,
            version=__version__,
            uptime=round(now - node.started_at, 1) if self.online else None,
            config=str(config.source) if config.source else None,
            queue_dir=str(config.queue.own_dir),
            node=self.store.node,
            messages=counts.total,
            by_state={state.value: n for state, n in counts.by_state.items()},
            not_read=counts.not_read,
            bytes=counts.size,
            oldest_age=round(now - counts.oldest, 1) if counts.oldest is not None else None,
            failed=failed,
            spools=[str(s.path) for s in config.spools],
            relays=relays,
            faults=[
                FaultStatus(fault.what, fault.reason or "", round(fault.retry_in(), 1))
                for fault in node.faults
                if fault.active
            ],
            redispatched=counts.redispatched,
            database=config.queue.database.dsn if config.queue.database is not None else None,
            role=config.queue.role,
            sources=[
                SourceStatus(
                    name=source.name,
                    kind=source.kind,
                    listening=list(source.listening),
                    connections=source.connections,
                    accepted=source.accepted,
                    refused=source.refused,
                    connected=source.connected,
                    last_error=source.last_error,
                )
                for source in node.source_status()
            ],
            accounts={
                use.name: AccountStatus(
                    over_limit=use.over_limit,
                    limits={window: limit for window, _, limit in use.windows},
                    sent={window: sent for window, sent, _ in use.windows},
                    held=use.held,
                    refused=use.refused,
                )
                for use in node.guards.accounts.use()
            },
            suppressed=len(node.guards.suppressions.items(now)),
            retries=_retries(config),
        )

    def _relay_status(self, name: str, plugin: str, queued: int) -> RelayStatus:
        guards = self.node.guards
        circuit = guards.circuits.get(name)
        quota = guards.quotas.get(name)
        relay = self.node.relays.get(name)
        quota_status = None
        limits = self.node.config.relays[name].quota
        if quota is not None and limits.limited:
            quota_status = QuotaStatus(
                max_per_second=limits.max_per_second,
                max_per_hour=limits.max_per_hour,
                sent_last_hour=guards.sent(name, 3600) if limits.max_per_hour else None,
                max_per_day=limits.max_per_day,
                sent_last_day=guards.sent(name, 86400) if limits.max_per_day else None,
                holds=guards.holds(name),
            )
        now = self.clock.time()
        health = self.node.guards.health.get(name)
        recent = health.recent(now) if health is not None and self.online else []
        state = circuit_word(
            (circuit.state.value if circuit else "closed") if self.online else None
        )
        return RelayStatus(
            plugin=plugin,
            describe=relay.describe() if relay is not None else None,
            health=verdict(state, recent),
            failures_in_a_row=circuit.failures if circuit else 0,
            errors=circuit.total_failures if circuit else 0,
            last_error=((circuit.reason or None) if circuit else None)
            or (health.last_error(now) if health is not None else None),
            queued=queued,
            quota=quota_status,
            circuit=state,
            recent_attempts=len(recent),
            recent_failures=sum(1 for a in recent if a.result != "delivered"),
            last_success_at=health.last_success_at if health is not None else None,
            last_failure_at=health.last_failure_at if health is not None else None,
        )

    # -- changing ---------------------------------------------------------------------------------

    async def op_retry(
        self, ids: list[str] | None = None, all: bool = False, relay: str | None = None
    ) -> dict[str, Any]:
        """Make deferred (and waiting) messages due now. Held ones stay held."""
        if all or relay:
            # The circuits first: an entry made due must not meet a circuit still open.
            self.node.guards.reset([relay] if relay else None)
            done = await self.store.retry(None, relay=relay)
        else:
            done = await self.store.retry(await self._resolve_all(ids))
        log.info("retry requested for %d message(s)", len(done))
        return {"retried": done}

    async def op_flush(self) -> dict[str, Any]:
        return await self.op_retry(all=True)

    async def op_hold(self, ids: list[str]) -> dict[str, Any]:
        chosen = await self._resolve_all(ids)
        held = {item.entry.id for item in await self._listed(chosen) if item.entry.held}
        done = await self.store.hold(chosen)
        for entry_id in done:
            if entry_id not in held:
                log.warning("%s held by the administrator", entry_id)
        return {"held": done}

    async def op_release(self, ids: list[str] | None = None, all: bool = False) -> dict[str, Any]:
        done = await self.store.unhold(None if all else await self._resolve_all(ids))
        for entry_id in done:
            log.warning("%s released by the administrator", entry_id)
        return {"released": done}

    async def op_delete(self, ids: list[str]) -> dict[str, Any]:
        """Remove messages from the queue for good: no delivery, no bounce."""
        deleted = await self.store.delete(await self._resolve_all(ids))
        for entry in deleted:
            log.warning(
                "%s deleted by the administrator (from=<%s>, %d recipient(s) not delivered)",
                entry.id,
                entry.sender,
                len(entry.pending),
            )
            self.node.emit(Deleted.of(entry, self.clock.time()))
        return {"deleted": [entry.id for entry in deleted]}

    async def op_bounce(self, ids: list[str]) -> dict[str, Any]:
        """Fail every pending recipient now: a bounce to the sender, the message to failed/."""
        leases = await self.store.lease_ids(await self._resolve_all(ids))
        for lease in leases:
            entry = lease.entry
            for rcpt in entry.pending:
                rcpt.status = RcptStatus.FAILED
                rcpt.reply = ADMIN_BOUNCE
                rcpt.status_code = "5.7.0"
            log.warning("%s returned to <%s> by the administrator", entry.id, entry.sender)
            try:
                await self.node.deliverer.finish(lease, entry)
            except BaseException:
                await self.store.release(lease)
                raise
        return {"bounced": [lease.entry.id for lease in leases]}

    async def op_reload(self) -> dict[str, Any]:
        if not self.online:
            raise AdminError("no daemon is running: there is nothing to reload")
        return {"reloaded": await self.node.reload()}

    async def op_find(self, ids: list[str]) -> dict[str, str]:
        """Which of ``ids`` (or starts of ids) are in this queue, as {given: queue id}: how
        ``mqd.admin.fanout`` finds the worker that holds a message."""
        return await self.store.find(ids)

    # -- helpers ----------------------------------------------------------------------------------

    async def _resolve(self, given: str) -> str:
        found = await self.store.find([given])
        if given not in found:
            raise unknown_id(given)
        return found[given]

    async def _resolve_all(self, ids: list[str] | None) -> list[str]:
        if not ids:
            raise AdminError("name one or more queue ids (or --all)")
        found = await self.store.find(ids)
        for given in ids:
            if given not in found:
                raise unknown_id(given)
        return list(dict.fromkeys(found[given] for given in ids))

    async def _listed(self, ids: list[str]) -> list[Listed]:
        return [await self.store.get(entry_id) for entry_id in ids]


def unknown_id(id: str) -> AdminError:
    return AdminError(f"no message {id!r} in the queue ('mqd queue list' shows the ids)")


def ambiguous_id(id: str, count: int) -> AdminError:
    return AdminError(f"{id!r} is the start of {count} queue ids: give more of it")


def _retries(config: Config) -> str:
    """The retry policy as ``mqd status`` says it."""
    policy = config.queue.retry
    text = (
        f"{format_duration(policy.initial)} doubling to {format_duration(policy.max)}, "
        f"for {format_duration(policy.lifetime)}"
    )
    if policy.max_attempts is not None:
        text += f" or {policy.max_attempts} attempts"
    return text
