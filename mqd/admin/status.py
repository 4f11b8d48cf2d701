"""The status document: one typed answer behind ``mqd status``, the API, the web view and the
metrics. ``to_dict`` is its JSON form (``mqd status --json``, ``/api/v1/status``); the OpenAPI
schema of that form is generated from these classes (``mqd.http.schema``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mqd.delivery.health import CircuitWord, Health

__all__ = [
    "FaultStatus",
    "QuotaStatus",
    "RelayStatus",
    "SourceStatus",
    "Status",
    "WorkerStatus",
]

#: The queue states, each queued message in exactly one.
STATES = ("active", "waiting", "deferred", "held")


@dataclass(frozen=True)
class QuotaStatus:
    """A relay's sending limits and its use of them (None: no such limit)."""

    max_per_second: float | None
    max_per_hour: int | None
    sent_last_hour: int | None
    max_per_day: int | None
    sent_last_day: int | None
    #: Times a message was held back by the quota since the daemon started.
    holds: int


@dataclass(frozen=True)
class RelayStatus:
    """One relay: its health (from its circuit and its recent attempts), its failures and what
    is queued for it. ``mqd status``, the API and the web view all show ``health`` as it is
    here (``mqd.delivery.health`` says how it is decided)."""

    #: The plugin that implements it ("smtp", "sendgrid" ...).
    plugin: str
    #: The relay's own one-line description (None when it was not built: a stopped daemon).
    describe: str | None
    #: "healthy" (it delivers), "degraded" (it delivers, but its last attempt or half of its
    #: recent ones failed), "failing" (its circuit is open, or none of its recent attempts
    #: delivered), "idle" (no attempt in the last hour); "unknown" when no daemon runs.
    health: Health
    failures_in_a_row: int
    #: Whole-message failures since the daemon started.
    errors: int
    #: The newest error: why the circuit opened, else the reply of the newest recent attempt
    #: that delivered nothing.
    last_error: str | None
    #: Queued messages routed through it.
    queued: int
    #: Its sending limits; absent when it has none.
    quota: QuotaStatus | None = None
    #: Its circuit breaker: "closed" (used), "open" (skipped until it recovers), "half-open"
    #: (trying one message); "unknown" when no daemon runs.
    circuit: CircuitWord = "closed"
    #: Messages sent through it in the last hour (the last 20 at most), and how many of them
    #: it delivered to no recipient.
    recent_attempts: int = 0
    recent_failures: int = 0
    #: When it last delivered, and last failed to (seconds since the epoch); None: not since
    #: the daemon started.
    last_success_at: float | None = None
    last_failure_at: float | None = None


@dataclass(frozen=True)
class FaultStatus:
    """A resource that failed and what it paused (``mqd.faults``)."""

    #: What is paused ("intake from the spools" ...).
    what: str
    #: Why it is paused.
    reason: str
    #: Seconds until the next try.
    retry_in: float


@dataclass(frozen=True)
class SourceStatus:
    """An intake source other than the spools (``[[smtpd]]``), while the daemon runs."""

    #: Its table: ``smtpd[0]``.
    name: str
    #: Its kind: ``smtpd``.
    kind: str
    #: The addresses it listens on (``127.0.0.1:25``), or the broker and queue it consumes
    #: (``amqp://127.0.0.1:5672/ queue mail``).
    listening: list[str]
    #: Producers connected now.
    connections: int
    #: Messages queued since the daemon started.
    accepted: int
    #: Messages refused since the daemon started (sender not allowed, malformed, too large,
    #: the queue unable to take them).
    refused: int
    #: A source that consumes from a broker ([[mailbox]]): connected to it now, and why not;
    #: None for a source that listens.
    connected: bool | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class WorkerStatus:
    """One daemon process of ``queue.workers`` (``messages`` None: it did not answer)."""

    #: Its number, from 1.
    worker: int
    running: bool
    pid: int | None
    queue_dir: str | None
    #: None: the worker holds its queue but does not answer yet (just started again).
    messages: int | None


@dataclass(frozen=True)
class AccountStatus:
    """One ``[[account]]``'s use against its limits."""

    #: "wait" (over a limit its mail waits) or "refuse" (refused at hand-over).
    over_limit: str
    #: Each limited window ("minute", "hour", "day") and its limit.
    limits: dict[str, int]
    #: Messages counted in each of those windows.
    sent: dict[str, int]
    #: Deliveries held back over a limit (wait), and messages refused (refuse).
    held: int = 0
    refused: int = 0


@dataclass(frozen=True)
class Status:
    """The queue overview that ``mqd status --json`` prints."""

    #: Whether a daemon runs (false: the queue was read from disk).
    running: bool
    pid: int | None
    #: mqd's version.
    version: str
    #: Seconds since the daemon started.
    uptime: float | None
    #: The config file.
    config: str | None
    queue_dir: str
    #: The node's name (the file store's: its queue id).
    node: str
    messages: int
    #: Messages by state: active, waiting, deferred, held.
    by_state: dict[str, int]
    #: Messages not read into memory yet (read as deliveries make room), counted as waiting.
    not_read: int
    #: The size of the queued messages.
    bytes: int
    #: Seconds since the oldest queued message was accepted.
    oldest_age: float | None
    #: Messages in the failed folder.
    failed: int
    #: The spool directories.
    spools: list[str]
    #: Each relay by its name in the config.
    relays: dict[str, RelayStatus]
    #: Resources that failed and what they paused, while they do.
    faults: list[FaultStatus] = field(default_factory=list)
    #: Messages that may have gone out twice: taken over from a node that died while sending.
    redispatched: int = 0
    #: A PostgreSQL queue: its DSN (never with its password); None for a queue in files.
    database: str | None = None
    #: What the node does (``queue.role``): "both" (takes mail in and delivers), "intake"
    #: (queues what its sources take in, delivers nothing), "delivery" (delivers, takes nothing
    #: in).
    role: str = "both"
    #: With queue.workers above 1: each worker process and its own queue (the counts above
    #: are of all of them).
    workers: list[WorkerStatus] = field(default_factory=list)
    #: The intake sources other than the spools ([[smtpd]]), empty without a running daemon.
    sources: list[SourceStatus] = field(default_factory=list)
    #: Each ``[[account]]`` by its name: its use against its limits.
    accounts: dict[str, AccountStatus] = field(default_factory=dict)
    #: Addresses on the suppression list now (``mqd suppress list``).
    suppressed: int = 0
    #: The retry policy in words ("5m doubling to 1h, for 5d or 10 attempts").
    retries: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for relay in data["relays"].values():
            if relay["quota"] is None:  # a relay without limits has no quota object
                del relay["quota"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Status:
        """The document as ``to_dict`` wrote it (over the control socket)."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["relays"] = {
            name: RelayStatus(
                **{
                    **relay,
                    "quota": QuotaStatus(**relay["quota"]) if relay.get("quota") else None,
                }
            )
            for name, relay in data.get("relays", {}).items()
        }
        values["faults"] = [FaultStatus(**item) for item in data.get("faults", [])]
        values["workers"] = [WorkerStatus(**item) for item in data.get("workers", [])]
        values["sources"] = [SourceStatus(**item) for item in data.get("sources", [])]
        values["accounts"] = {
            name: AccountStatus(**item) for name, item in data.get("accounts", {}).items()
        }
        return cls(**values)
