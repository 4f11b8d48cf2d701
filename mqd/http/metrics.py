"""The Prometheus endpoint (``[metrics]``): counters fed by events, gauges read at scrape time.

Counters and histograms are updated by ``observe(event)``, on the event loop, for every event the
daemon emits. Queue sizes, message ages and the relays' circuit and quota state are not kept
twice: a collector reads them from the daemon when Prometheus scrapes, in prometheus_client's
HTTP thread. Every ``MetricsServer`` has its own registry (never the process-wide one), so
several daemons can run in one process. Labels carry relay names and fixed state or outcome
names only: never an address, a message id or a secret. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from mqd.config.schema import MetricsConfig
from mqd.delivery.circuit import CircuitState
from mqd.errors import ConfigError
from mqd.events import Event, EventKind
from mqd.http.listen import listen_error
from mqd.version import __version__

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from mqd.daemon.root import Daemon

__all__ = ["AGE_BUCKETS", "DURATION_BUCKETS", "QUEUE_STATES", "MetricsServer"]

log = logging.getLogger("mqd.metrics")

#: Events counted by ``mqd_messages_total`` (the label ``event``).
COUNTED_EVENTS = (
    EventKind.QUEUED,
    EventKind.REJECTED,
    EventKind.DELIVERED,
    EventKind.DEFERRED,
    EventKind.BOUNCED,
    EventKind.FAILED,
    EventKind.COMPLETED,
    EventKind.DELETED,
)
#: Per-recipient events, also counted per relay by ``mqd_relay_deliveries_total``.
RECIPIENT_OUTCOMES = (EventKind.DELIVERED, EventKind.DEFERRED, EventKind.BOUNCED)
#: The states of ``mqd_queue_messages``: each queued message is in exactly one.
QUEUE_STATES = ("active", "deferred", "held", "waiting")
#: Seconds a relay takes for one message: an API call to an SMTP session on a slow server.
DURATION_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
#: Seconds from acceptance to delivery: immediate, after a few retries, up to a day.
AGE_BUCKETS = (
    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0, 21600.0, 43200.0,
    86400.0,
)  # fmt: skip


class MetricsServer:
    """Serves ``/metrics`` on ``[metrics] host:port`` for one daemon.

    ``start()`` raises ConfigError (key ``metrics.port`` or ``metrics.host``) when it cannot
    listen; ``stop()`` may be called whether or not it started.
    """

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        #: The port listened on (the chosen one when ``[metrics] port = 0``); 0 until started.
        self.port = 0
        self.registry = CollectorRegistry()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.messages = Counter(
            "mqd_messages",
            "Messages by event: queued, rejected (refused at intake), failed (moved to failed/), "
            "completed (left the queue delivered) and deleted count messages; delivered, "
            "deferred and bounced count recipients.",
            ["event"],
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
        for kind in COUNTED_EVENTS:
            self.messages.labels(kind.value)
        for relay in daemon.config.relays:
            self.duration.labels(relay)
            for outcome in RECIPIENT_OUTCOMES:
                self.relay_deliveries.labels(relay, outcome.value)
        self.registry.register(_DaemonCollector(daemon))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    @property
    def url(self) -> str:
        host = self.daemon.config.metrics.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    def start(self) -> None:
        """Listen on ``[metrics] host:port`` (port 0: any free port, then ``self.port``)."""
        config = self.daemon.config.metrics
        try:
            server, thread = start_http_server(
                config.port, addr=config.host, registry=self.registry
            )
        except OSError as exc:
            raise self._listen_error(config, exc) from exc
        self._server, self._thread = server, thread
        self.port = int(server.server_address[1])
        log.info("serving Prometheus metrics at %s", self.url)

    def _listen_error(self, config: MetricsConfig, exc: OSError) -> ConfigError:
        return listen_error(
            "metrics",
            "metrics",
            config.host,
            config.port,
            exc,
            source=self.daemon.config.source,
            default_port=9325,
            others="another mqd or another exporter",
        )

    def observe(self, event: Event) -> None:
        """Count one event (called on the event loop for every event the daemon emits).

        Never raises: a metrics problem must not disturb a delivery.
        """
        if event.kind not in COUNTED_EVENTS:
            return
        try:
            self.messages.labels(event.kind.value).inc()
            if event.kind not in RECIPIENT_OUTCOMES:
                return
            relay = self._relay_of(event)
            if relay is None:
                return
            self.relay_deliveries.labels(relay, event.kind.value).inc()
            if event.kind is EventKind.DELIVERED:
                elapsed, age = event.data.get("elapsed"), event.data.get("age")
                if isinstance(elapsed, int | float):
                    self.duration.labels(relay).observe(max(0.0, elapsed))
                if isinstance(age, int | float):
                    self.age.observe(max(0.0, age))
        except Exception:  # a bug here must cost a count, never a delivery
            log.exception("metrics: cannot count event %s", event.kind.value)

    @staticmethod
    def _relay_of(event: Event) -> str | None:
        """The relay that answered; None for a recipient no relay was asked about (refused at
        intake, or returned by the administrator before any attempt)."""
        relay = event.data.get("relay")
        return relay if isinstance(relay, str) else None

    def stop(self) -> None:
        """Stop listening (blocks until the HTTP thread has stopped: at most half a second)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
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


class _DaemonCollector:
    """The gauges, read from the daemon's own state at each scrape."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterable[Metric]:
        try:
            snapshot = self._snapshot()
        except RuntimeError:
            # This runs in prometheus_client's HTTP thread while the event loop adds and removes
            # entries, minute counts and in-flight tasks: copying a dict the loop changes at that
            # instant raises "changed size during iteration". The copies are short, so a second
            # try succeeds; should it not, the scrape fails and the next one works.
            snapshot = self._snapshot()
        return self._families(snapshot)

    def _snapshot(self) -> _Snapshot:
        daemon = self.daemon
        now = time.time()
        entries = list(daemon.entries.values())
        in_flight = daemon.in_flight
        states = dict.fromkeys(QUEUE_STATES, 0)
        oldest = now
        for entry in entries:
            if entry.id in in_flight:
                state = "active"
            elif entry.held:
                state = "held"
            elif entry.attempts > 0:
                state = "deferred"
            else:
                state = "waiting"
            states[state] += 1
            if state != "held":
                oldest = min(oldest, entry.created_at)
        states["waiting"] += len(daemon.backlog)
        oldest = min(oldest, daemon.backlog.oldest_created() or now)
        relays: dict[str, _RelayState] = {}
        circuits = daemon.deliverer.circuits
        quotas = daemon.deliverer.quotas
        for name, circuit in list(circuits.items()):
            quota = quotas.get(name)
            relay = _RelayState(
                errors=circuit.total_failures,
                circuit_open=circuit.state is not CircuitState.CLOSED,
                quota_waits=quota.holds if quota is not None else 0,
            )
            if quota is not None:
                windows = {"hour": quota.config.max_per_hour, "day": quota.config.max_per_day}
                relay.limits = {window: limit for window, limit in windows.items() if limit}
                if relay.limits:
                    relay.sent = (quota.sent_within(3600.0), quota.sent_within(86400.0))
            relays[name] = relay
        return _Snapshot(states, max(0.0, now - oldest), relays)

    def _families(self, snapshot: _Snapshot) -> Iterator[Metric]:
        yield GaugeMetricFamily("mqd_up", "1 while mqd is running and answering scrapes.", 1)
        yield GaugeMetricFamily(
            "mqd_start_time_seconds",
            "When the daemon started, as a Unix timestamp.",
            self.daemon.started_at,
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
