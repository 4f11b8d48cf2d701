"""OpenTelemetry spans from the daemon's events (``mqd[otel]``; imported only when tracing is on,
see ``mqd.tracing.status``).

One trace per message, from hand-over to its last attempt (docs/tracing.md)::

    mqd message                 accepted → completed / failed / deleted (exported at the end)
    ├── mqd intake              claimed from the spool → durable in the queue
    ├── mqd queued              waiting for attempt n (after acceptance, or after attempt n-1)
    ├── mqd relay <name>        one per relay called: relay, server.address, reply code
    └── mqd bounce              a DSN queued (its own trace continues from here)

Spans are made from the events' times (start and end given explicitly), so they are exact
whatever order they are exported in. The message span's id and, without a ``traceparent``, the
trace id derive from the queue id (``mqd.message.tracecontext``): the spans of an attempt after
a restart join the same trace, under a parent that is exported when the message ends.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace import TraceFlags as Flags
from opentelemetry.util.types import AttributeValue

from mqd.events import (
    Attempted,
    Bounced,
    Completed,
    Deleted,
    Event,
    Failed,
    MessageEvent,
    Queued,
    RelayCall,
)
from mqd.message.tracecontext import MessageTrace, message_trace, span_id_for
from mqd.tracing.status import TracingStatus
from mqd.version import __version__

__all__ = ["Tracing", "build_exporters"]

log = logging.getLogger("mqd.tracing")

_REPLY = re.compile(r"([2-5]\d\d)(?:[ -]+([2-5]\.\d{1,3}\.\d{1,3}))?")
_ENDS = {Completed: "completed", Failed: "failed", Deleted: "deleted"}


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class _Ids(IdGenerator):
    """Random ids, except the next ones set beforehand: the message's derived trace and span
    ids (the SDK's tracer takes its ids from its generator only)."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self.trace_id: int | None = None
        self.span_id: int | None = None

    def generate_span_id(self) -> int:
        span_id, self.span_id = self.span_id, None
        return span_id or self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        trace_id, self.trace_id = self.trace_id, None
        return trace_id or self._random.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return False


def build_exporters(status: TracingStatus) -> list[SpanExporter]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names; each reads its own ``OTEL_*`` settings."""
    exporters: list[SpanExporter] = []
    for name in status.exporters:
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif status.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter as GrpcExporter,
            )

            exporters.append(GrpcExporter())
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
    return exporters


class Tracing:
    """Turns events into spans (``observe``, on the event loop); ``shutdown`` flushes them."""

    def __init__(self, provider: TracerProvider) -> None:
        ids = provider.id_generator
        if not isinstance(ids, _Ids):
            raise TypeError("the provider must be made by Tracing.make_provider()")
        self.provider = provider
        self._ids = ids
        self.tracer = provider.get_tracer("mqd", __version__)
        #: When each message was queued, until its first attempt (the queued span's start).
        self._queued_at: dict[str, float] = {}
        #: The DSN each message's last bounce span was made for (one span per DSN).
        self._bounced: dict[str, str] = {}

    @staticmethod
    def make_provider(
        processors: Sequence[SpanProcessor] = (), environ: Mapping[str, str] | None = None
    ) -> TracerProvider:
        """A tracer provider for ``Tracing``: its resource from ``OTEL_SERVICE_NAME`` and
        ``OTEL_RESOURCE_ATTRIBUTES`` (``service.name`` is ``mqd`` unless they say), its sampler
        from ``OTEL_TRACES_SAMPLER``."""
        env = os.environ if environ is None else environ
        resource = Resource.create({"service.version": __version__})
        named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        )
        if not named:
            resource = resource.merge(Resource({SERVICE_NAME: "mqd"}))
        provider = TracerProvider(resource=resource, id_generator=_Ids())
        for processor in processors:
            provider.add_span_processor(processor)
        return provider

    @classmethod
    def from_status(cls, status: TracingStatus) -> Tracing:
        """Tracing as the environment configures it, exporting in the background."""
        exporters = build_exporters(status)
        return cls(cls.make_provider([BatchSpanProcessor(exporter) for exporter in exporters]))

    def shutdown(self) -> None:
        """Export what is left and stop (blocks: call it off the event loop)."""
        self.provider.shutdown()

    # -- events to spans --------------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Make the spans ``event`` ends. Never raises: a trace must not disturb a delivery."""
        try:
            self._observe(event)
        except Exception:
            log.exception("tracing: cannot make the spans of event %s", event.kind.value)

    def _observe(self, event: Event) -> None:
        match event:
            case Queued():
                trace_ = message_trace(event.message_id, event.traceparent)
                self._queued_at[event.message_id] = event.time
                start = event.accepted_at if event.accepted_at is not None else event.time
                parent = self._parent(trace_)
                self._child(parent, "mqd intake", start, event.time, self._message_attrs(event))
            case Attempted():
                self._attempted(event)
            case Bounced():
                self._bounce(event)
            case Completed() | Failed() | Deleted():
                self._end(event)

    def _attempted(self, event: Attempted) -> None:
        trace_ = message_trace(event.message_id, event.traceparent)
        since = self._queued_at.pop(event.message_id, None) if event.attempt == 1 else None
        attrs: dict[str, AttributeValue] = {
            "mqd.queue_id": event.message_id,
            "mqd.attempt": event.attempt,
        }
        parent = self._parent(trace_)
        self._child(parent, "mqd queued", since or event.waiting_since, event.started, attrs)
        for call in event.calls:
            self._relay_call(parent, event, call)

    def _relay_call(self, parent: Context, event: Attempted, call: RelayCall) -> None:
        attrs: dict[str, AttributeValue] = {
            "mqd.queue_id": event.message_id,
            "mqd.attempt": event.attempt,
            "mqd.relay": call.relay,
            "mqd.recipients": len(call.recipients),
            "mqd.outcome": call.outcome,
            "mqd.reply": call.reply,
        }
        if call.remote:
            host, sep, port = call.remote.rpartition(":")
            if sep and port.isdigit():
                attrs["server.address"], attrs["server.port"] = host.strip("[]"), int(port)
            else:
                attrs["server.address"] = call.remote
        match = _REPLY.match(call.reply)
        if match:
            attrs["mqd.reply.code"] = int(match.group(1))
            if match.group(2):
                attrs["mqd.reply.status"] = match.group(2)
        if call.provider_id:
            attrs["mqd.provider_id"] = call.provider_id
        status = None if call.outcome == "delivered" else Status(StatusCode.ERROR, call.reply)
        self._child(
            parent,
            f"mqd relay {call.relay}",
            call.started,
            call.ended,
            attrs,
            kind=SpanKind.CLIENT,
            status=status,
        )

    def _bounce(self, event: Bounced) -> None:
        if event.dsn_id is not None and self._bounced.get(event.message_id) == event.dsn_id:
            return  # one span for a DSN, whatever the number of its failed recipients
        trace_ = message_trace(event.message_id, event.traceparent)
        attrs: dict[str, AttributeValue] = {
            "mqd.queue_id": event.message_id,
            "mqd.dsn_sent": event.dsn_sent,
        }
        if event.reply:
            attrs["mqd.reply"] = event.reply
        if event.status_code:
            attrs["mqd.reply.status"] = event.status_code
        span_id = None
        if event.dsn_id is not None:
            self._bounced[event.message_id] = event.dsn_id
            attrs["mqd.dsn_id"] = event.dsn_id
            span_id = span_id_for(event.message_id, "bounce", event.dsn_id)
        parent = self._parent(trace_)
        self._child(parent, "mqd bounce", event.time, event.time, attrs, span_id=span_id)

    def _end(self, event: MessageEvent) -> None:
        """The message's own span, the parent of the others: it ends with the message."""
        self._queued_at.pop(event.message_id, None)
        self._bounced.pop(event.message_id, None)
        trace_ = message_trace(event.message_id, event.traceparent)
        attrs = self._message_attrs(event)
        attrs["mqd.outcome"] = _ENDS[type(event)]
        attrs["mqd.attempts"] = event.attempts
        start = event.accepted_at if event.accepted_at is not None else event.time
        parent = self._application(trace_)
        if parent is None:
            self._ids.trace_id = trace_.trace_id
        self._ids.span_id = trace_.span_id
        try:
            span = self.tracer.start_span(
                "mqd message",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes=attrs,
                start_time=_ns(start),
            )
        finally:
            self._ids.trace_id = self._ids.span_id = None
        if isinstance(event, Failed):
            span.set_status(Status(StatusCode.ERROR, "failed: moved to the failed folder"))
        span.end(end_time=_ns(max(start, event.time)))

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _message_attrs(event: MessageEvent) -> dict[str, AttributeValue]:
        attrs: dict[str, AttributeValue] = {
            "mqd.queue_id": event.message_id,
            "mqd.relay": event.relay,
            "mqd.recipients": len(event.recipients),
        }
        if len(event.route) > 1:
            attrs["mqd.route"] = list(event.route)
        return attrs

    @staticmethod
    def _application(trace_: MessageTrace) -> Context | None:
        """The application's span the message continues (its ``traceparent``), as a context."""
        if trace_.parent is None:
            return None
        remote = SpanContext(
            trace_.trace_id, trace_.parent.span_id, True, Flags(trace_.parent.flags)
        )
        return trace.set_span_in_context(NonRecordingSpan(remote))

    def _parent(self, trace_: MessageTrace) -> Context:
        """The message's span as the parent of the others, sampled as the message span is:
        the configured sampler's decision for it (with the application's span as its parent),
        which is the same on every attempt and in every process."""
        app = self._application(trace_)
        result = self.provider.sampler.should_sample(app, trace_.trace_id, "mqd message")
        sampled = result.decision is Decision.RECORD_AND_SAMPLE
        flags = Flags(Flags.SAMPLED if sampled else Flags.DEFAULT)
        message = SpanContext(trace_.trace_id, trace_.span_id, True, flags)
        return trace.set_span_in_context(NonRecordingSpan(message))

    def _child(
        self,
        parent: Context,
        name: str,
        start: float,
        end: float,
        attrs: dict[str, AttributeValue],
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        status: Status | None = None,
        span_id: int | None = None,
    ) -> None:
        self._ids.span_id = span_id
        try:
            span = self.tracer.start_span(
                name,
                context=parent,
                kind=kind,
                attributes=attrs,
                start_time=_ns(start),
            )
        finally:
            self._ids.span_id = None
        if status is not None:
            span.set_status(status)
        span.end(end_time=_ns(max(start, end)))
