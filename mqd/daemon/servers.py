"""The daemon's optional services: the event store (``[tracking]``), notifications to the
application (``[notify]``), the HTTP server (``[http]``: webhooks, API, web view), the
Prometheus endpoint (``[metrics]``) and OpenTelemetry traces (``[tracing]``). Each is imported
only when its table turns it on."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from mqd.events import Event
from mqd.faults import Paused
from mqd.tracking.pause import TrackingPause

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from mqd.admin.service import QueueAdmin
    from mqd.config.schema import Config
    from mqd.delivery.guards import Guards
    from mqd.http.metrics import Metrics, MetricsServer
    from mqd.http.server import HttpServer
    from mqd.intake.source import Source, SourceStatus
    from mqd.queue.store import QueueStore
    from mqd.relays.base import Relay
    from mqd.tracing.spans import Tracing
    from mqd.tracking.notify import Notifier
    from mqd.tracking.tracker import Tracker

__all__ = ["Servers"]

log = logging.getLogger("mqd.daemon")


class Served(Protocol):
    """What the servers see of the daemon: what the HTTP server (``mqd.http.site.Site``) and
    the metrics read."""

    @property
    def config(self) -> Config: ...
    @property
    def relays(self) -> Mapping[str, Relay]: ...
    @property
    def tracker(self) -> Tracker | None: ...
    @property
    def admin(self) -> QueueAdmin: ...
    @property
    def store(self) -> QueueStore: ...
    @property
    def guards(self) -> Guards: ...
    @property
    def started_at(self) -> float: ...
    def source_status(self) -> Sequence[SourceStatus]: ...
    def intake_sources(self) -> Sequence[Source]: ...


class Servers:
    def __init__(self, daemon: Served, *, tracing: Tracing | None = None) -> None:
        self.daemon = daemon
        #: Spans from the events (None unless [tracing] is enabled, or given: tests).
        self.tracing = tracing
        self._own_tracing = False
        #: The event store's writer and reader (None when [tracking] is off).
        self.tracker: Tracker | None = None
        #: Status changes POSTed to the application (None unless [notify] url is set).
        self.notifier: Notifier | None = None
        #: Webhooks, the JSON API and the web view (None unless [http] is enabled).
        self.http: HttpServer | None = None
        #: The Prometheus counters (None unless [metrics] is enabled), and their endpoint.
        self.metrics: Metrics | None = None
        self.metrics_server: MetricsServer | None = None

    @property
    def faults(self) -> list[Paused]:
        return [TrackingPause(self.tracker.keeper)] if self.tracker is not None else []

    def observe(self, event: Event) -> None:
        if self.metrics is not None:
            self.metrics.observe(event)
        if self.tracker is not None:
            self.tracker.observe(event)
        if self.tracing is not None:
            self.tracing.observe(event)

    async def start(self) -> None:
        config = self.daemon.config
        if config.tracing.enabled and self.tracing is None:
            self._start_tracing(config)
        if config.metrics.enabled:
            # prometheus_client: only when asked for
            from mqd.http.metrics import Metrics, MetricsServer

            self.metrics = Metrics(self.daemon)
            self.metrics_server = MetricsServer(self.daemon, self.metrics)
            await self.metrics_server.start()
        if config.tracking.enabled:
            from mqd.tracking.tracker import Tracker

            self.tracker = await Tracker.open(config)
            if config.notify.url:
                from mqd.tracking.notify import Notifier

                self.notifier = Notifier(self.tracker, config.notify)
                self.notifier.start()
        if config.http.enabled:
            from mqd.http.server import HttpServer

            self.http = HttpServer(self.daemon)
            await self.http.start()

    def _start_tracing(self, config: Config) -> None:
        from mqd.tracing.status import tracing_status

        status = tracing_status(config)
        if not status.on:
            log.warning("tracing: %s", status.why)
            return
        try:
            # OpenTelemetry: only when asked for
            from mqd.tracing.spans import Tracing

            self.tracing = Tracing.from_status(status)
            self._own_tracing = True
        except Exception as exc:  # traces are an aid: the mail goes without them
            log.error("tracing: cannot set up the exporters, so no traces: %r", exc)
            return
        log.info("tracing %s", status.why)

    async def stop(self) -> None:
        if self.tracing is not None and self._own_tracing:  # one given is its giver's to stop
            tracing, self.tracing, self._own_tracing = self.tracing, None, False
            await asyncio.to_thread(tracing.shutdown)
        if self.http is not None:
            await self.http.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.notifier is not None:
            await self.notifier.stop()
        if self.tracker is not None:
            await self.tracker.close()
