"""Human-readable renderings of the queue admin answers (``mqd.admin.service``) and of the failed
folder,
for ``mqd queue list / show``, ``mqd status`` and ``mqd failed list``. Each function returns
the lines to print; ``--json`` prints the answers themselves instead."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from mqd.config.schema import ROLE_WORDS

__all__ = [
    "human_age",
    "human_size",
    "next_attempt",
    "render_queue",
    "render_show",
    "render_status",
]

STATES = ("active", "waiting", "deferred", "held")


def human_age(seconds: float) -> str:
    """``45s``, ``12m``, ``3h05m``, ``2d03h``: two units at most."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, _ = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def human_size(size: int) -> str:
    """``850 B``, ``1.2 kB``, ``3.4 MB`` (powers of 1000, like ``mqd send`` limits)."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def next_attempt(row: Mapping[str, Any], now: float) -> str:
    """When the message is tried next, in human terms."""
    state = row["state"]
    if state in ("held", "active"):
        return "held" if state == "held" else "now (active)"
    due = float(row["next_attempt_at"])
    return "now" if due <= now else f"in {human_age(due - now)}"


def _address(address: str) -> str:
    return f"<{address}>"


def _recipient_line(recipient: Mapping[str, Any]) -> str:
    status, reply = recipient.get("status") or "", recipient.get("reply")
    if reply:
        return f"{_address(recipient['address'])} {status}: {reply}"
    if status == "pending":
        return f"{_address(recipient['address'])} pending (not tried yet)"
    return f"{_address(recipient['address'])} {status}"


def summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """``3 messages, 1 deferred, 2 held (4.1 kB)``."""
    counts = dict.fromkeys(STATES, 0)
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    parts = [f"{len(rows)} message{'s' if len(rows) != 1 else ''}"]
    parts += [f"{count} {state}" for state, count in counts.items() if count]
    size = sum(int(row.get("size") or 0) for row in rows)
    return ", ".join(parts) + f" ({human_size(size)})"


def render_queue(rows: Sequence[Mapping[str, Any]], now: float, *, filtered: str = "") -> list[str]:
    """The queue like ``mailq``: a line per message, then its recipients with their last reply,
    and a summary line. ``filtered`` describes a filter in effect (for the empty case)."""
    if not rows:
        return [f"no message in the queue {filtered}" if filtered else "mail queue is empty"]
    nodes = any(row.get("node") for row in rows)  # a shared queue: who holds each entry
    table = [
        (
            row["id"],
            human_age(float(row["age"])),
            human_size(int(row["size"] or 0)),
            row["state"],
            str(row["attempts"]),
            next_attempt(row, now),
            *((row.get("node") or "-",) if nodes else ()),
            _address(row["sender"]),
        )
        for row in rows
    ]
    node = ("NODE",) if nodes else ()
    header = ("ID", "AGE", "SIZE", "STATE", "TRIES", "NEXT", *node, "SENDER")
    widths = [max(len(cells[i]) for cells in (header, *table)) for i in range(len(header) - 1)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join([*(c.ljust(w) for c, w in zip(cells, widths, strict=False)), cells[-1]])

    lines = [line(header)]
    for row, cells in zip(rows, table, strict=True):
        lines.append(line(cells))
        if row.get("subject"):
            lines.append(f"    subject: {row['subject']}")
        lines += [f"    {_recipient_line(r)}" for r in row["recipients"]]
    lines.append("")
    lines.append(summary(rows))
    return lines


def render_show(row: Mapping[str, Any], now: float) -> list[str]:
    """One message in full: envelope, schedule, each recipient, the attempt history, headers."""
    entry: Mapping[str, Any] = row.get("entry") or {}
    fields: list[tuple[str, str]] = [
        ("id", row["id"]),
        ("state", row["state"]),
        ("sender", _address(row["sender"])),
        ("subject", str(row.get("subject") or "(none)")),
        ("created", f"{_clock(row['created_at'])} ({human_age(row['age'])} ago)"),
        ("size", human_size(int(row["size"] or 0))),
        ("attempts", str(row["attempts"])),
    ]
    if entry.get("last_attempt_at"):
        fields[-1] = ("attempts", f"{row['attempts']}, last at {_clock(entry['last_attempt_at'])}")
    upcoming = next_attempt(row, now)
    if upcoming.startswith("in "):
        upcoming += f" ({_clock(row['next_attempt_at'])})"
    fields.append(("next attempt", upcoming))
    fields.append(("relays", ", ".join(row.get("relays") or [])))
    if entry.get("message_id"):
        fields.append(("message-id", str(entry["message_id"])))
    if entry.get("spool_name"):
        fields.append(("spool file", str(entry["spool_name"])))
    if row.get("body_path"):
        fields.append(("stored as", str(row["body_path"])))
    width = max(len(name) for name, _ in fields)
    lines = [f"{name.ljust(width)}  {value}" for name, value in fields]
    lines.append("recipients")
    details = {r.get("address"): r for r in entry.get("recipients") or []}
    for recipient in row["recipients"]:
        extra = details.get(recipient["address"], {})
        where = ", ".join(f"{key} {extra[key]}" for key in ("relay", "remote") if extra.get(key))
        lines.append(f"  {_recipient_line(recipient)}" + (f" ({where})" if where else ""))
    history = entry.get("history") or []
    if history:
        lines.append("history")
        for record in history:
            count = record.get("recipients", 0)
            lines.append(
                f"  {_clock(float(record.get('at', 0)))}  {record.get('relay')}  "
                f"{record.get('outcome')}  {record.get('reply')}"
                f" ({count} recipient{'s' if count != 1 else ''})"
            )
    headers = str(row.get("headers") or "").rstrip()
    if headers:
        lines += ["", headers]
    return lines


_CIRCUIT = {
    "open": "circuit open: not used until it recovers",
    "half-open": "circuit half-open: trying one message",
}


def _health(relay: Mapping[str, Any]) -> str:
    """``healthy``, ``FAILING (3 of 3 attempts in the last hour delivered nothing)`` ..."""
    health = str(relay.get("health"))
    attempts, failures = (
        int(relay.get("recent_attempts") or 0),
        int(relay.get("recent_failures") or 0),
    )
    circuit = _CIRCUIT.get(str(relay.get("circuit")))
    if circuit:
        return f"{health.upper()} ({circuit})"
    if health == "idle":
        return "idle (no message in the last hour)"
    if health in ("failing", "degraded"):
        return (
            f"{health.upper()} ({failures} of {attempts} attempt(s) in the last hour "
            "delivered nothing)"
        )
    return health


def _queue_field(status: Mapping[str, Any]) -> tuple[str, str]:
    """Where the queue is: its directory, or a PostgreSQL queue's database and this node."""
    if status.get("database"):
        role = ROLE_WORDS.get(str(status.get("role")), ROLE_WORDS["both"])
        return ("queue", f"PostgreSQL {status['database']}, node {status.get('node')}, {role}")
    return ("queue", str(status.get("queue_dir")))


