"""Queue administration: the operations behind ``mqd queue ...``, ``mqd status`` and ``mqd reload``.

The same code serves a running daemon (through the control socket, ``mqd.admin.control``) and a
stopped one (``offline``: the command takes the queue lock itself and works on the files), so
``mqd queue list`` answers either way. A message being delivered right now cannot be deleted or
bounced: the command says so, and it can be repeated a moment later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from mqd.delivery.circuit import CircuitState
from mqd.errors import MQDError
from mqd.events import Event, EventKind
from mqd.intake.pipeline import entry_from_body
from mqd.queue.entry import QueueEntry, RcptStatus
from mqd.version import __version__

if TYPE_CHECKING:
    from mqd.config.schema import Config
    from mqd.daemon.root import Daemon
    from mqd.plugins.host import PluginHost

__all__ = [
    "AdminError",
    "QueueAdmin",
    "ambiguous_id",
    "entry_state",
    "offline",
    "request",
    "unknown_id",
]

log = logging.getLogger("mqd.admin")

#: The reply recorded for recipients returned with ``mqd queue bounce``.
ADMIN_BOUNCE = "554 5.7.0 returned to the sender by the mail administrator"
#: How many header bytes ``show`` returns.
HEADER_LIMIT = 16 * 1024


class AdminError(MQDError):
    """An administrative request cannot be carried out (unknown id, message in flight, ...)."""


def entry_state(entry: QueueEntry, in_flight: Iterable[str]) -> str:
    """active (being delivered), held (by the administrator), deferred (tried, waiting for the
    next attempt) or waiting (not tried yet)."""
    if entry.id in in_flight:
        return "active"
    if entry.held:
        return "held"
    return "deferred" if entry.attempts else "waiting"


class QueueAdmin:
    def __init__(self, daemon: Daemon, *, online: bool = True) -> None:
        self.daemon = daemon
        #: False when working on the files of a stopped daemon: changes must be persisted then,
        #: since nothing else will act on them.
        self.online = online

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        method = getattr(self, f"op_{op}", None)
        if method is None:
            raise AdminError(f"unknown operation {op!r}")
        return await method(**args)

    # -- reading ----------------------------------------------------------------------------------

    async def op_list(
        self, relay: str | None = None, state: str | None = None
    ) -> list[dict[str, Any]]:
        in_flight = self.daemon.in_flight
        now = time.time()
        rows = []
        entries = list(self.daemon.entries.values()) + await self._read_backlog()
        for entry in sorted(entries, key=lambda e: e.created_at):
            if relay is not None and relay not in entry.relays:
                continue
            row = self._row(entry, in_flight, now)
            if state is None or row["state"] == state:
                rows.append(row)
        return rows

    async def op_show(self, id: str) -> dict[str, Any]:
        entry = await self._get(id)
        row = self._row(entry, self.daemon.in_flight, time.time())
        row["entry"] = _entry_dict(entry)
        row["body_path"] = str(self.daemon.store.body_path(entry))
        try:
            body = await self.daemon.store.load_body(entry)
        except OSError as exc:
            row["headers"] = f"(cannot read the message: {exc})"
        else:
            end = body.find(b"\r\n\r\n")
            end = body.find(b"\n\n") if end < 0 else end
            head = body[: end if end >= 0 else HEADER_LIMIT][:HEADER_LIMIT]
            row["headers"] = head.decode("utf-8", "replace")
        return row

    async def op_status(self) -> dict[str, Any]:
        daemon = self.daemon
        in_flight = daemon.in_flight
        now = time.time()
        counts = dict.fromkeys(("active", "waiting", "deferred", "held"), 0)
        oldest: float | None = None
        size = 0
        for entry in list(daemon.entries.values()):
            counts[entry_state(entry, in_flight)] += 1
            oldest = entry.created_at if oldest is None else min(oldest, entry.created_at)
            size += entry.size
        backlog = daemon.backlog
        counts["waiting"] += len(backlog)
        created = backlog.oldest_created()
        if created is not None:
            oldest = created if oldest is None else min(oldest, created)
            size += await asyncio.to_thread(self._backlog_bytes)
        # Not read yet, so routed by their spool: exact unless [[route]] tables route by sender.
        by_relay: dict[str, int] = {}
        if backlog and not daemon.config.routes:
            spools = {spool.key: spool for spool in daemon.config.spools}
            for key, _ in backlog.items():
                spool = spools.get(key)
                for name in spool.relays if spool is not None else ():
                    by_relay[name] = by_relay.get(name, 0) + 1
        failed = await _count_failed(daemon.store.failed_dir)
        relays = {}
        for name, relay_config in daemon.config.relays.items():
            circuit = daemon.deliverer.circuits.get(name)
            quota = daemon.deliverer.quotas.get(name)
            relay = daemon.relays.get(name)
            info: dict[str, Any] = {
                "plugin": relay_config.plugin,
                "describe": relay.describe() if relay is not None else None,
                "health": circuit.state.value if circuit else CircuitState.CLOSED.value,
                "failures_in_a_row": circuit.failures if circuit else 0,
                "errors": circuit.total_failures if circuit else 0,
                "last_error": (circuit.reason or None) if circuit else None,
                "queued": sum(1 for e in daemon.entries.values() if name in e.relays)
                + by_relay.get(name, 0),
            }
            if quota is not None and relay_config.quota.limited:
                q = relay_config.quota
                info["quota"] = {
                    "max_per_second": q.max_per_second,
                    "max_per_hour": q.max_per_hour,
                    "sent_last_hour": quota.sent_within(3600) if q.max_per_hour else None,
                    "max_per_day": q.max_per_day,
                    "sent_last_day": quota.sent_within(86400) if q.max_per_day else None,
                    "holds": quota.holds,
                }
            relays[name] = info
        return {
            "running": self.online,
            "pid": os.getpid() if self.online else None,
            "version": __version__,
            "uptime": round(now - daemon.started_at, 1) if self.online else None,
            "config": str(daemon.config.source) if daemon.config.source else None,
            "queue_dir": str(daemon.store.directory),
            "messages": sum(counts.values()),
            "by_state": counts,
            "not_read": len(backlog),
            "bytes": size,
            "oldest_age": round(now - oldest, 1) if oldest is not None else None,
            "failed": failed,
            "spools": [str(s.path) for s in daemon.config.spools],
            "relays": relays,
        }

    # -- changing ---------------------------------------------------------------------------------

    async def op_retry(
        self, ids: list[str] | None = None, all: bool = False, relay: str | None = None
    ) -> dict[str, Any]:
        """Make deferred (and waiting) messages due now. Held ones stay held."""
        entries = await self._select(ids, all, relay)
        now = time.time()
        done = []
        for entry in entries:
            if entry.held:
                continue
            if entry.id in self.daemon.in_flight:
                self.daemon.retry_when_done.add(entry.id)
                done.append(entry.id)
                continue
            entry.next_attempt_at = now
            await self._changed(entry)
            done.append(entry.id)
        if all or relay:
            self._reset_circuits([relay] if relay else list(self.daemon.config.relays))
        log.info("retry requested for %d message(s)", len(done))
        return {"retried": done}

    async def op_flush(self) -> dict[str, Any]:
        return await self.op_retry(all=True)

    async def op_hold(self, ids: list[str]) -> dict[str, Any]:
        done = []
        for entry in await self._select(ids):
            if not entry.held:
                entry.held = True
                self.daemon.make_room(entry.id)
                await self._save_unless_in_flight(entry)
                log.warning("%s held by the administrator", entry.id)
            done.append(entry.id)
        return {"held": done}

    async def op_release(self, ids: list[str] | None = None, all: bool = False) -> dict[str, Any]:
        done = []
        for entry in await self._select(ids, all):
            if not entry.held:
                continue
            entry.held = False
            entry.next_attempt_at = time.time()
            await self._save_unless_in_flight(entry)
            self.daemon.schedule(entry)
            log.warning("%s released by the administrator", entry.id)
            done.append(entry.id)
        return {"released": done}

    async def op_delete(self, ids: list[str]) -> dict[str, Any]:
        """Remove messages from the queue for good: no delivery, no bounce."""
        entries = await self._select(ids)
        self._refuse_in_flight(entries, "delete")
        for entry in entries:
            await self.daemon.store.remove(entry)
            self.daemon.forget(entry.id)
            log.warning(
                "%s deleted by the administrator (from=<%s>, %d recipient(s) not delivered)",
                entry.id,
                entry.sender,
                len(entry.pending),
            )
            self.daemon.emit(Event(EventKind.DELETED, entry.id, entry.summary()))
        return {"deleted": [e.id for e in entries]}

    async def op_bounce(self, ids: list[str]) -> dict[str, Any]:
        """Fail every pending recipient now: a bounce to the sender, the message to failed/."""
        entries = await self._select(ids)
        self._refuse_in_flight(entries, "bounce")
        for entry in entries:
            for rcpt in entry.pending:
                rcpt.status = RcptStatus.FAILED
                rcpt.reply = ADMIN_BOUNCE
                rcpt.status_code = "5.7.0"
            log.warning("%s returned to <%s> by the administrator", entry.id, entry.sender)
            await self.daemon.deliverer.finish(entry)
            self.daemon.forget(entry.id)
        return {"bounced": [e.id for e in entries]}

    async def op_reload(self) -> dict[str, Any]:
        if not self.online:
            raise AdminError("no daemon is running: there is nothing to reload")
        return {"reloaded": await self.daemon.reload()}

    # -- helpers ----------------------------------------------------------------------------------

    async def op_find(self, ids: list[str]) -> dict[str, str]:
        """Which of ``ids`` (or starts of ids) are in this queue, as {given: queue id}: how
        ``mqd.admin.fanout`` finds the worker that holds a message."""
        found = {}
        for given in ids:
            read, unread = self._matching(given)
            if len(read) + len(unread) > 1:
                raise ambiguous_id(given, len(read) + len(unread))
            if read or unread:
                found[given] = (read or unread)[0]
        return found

    def _matching(self, id: str) -> tuple[list[str], list[str]]:
        """The ids ``id`` names (itself, or those it starts): (read, still in the backlog)."""
        if id in self.daemon.entries:
            return [id], []
        backlog = self.daemon.backlog
        if id in backlog:
            return [], [id]
        if not id:
            return [], []
        return [key for key in self.daemon.entries if key.startswith(id)], backlog.starting_with(id)

    async def _get(self, id: str) -> QueueEntry:
        read, unread = self._matching(id)
        if len(read) + len(unread) > 1:
            raise ambiguous_id(id, len(read) + len(unread))
        if read:
            return self.daemon.entries[read[0]]
        if unread:
            await self.daemon.take_from_backlog(unread)  # read it now, out of turn
            entry = self.daemon.entries.get(unread[0])
            if entry is None:
                raise AdminError(f"{unread[0]} could not be read: it was moved to failed/")
            return entry
        raise unknown_id(id)

    async def _select(
        self, ids: list[str] | None, all: bool = False, relay: str | None = None
    ) -> list[QueueEntry]:
        # "All" means those read: the backlog's are waiting, never held, and due already.
        if all or relay:
            return [
                e for e in list(self.daemon.entries.values()) if relay is None or relay in e.relays
            ]
        if not ids:
            raise AdminError("name one or more queue ids (or --all)")
        return list({id(e): e for e in [await self._get(i) for i in ids]}.values())

    def _refuse_in_flight(self, entries: list[QueueEntry], what: str) -> None:
        busy = [e.id for e in entries if e.id in self.daemon.in_flight]
        if busy:
            raise AdminError(
                f"cannot {what} {', '.join(busy)}: being delivered right now; try again in a moment"
                " (or 'mqd queue hold' it first)"
            )

    async def _changed(self, entry: QueueEntry) -> None:
        """A schedule change: the running daemon acts on it at once; offline it must persist."""
        if self.online:
            self.daemon.schedule(entry)
        else:
            await self.daemon.store.save(entry)

    async def _save_unless_in_flight(self, entry: QueueEntry) -> None:
        # An entry in flight is saved by its attempt, which carries the flag with it.
        if entry.id not in self.daemon.in_flight:
            await self.daemon.store.save(entry)

    def _reset_circuits(self, names: Iterable[str]) -> None:
        for name in names:
            circuit = self.daemon.deliverer.circuits.get(name)
            if circuit is not None and circuit.state is not CircuitState.CLOSED:
                circuit.reset()

    async def _read_backlog(self) -> list[QueueEntry]:
        """The backlog's entries, read from their bodies and left in the backlog (a listing of a
        large queue reads every body, as Postfix's mailq does, but keeps none of them)."""
        daemon = self.daemon

        def read() -> list[QueueEntry]:
            found = (
                entry_from_body(daemon.config, daemon.store.staging_path(key, entry_id))
                for key, entry_id in daemon.backlog.items()
            )
            return [entry for entry in found if entry is not None]

        return await asyncio.to_thread(read) if daemon.backlog else []

    def _backlog_bytes(self) -> int:
        store = self.daemon.store
        size = 0
        for key, entry_id in self.daemon.backlog.items():
            with contextlib.suppress(OSError):
                size += os.stat(store.staging_path(key, entry_id)).st_size
        return size

    def _row(self, entry: QueueEntry, in_flight: set[str], now: float) -> dict[str, Any]:
        return {
            "id": entry.id,
            "state": entry_state(entry, in_flight),
            "sender": entry.sender,
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


def unknown_id(id: str) -> AdminError:
    return AdminError(f"no message {id!r} in the queue ('mqd queue list' shows the ids)")


def ambiguous_id(id: str, count: int) -> AdminError:
    return AdminError(f"{id!r} is the start of {count} queue ids: give more of it")


def _entry_dict(entry: QueueEntry) -> dict[str, Any]:
    return dict(json.loads(entry.to_json()))


async def _count_failed(directory: os.PathLike[str]) -> int:
    def count() -> int:
        try:
            return sum(1 for name in os.listdir(directory) if name.endswith(".json"))
        except OSError:
            return 0

    return await asyncio.to_thread(count)


@contextlib.asynccontextmanager
async def offline(config: Config, host: PluginHost | None = None) -> AsyncIterator[QueueAdmin]:
    """Administer the queue of a stopped daemon: take its lock, load its entries, release.

    Raises QueueLockedError when a daemon holds the queue (then use the control socket).
    """
    from mqd.daemon.root import Daemon

    daemon = Daemon(config, host=host)
    await daemon.open_offline()
    try:
        yield QueueAdmin(daemon, online=False)
    finally:
        await daemon.store.close()


async def request(config: Config, op: str, args: dict[str, Any] | None = None) -> Any:
    """Carry out ``op`` on the queue of ``config`` (of one worker: ``mqd.admin.fanout`` asks every
    worker of ``queue.workers``): through the running daemon's control socket,
    or on the files when no daemon runs. Raises AdminError / ControlError with a message for
    the user."""
    from mqd.admin.control import ControlError, DaemonNotRunning, call
    from mqd.errors import QueueLockedError

    directory = config.queue.own_dir
    try:
        return await call(directory, op, args)
    except DaemonNotRunning:
        pass
    if not directory.is_dir():
        # Opening it offline would create it, owned by whoever runs this command.
        raise AdminError(f"there is no queue at {directory} yet: mqd creates it when it first runs")
    try:
        async with offline(config) as admin:
            return await admin.handle(op, args or {})
    except QueueLockedError:
        raise ControlError(
            f"a daemon holds the queue {directory} but does not answer on its control "
            "socket: is it an older mqd, or still starting? (see its log)"
        ) from None
