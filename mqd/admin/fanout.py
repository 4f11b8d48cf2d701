"""Administration of every worker of ``queue.workers`` as one queue.

Each worker is a daemon with its own queue directory and control socket (``mqd.daemon.workers``).
``request`` asks each of them (through its socket, or on its files when it is not running, as
``mqd.admin.service.request`` does for one) and merges the answers, so that ``mqd status`` and
``mqd queue ...`` show one queue. A queue id is in exactly one worker's queue: an operation on
ids first asks every worker which of the ids (or id prefixes) it holds, then sends each worker
its own. On a shared store (PostgreSQL) each worker is a node that sees the whole queue: the
queue's operations go to worker 1 alone, and ``status`` takes its counts from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mqd.admin.client import request as request_one
from mqd.admin.control import ControlError
from mqd.admin.service import QueueAdmin, ambiguous_id, unknown_id
from mqd.delivery.circuit import CircuitState
from mqd.delivery.suppression import Suppression, to_csv

if TYPE_CHECKING:
    from mqd.config.schema import Config

__all__ = ["daemon_status", "merge_status", "request", "share_suppressions"]

#: Operations every worker answers for itself, even on a shared store.
PER_PROCESS = ("status", "reload")
#: Operations on named messages: each id goes to the worker that holds it.
BY_ID = ("show", "retry", "hold", "release", "delete", "bounce")
#: Operations on the suppression list, which every worker keeps whole (on the file store):
#: every worker's answer, as one list.
SUPPRESSION = ("suppress_list", "suppress_add", "suppress_remove", "suppress_import")
#: Worst first: a relay failing in one worker is reported failing, a circuit open in one open.
_HEALTH_ORDER = ("failing", "degraded", "healthy", "idle", "unknown")
_CIRCUIT_ORDER = (CircuitState.OPEN.value, CircuitState.HALF_OPEN.value, CircuitState.CLOSED.value)


async def request(config: Config, op: str, args: dict[str, Any] | None = None) -> Any:
    """``op`` on the queue of every worker of ``config``, answered as by one daemon."""
    args = dict(args or {})
    workers = config.queue.workers
    shared = _shared(config)
    if workers == 1 or (shared and op not in PER_PROCESS):
        return await request_one(config, op, args)
    configs = {n: config.for_worker(n) for n in range(1, workers + 1)}
    if op in BY_ID and (args.get("ids") or op == "show"):
        return await _by_id(configs, op, args)
    if op == "status":
        return merge_status(await _statuses(configs), shared=shared)
    answers = await _each(configs, op, args)
    if op == "list":
        rows = [dict(row, worker=n) for n, part in answers.items() for row in part]
        return sorted(rows, key=lambda row: (row["created_at"], row["id"]))
    if op == "reload":
        return {"reloaded": "; ".join(str(a["reloaded"]) for a in answers.values())}
    if op in SUPPRESSION:
        return _one_list(answers.values())
    return _concatenated(answers.values())


async def daemon_status(admin: QueueAdmin) -> dict[str, Any]:
    """``status`` as a worker's web view and API show it: every worker's, merged."""
    own = await admin.op_status()
    config = admin.node.config
    workers, this = config.queue.workers, config.queue.worker
    if workers == 1:
        return own
    others = {n: config.for_worker(n) for n in range(1, workers + 1) if n != this}
    statuses = {this: own, **await _statuses(others)}
    return merge_status(dict(sorted(statuses.items())), shared=_shared(config))


async def share_suppressions(config: Config, items: Sequence[Suppression]) -> None:
    """Give the other workers of a file store ``items`` this worker added to its suppression
    list (a provider's webhook reached this one): each keeps the whole list. On a shared
    store the list is the fleet's already."""
    if config.queue.workers == 1 or _shared(config) or not items:
        return
    this = config.queue.worker
    others = {n: config.for_worker(n) for n in range(1, config.queue.workers + 1) if n != this}
    await _each(others, "suppress_import", {"csv_text": to_csv(items)})


def _shared(config: Config) -> bool:
    """Whether every worker sees the whole queue (a store that nodes share)."""
    return config.queue.store != "file"


async def _statuses(configs: dict[int, Config]) -> dict[int, dict[str, Any] | None]:
    """Every worker's status; None for one that holds its queue but does not answer yet (just
    started again, still recovering): the others' are still worth showing."""

    async def one(n: int, config: Config) -> dict[str, Any] | None:
        try:
            return dict(await request_one(config, "status", {}))
        except ControlError:
            if n == 1:
                raise
            return None

    present = _present(configs)
    answers = await asyncio.gather(*(one(n, c) for n, c in present.items()))
    return dict(zip(present, answers, strict=True))


async def _each(configs: dict[int, Config], op: str, args: dict[str, Any]) -> dict[int, Any]:
    """Every worker's answer (of those ``_present``)."""
    present = _present(configs)
    answers = await asyncio.gather(*(request_one(c, op, args) for c in present.values()))
    return dict(zip(present, answers, strict=True))


def _present(configs: dict[int, Config]) -> dict[int, Config]:
    """The workers to ask: worker 1, and the others that have run (a queue directory)."""
    return {n: c for n, c in configs.items() if n == 1 or c.queue.own_dir.is_dir()}


async def _by_id(configs: dict[int, Config], op: str, args: dict[str, Any]) -> Any:
    wanted = [args.pop("id")] if op == "show" else list(args.pop("ids"))
    found = await _each(configs, "find", {"ids": wanted})
    owners: dict[int, list[str]] = {}
    for name in wanted:
        holders = [(n, part[name]) for n, part in found.items() if name in part]
        if not holders:
            raise unknown_id(name)
        if len(holders) > 1:
            raise ambiguous_id(name, len(holders))
        worker, full = holders[0]
        owners.setdefault(worker, []).append(full)
    if op == "show":
        ((worker, (full,)),) = owners.items()
        row = await request_one(configs[worker], "show", {"id": full, **args})
        return dict(row, worker=worker)
    answers = await asyncio.gather(
        *(request_one(configs[n], op, {**args, "ids": ids}) for n, ids in owners.items())
    )
    return _concatenated(answers)


def _concatenated(answers: Any) -> dict[str, list[Any]]:
    """{"retried": [...]} and the like from each worker, as one."""
    merged: dict[str, list[Any]] = {}
    for answer in answers:
        for key, value in answer.items():
            merged.setdefault(key, []).extend(value)
    return merged


def _one_list(answers: Any) -> Any:
    """The answers of a suppression list operation, each worker's list being a copy of one:
    rows once per account and address, addresses once, a count as the largest of them."""
    answers = list(answers)
    if all(isinstance(answer, list) for answer in answers):
        return _unique(row for answer in answers for row in answer)
    merged: dict[str, Any] = {}
    for answer in answers:
        for key, value in answer.items():
            if isinstance(value, list):
                merged[key] = _unique([*merged.get(key, []), *value])
            else:
                merged[key] = max(merged.get(key, value), value)
    return merged


def _unique(items: Any) -> list[Any]:
    """``items`` in order, each once: a row (a dict) once per account and address."""
    seen: dict[Any, Any] = {}
    for item in items:
        key = (item["account"], item["address"]) if isinstance(item, dict) else item
        seen.setdefault(key, item)
    return list(seen.values())


def merge_status(
    answers: dict[int, dict[str, Any] | None], *, shared: bool = False
) -> dict[str, Any]:
    """One ``status`` from every worker's: counts summed (``shared``: worker 1's, each worker
    seeing the whole queue), the oldest message the oldest of all, a relay as healthy as its
    worst worker says, and a ``workers`` list (a worker that did not answer, None, is listed as
    such and counted in nothing). The lowest worker that answered (worker 1, unless the one
    asking is another that serves [http] and worker 1 did not answer) gives the rest."""
    first = next(part for _, part in sorted(answers.items()) if part is not None)
    merged = dict(first)
    parts = [p for p in answers.values() if p is not None]
    counted = [first] if shared else parts
    merged["messages"] = sum(p["messages"] for p in counted)
    merged["by_state"] = {
        state: sum(p["by_state"].get(state, 0) for p in counted) for state in first["by_state"]
    }
    merged["not_read"] = sum(p["not_read"] for p in counted)
    merged["bytes"] = sum(p["bytes"] for p in counted)
    ages = [p["oldest_age"] for p in counted if p["oldest_age"] is not None]
    merged["oldest_age"] = max(ages) if ages else None
    merged["relays"] = {name: _merge_relay(name, parts, shared) for name in first["relays"]}
    merged["sources"] = _merged_sources(parts)
    merged["faults"] = [
        {**fault, "what": f"worker {n}: {fault['what']}"}
        for n, part in sorted(answers.items())
        if part is not None
        for fault in part.get("faults", [])
    ]
    merged["workers"] = [
        {
            "worker": n,
            "running": p["running"],
            "pid": p["pid"],
            "queue_dir": p["queue_dir"],
            "messages": p["messages"],
        }
        if p is not None
        else {"worker": n, "running": False, "pid": None, "queue_dir": None, "messages": None}
        for n, p in sorted(answers.items())
    ]
    return merged


def _merged_sources(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each source once ([[smtpd]] runs in every worker), its counts summed over the workers;
    a broker's source connected only while every worker's consumer is."""
    by_name: dict[str, dict[str, Any]] = {}
    for part in parts:
        for source in part.get("sources") or []:
            seen = by_name.get(source["name"])
            if seen is None:
                by_name[source["name"]] = dict(source)
                continue
            for key in ("connections", "accepted", "refused"):
                seen[key] += source[key]
            if source.get("connected") is False:
                seen["connected"] = False
                seen["last_error"] = seen.get("last_error") or source.get("last_error")
    return list(by_name.values())


def _merge_relay(name: str, parts: list[dict[str, Any]], shared: bool) -> dict[str, Any]:
    each = [p["relays"][name] for p in parts if name in p["relays"]]
    relay = dict(each[0])
    if not shared:  # on a shared store each worker counts the whole queue: worker 1's stands
        relay["queued"] = sum(r["queued"] for r in each)
    relay["errors"] = sum(r["errors"] for r in each)
    relay["failures_in_a_row"] = max(r["failures_in_a_row"] for r in each)
    relay["health"] = _worst([r["health"] for r in each], _HEALTH_ORDER)
    if any("circuit" in r for r in each):
        relay["circuit"] = _worst([r.get("circuit", "closed") for r in each], _CIRCUIT_ORDER)
    for key in ("recent_attempts", "recent_failures"):
        relay[key] = sum(int(r.get(key) or 0) for r in each)
    for key in ("last_success_at", "last_failure_at"):
        times = [r[key] for r in each if r.get(key) is not None]
        relay[key] = max(times) if times else None
    relay["last_error"] = next((r["last_error"] for r in each if r["last_error"]), None)
    quotas = [r["quota"] for r in each if r.get("quota")]
    if quotas:
        quota = dict(quotas[0])  # the limits as configured: each worker keeps to its share
        for key in ("sent_last_hour", "sent_last_day", "holds"):
            values = [q[key] for q in quotas if q.get(key) is not None]
            quota[key] = sum(values) if values else None
        relay["quota"] = quota
    return relay


def _worst(values: list[str], order: tuple[str, ...]) -> str:
    """The first of ``values`` in ``order`` (a value ``order`` does not know counts worst)."""
    return min(values, key=lambda v: order.index(v) if v in order else -1)