def render_status(status: Mapping[str, Any]) -> list[str]:
    """``mqd status``: the daemon, the queue by state, the oldest message, failed, each relay."""
    if status.get("running"):
        daemon = (
            f"running, pid {status['pid']}, up {human_age(float(status['uptime'] or 0))} "
            f"(mqd {status.get('version')})"
        )
    else:
        where = "database" if status.get("database") else "files"
        daemon = f"not running (read from the queue {where})"
    counts: Mapping[str, int] = status.get("by_state") or {}
    total = int(status.get("messages") or 0)
    if total:
        parts = [f"{n} {state}" for state, n in counts.items() if n]
        queued = f"{total} ({human_size(int(status.get('bytes') or 0))}): " + ", ".join(parts)
        not_read = int(status.get("not_read") or 0)
        if not_read:
            queued += f" ({not_read} of them not read yet: read as deliveries make room)"
    else:
        queued = "none"
    oldest = status.get("oldest_age")
    failed = int(status.get("failed") or 0)
    fields = [
        ("daemon", daemon),
        ("config", status.get("config") or "embedded defaults"),
        _queue_field(status),
        ("messages", queued),
        ("oldest", human_age(float(oldest)) if oldest is not None else "-"),
        ("failed", f"{failed}" + (" ('mqd failed list' shows them)" if failed else "")),
    ]
    if redispatched := int(status.get("redispatched") or 0):
        fields.append(("redispatched", f"{redispatched} (may have gone out twice)"))
    if status.get("retries"):
        fields.append(("retries", str(status["retries"])))
    suppressed = int(status.get("suppressed") or 0)
    if suppressed:
        fields.append(("suppressed", f"{suppressed} address(es) ('mqd suppress list' shows them)"))
    workers: Sequence[Mapping[str, Any]] = status.get("workers") or []
    if workers:
        fields.insert(1, ("workers", "; ".join(_worker(w) for w in workers)))
    faults: Sequence[Mapping[str, Any]] = status.get("faults") or []
    for fault in faults:
        fields.append(
            ("paused", f"{fault['what']}: {fault['reason']} (retrying in {fault['retry_in']:.0f}s)")
        )
    width = max(len(name) for name, _ in fields)
    lines = [f"{name.ljust(width)}  {value}" for name, value in fields]
    relays: Mapping[str, Mapping[str, Any]] = status.get("relays") or {}
    if relays:
        lines.append("relays")
    for name, relay in relays.items():
        health = _health(relay)
        if not status.get("running"):
            health = "health unknown (only a running daemon knows it)"
        lines.append(
            f"  {name} ({relay.get('plugin')}): {health}; {relay.get('queued', 0)} queued, "
            f"{relay.get('errors', 0)} error(s)"
        )
        if relay.get("last_error"):
            lines.append(f"      last error: {relay['last_error']}")
        quota = relay.get("quota")
        if quota:
            lines.append(f"      quota: {_quota(quota)}")
    sources: Sequence[Mapping[str, Any]] = status.get("sources") or []
    if sources:
        lines.append("sources")
    for source in sources:
        listening = ", ".join(source.get("listening") or []) or "not listening"
        tally = f"{source.get('accepted', 0)} accepted, {source.get('refused', 0)} refused"
        if source.get("connected") is None:
            state = f"{source.get('connections', 0)} connected"
        else:
            state = "connected" if source["connected"] else "NOT CONNECTED"
        lines.append(f"  {source['name']}: {listening}; {state}, {tally}")
        if source.get("last_error"):
            lines.append(f"      last error: {source['last_error']}")
    accounts: Mapping[str, Mapping[str, Any]] = status.get("accounts") or {}
    if accounts:
        lines.append("accounts")
    for name, account in accounts.items():
        lines.append(f"  {name}: {_account(account)}")
    return lines


