"""The Prometheus endpoint (``[metrics]``): counters fed by events, gauges read at scrape time.

Counters and histograms are updated by ``observe(event)``, on the event loop, for every event the
daemon emits. Queue sizes, message ages and the relays' circuit and quota state are not kept
twice: they are read from the queue store and the relays' guards when Prometheus scrapes, on the
event loop too (``MetricsServer`` is an aiohttp app in the daemon's loop, not a thread of its
own), so a scrape never sees a half-changed state. Every ``Metrics`` has its own registry (never
the process-wide one), so several daemons can run in one process. Labels carry relay names and
fixed state or outcome names only: never an address, a message id or a secret. docs/metrics.md
lists every metric.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from mqd.config.schema import Config
from mqd.delivery.accounts import AccountUse
from mqd.delivery.circuit import CircuitState
from mqd.delivery.guards import Guards
from mqd.events import Delivered, Event, EventKind, RecipientEvent
from mqd.http.listen import listen_error
from mqd.http.sourcemetrics import source_families
from mqd.intake.source import SourceStatus
from mqd.queue.store import EntryState, QueueStore
from mqd.version import __version__

__all__ = ["AGE_BUCKETS", "DURATION_BUCKETS", "QUEUE_STATES", "Metrics", "MetricsServer"]

log = logging.getLogger("mqd.metrics")

#: Message events, counted by ``mqd_messages_total`` (the label ``event``): one per message.
MESSAGE_EVENTS = (
    EventKind.QUEUED,
    EventKind.REJECTED,
    EventKind.FAILED,
    EventKind.COMPLETED,
    EventKind.DELETED,
)
#: Recipient outcomes, counted by ``mqd_recipients_total`` (the label ``outcome``): one per
#: recipient and attempt, and per relay by ``mqd_relay_deliveries_total``.
RECIPIENT_OUTCOMES = (
    EventKind.DELIVERED,
    EventKind.DEFERRED,
    EventKind.BOUNCED,
    EventKind.SUPPRESSED,
)
#: The states of ``mqd_queue_messages``: each queued message is in exactly one.
QUEUE_STATES = ("active", "deferred", "held", "scheduled", "waiting")
#: Seconds a relay takes for one message: an API call to an SMTP session on a slow server.
DURATION_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
#: Seconds from acceptance to delivery: immediate, after a few retries, up to a day.
AGE_BUCKETS = (
    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0, 21600.0, 43200.0,
    86400.0,
)  # fmt: skip


class MetricsNode(Protocol):
    """What the metrics read of the daemon."""

    @property
    def config(self) -> Config: ...
    @property
    def store(self) -> QueueStore: ...
    @property
    def guards(self) -> Guards: ...
    @property
    def started_at(self) -> float: ...
    def source_status(self) -> Sequence[SourceStatus]: ...


class Metrics:
    """The counters (fed by ``observe``) and ``render()``, the scrape."""

    def __init__(self, node: MetricsNode) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        # Messages and recipients are counted apart: one metric must not add up two units.
        self.messages = Counter(
            "mqd_messages",
            "Messages by event: queued, rejected (refused at intake), failed (moved to failed/), "
            "completed (left the queue delivered) and deleted.",
            ["event"],
            registry=self.registry,
        )
        self.recipients = Counter(
            "mqd_recipients",
            "Recipients by outcome of an attempt: delivered, deferred (retried later) and "
            "bounced (a permanent failure, or retries exhausted).",
            ["outcome"],
            registry=self.registry,
        )
        self.relay_deliveries = Counter(
            "mqd_relay_deliveries",
            "Recipients by the relay that gave their answer and its outcome "
            "(delivered, deferred, bounced).",
            ["relay", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "mqd_delivery_duration_seconds",
            "Seconds the delivery attempt took (relays of a failover route included), "
            "observed once per delivered recipient, by the relay that delivered it.",
            ["relay"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.age = Histogram(
            "mqd_delivery_age_seconds",
            "Seconds from acceptance into the queue to delivery, once per delivered recipient: "
            "the queue latency, retries included.",
            buckets=AGE_BUCKETS,
            registry=self.registry,
        )
        # Every series exists from the start, at 0: rate() and absent() need no first event.
        for kind in MESSAGE_EVENTS:
            self.messages.labels(kind.value)
        for kind in RECIPIENT_OUTCOMES:
            self.recipients.labels(kind.value)
        for relay in node.config.relays:
            self.duration.labels(relay)
            for outcome in RECIPIENT_OUTCOMES:
                self.relay_deliveries.labels(relay, outcome.value)
        self._gauges = _Gauges(node)
        self.registry.register(self._gauges)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def observe(self, event: Event) -> None:
        """Count one event (called on the event loop for every event the daemon emits).

        Never raises: a metrics problem must not disturb a delivery.
        """
        try:
            if event.kind in MESSAGE_EVENTS:
                self.messages.labels(event.kind.value).inc()
                return
            if event.kind not in RECIPIENT_OUTCOMES:
                return
            self.recipients.labels(event.kind.value).inc()
            if not isinstance(event, RecipientEvent) or event.relay is None:
                return  # a message's event, or no relay was asked (an administrator's bounce)
            self.relay_deliveries.labels(event.relay, event.kind.value).inc()
            if isinstance(event, Delivered):
                self.duration.labels(event.relay).observe(max(0.0, event.elapsed))
                self.age.observe(max(0.0, event.age))
        except Exception:  # a bug here must cost a count, never a delivery
            log.exception("metrics: cannot count event %s", event.kind.value)

    async def render(self) -> bytes:
        """The scrape: the gauges read now, on the event loop, then every family as text."""
        self._gauges.snapshot = await self._gauges.read()
        try:
            return generate_latest(self.registry)
        finally:
            self._gauges.snapshot = None


class MetricsServer:
    """Serves ``/metrics`` on ``[metrics] host:port`` (an aiohttp app in the daemon's loop).

    ``start()`` raises ConfigError (key ``metrics.port`` or ``metrics.host``) when it cannot
    listen; ``stop()`` may be called whether or not it started.
    """

    def __init__(self, node: MetricsNode, metrics: Metrics) -> None:
        self.node = node
        self.metrics = metrics
        #: The port listened on (the chosen one when ``[metrics] port = 0``); 0 until started.
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = self.node.config.metrics.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    async def start(self) -> None:
        config = self.node.config.metrics
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        app.router.add_get("/", self._scrape)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise listen_error(
                "metrics",
                "metrics",
                config.host,
                config.port,
                exc,
                source=self.node.config.source,
                default_port=9325,
                others="another mqd or another exporter",
            ) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("serving Prometheus metrics at %s", self.url)

    async def _scrape(self, request: web.Request) -> web.Response:
        body = await self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.debug("metrics endpoint closed")


@dataclass
class _RelayState:
    errors: int
    circuit_open: bool
    quota_waits: int
    #: The hour and day quota limits that are set, by window ("hour", "day").
    limits: dict[str, int] = field(default_factory=dict)
    #: Messages counted in the last hour and day; None for a relay without such a quota.
    sent: tuple[int, int] | None = None


@dataclass
class _Snapshot:
    states: dict[str, int]
    oldest: float
    relays: dict[str, _RelayState]
    sources: Sequence[SourceStatus] = ()
    accounts: list[AccountUse] = field(default_factory=list)
    #: Entries taken over while marked dispatching (a shared queue's at-least-once window).
    redispatched: int = 0


class _Gauges:
    """The gauges, from a snapshot read on the event loop just before each scrape."""

    def __init__(self, node: MetricsNode) -> None:
        self.node = node
        self.snapshot: _Snapshot | None = None

    async def read(self) -> _Snapshot:
        node = self.node
        counts = await node.store.counts()
        now = time.time()
        states = {state.value: counts.by_state.get(state, 0) for state in EntryState}
        oldest = max(0.0, now - counts.oldest_unheld) if counts.oldest_unheld is not None else 0.0
        relays: dict[str, _RelayState] = {}
        for name, circuit in node.guards.circuits.items():
            quota = node.guards.quotas.get(name)
            relay = _RelayState(
                errors=circuit.total_failures,
                circuit_open=circuit.state is not CircuitState.CLOSED,
                quota_waits=node.guards.holds(name),
            )
            if quota is not None:
                # The fleet's limits when the counts are the fleet's, else this worker's share.
                own = quota.config if node.guards.fleet is None else node.config.relays[name].quota
                windows = {"hour": own.max_per_hour, "day": own.max_per_day}
                relay.limits = {window: limit for window, limit in windows.items() if limit}
                if relay.limits:
                    relay.sent = (node.guards.sent(name, 3600.0), node.guards.sent(name, 86400.0))
            relays[name] = relay
        sources, accounts = node.source_status(), node.guards.accounts.use()
        return _Snapshot(states, oldest, relays, sources, accounts, counts.redispatched)

    def collect(self) -> Iterable[Metric]:
        if self.snapshot is None:  # registered before any scrape: nothing to describe yet
            return iter(())
        return self._families(self.snapshot)

    def _families(self, snapshot: _Snapshot) -> Iterator[Metric]:
        yield GaugeMetricFamily("mqd_up", "1 while mqd is running and answering scrapes.", 1)
        yield GaugeMetricFamily(
            "mqd_start_time_seconds",
            "When the daemon started, as a Unix timestamp.",
            self.node.started_at,
        )
        yield InfoMetricFamily("mqd", "The mqd version.", value={"version": __version__})
        queue = GaugeMetricFamily(
            "mqd_queue_messages",
            "Messages in the queue by state: active (being delivered), deferred (attempted, "
            "waiting for a retry), held (by the administrator), waiting (not attempted yet).",
            labels=["state"],
        )
        for state, count in snapshot.states.items():
            queue.add_metric([state], count)
        yield queue
        yield GaugeMetricFamily(
            "mqd_oldest_message_age_seconds",
            "Age of the oldest message in the queue that is not held; 0 when there is none.",
            snapshot.oldest,
        )
        yield CounterMetricFamily(
            "mqd_redispatched",
            "Messages taken over while marked as being sent: each may have gone out twice.",
            snapshot.redispatched,
        )
        errors = CounterMetricFamily(
            "mqd_relay_errors",
            "Whole-message failures of a relay since mqd started (connection refused, timeout, "
            "an API's 5xx or 429): what its circuit breaker counts.",
            labels=["relay"],
        )
        circuit = GaugeMetricFamily(
            "mqd_relay_circuit_open",
            "1 while the relay's circuit breaker is open or half-open (the relay is skipped).",
            labels=["relay"],
        )
        waits = CounterMetricFamily(
            "mqd_relay_quota_waits",
            "Times a message was held back by the relay's sending quota (not a failed attempt).",
            labels=["relay"],
        )
        limits = GaugeMetricFamily(
            "mqd_relay_quota_limit",
            "The relay's max_per_hour (window=hour) or max_per_day (window=day), where set.",
            labels=["relay", "window"],
        )
        hour = GaugeMetricFamily(
            "mqd_relay_sent_last_hour",
            "Messages counted against the relay's quota in the last hour (relays with "
            "max_per_hour or max_per_day only).",
            labels=["relay"],
        )
        day = GaugeMetricFamily(
            "mqd_relay_sent_last_day",
            "Messages counted against the relay's quota in the last 24 hours (relays with "
            "max_per_hour or max_per_day only).",
            labels=["relay"],
        )
        for name, relay in sorted(snapshot.relays.items()):
            errors.add_metric([name], relay.errors)
            circuit.add_metric([name], 1 if relay.circuit_open else 0)
            waits.add_metric([name], relay.quota_waits)
            for window, limit in relay.limits.items():
                limits.add_metric([name, window], limit)
            if relay.sent is not None:
                hour.add_metric([name], relay.sent[0])
                day.add_metric([name], relay.sent[1])
        yield from (errors, circuit, waits, limits, hour, day)
        yield from source_families(snapshot.sources)
        yield from _account_families(snapshot.accounts)


def _account_families(accounts: list[AccountUse]) -> Iterator[Metric]:
    """Each ``[[account]]``'s use against its limits."""
    sent = GaugeMetricFamily(
        "mqd_account_sent",
        "Messages counted against the account's limit in the window (minute, hour, day).",
        labels=["account", "window"],
    )
    limit = GaugeMetricFamily(
        "mqd_account_limit",
        "The account's max_per_minute, max_per_hour or max_per_day, by window.",
        labels=["account", "window"],
    )
    held = CounterMetricFamily(
        "mqd_account_over_limit",
        "Messages held back (over_limit = wait) or refused (over_limit = refuse) because the "
        "account reached a limit.",
        labels=["account", "action"],
    )
    for use in accounts:
        for window, count, most in use.windows:
            sent.add_metric([use.name, window], count)
            limit.add_metric([use.name, window], most)
        held.add_metric([use.name, "held"], use.held)
        held.add_metric([use.name, "refused"], use.refused)
    yield from (sent, limit, held)