def _account(account: Mapping[str, Any]) -> str:
    """``40/100 a minute, 900/2000 an hour; 3 held back`` for one [[account]]."""
    limits: Mapping[str, int] = account.get("limits") or {}
    sent: Mapping[str, int] = account.get("sent") or {}
    parts = [f"{sent.get(window, 0)}/{limit} a {window}" for window, limit in limits.items()]
    text = ", ".join(parts) or "no limits"
    if account.get("over_limit") == "refuse":
        text += f"; {account.get('refused', 0)} refused over a limit"
    else:
        text += f"; {account.get('held', 0)} held back over a limit"
    return text


def _worker(worker: Mapping[str, Any]) -> str:
    """``2 (pid 4242) 17 queued`` for one of queue.workers."""
    if worker.get("messages") is None:
        return f"{worker['worker']} (starting, not answering yet)"
    state = f"pid {worker['pid']}" if worker.get("running") else "not running"
    return f"{worker['worker']} ({state}) {worker['messages']} queued"


def _quota(quota: Mapping[str, Any]) -> str:
    parts = []
    if quota.get("max_per_second"):
        parts.append(f"{quota['max_per_second']:g}/s")
    if quota.get("max_per_hour"):
        parts.append(f"{quota.get('sent_last_hour') or 0}/{quota['max_per_hour']} in the last hour")
    if quota.get("max_per_day"):
        parts.append(f"{quota.get('sent_last_day') or 0}/{quota['max_per_day']} in the last day")
    if quota.get("holds"):
        parts.append(f"held back {quota['holds']} time(s)")
    return ", ".join(parts)


def status_problems(status: Mapping[str, Any], warn_age: float | None) -> list[str]:
    """What ``mqd status --check`` reports: a resource fault pausing something, a failing
    relay (its circuit open, or nothing delivered in its recent attempts), a worker of
    queue.workers not running while the first is, and a message older than ``warn_age``
    seconds."""
    problems = [f"{fault['what']}: {fault['reason']}" for fault in status.get("faults") or []]
    problems += [
        f"relay {name}: {_health(relay)}"
        + (f" (last error: {relay['last_error']})" if relay.get("last_error") else "")
        for name, relay in (status.get("relays") or {}).items()
        if relay.get("health") in ("failing", "open")
    ]
    if status.get("running"):
        problems += [
            f"worker {w['worker']} is not running (worker 1 starts it again; see the log)"
            for w in status.get("workers") or []
            if not w.get("running")
        ]
    oldest = status.get("oldest_age")
    if warn_age is not None and oldest is not None and float(oldest) > warn_age:
        problems.append(
            f"the oldest message has waited {human_age(float(oldest))} "
            f"(more than --warn-age {human_age(warn_age)})"
        )
    return problems
