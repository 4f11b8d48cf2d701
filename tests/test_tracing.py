"""OpenTelemetry traces (mqd.tracing, ``[tracing]``, docs/tracing.md): a running daemon relaying
to a real SMTP server, its spans caught by the SDK's in-memory exporter. One message is one
trace (intake, queued, one span per relay call, the bounce) that later attempts and a given
``traceparent`` join; off, nothing of OpenTelemetry is imported."""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from corehelpers import drop, make_message
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.message.reply import Reply
from mqd.message.tracecontext import message_trace, span_id_for
from mqd.plugins.host import PluginHost
from mqd.queue.entry import QueueEntry
from mqd.relays.memory import MemoryRelay
from mqd.testing import Harness
from mqd.testing.harness import queued_entries_async
from mqd.tracing.spans import Tracing
from mqd.tracing.status import tracing_status

APP_TRACE = "0af7651916cd43dd8448eb211c80319c"
APP_SPAN = "b7ad6b7169203331"


def memory_tracing() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing(Tracing.make_provider([SimpleSpanProcessor(exporter)])), exporter


async def run_traced(config: Config, host: PluginHost) -> tuple[Daemon, list[ReadableSpan]]:
    tracing, exporter = memory_tracing()
    daemon = Daemon(config, host=host, once=True, shutdown_timeout=5, tracing=tracing)
    await daemon.run()
    return daemon, list(exporter.get_finished_spans())


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    [span] = named(spans, name)
    return span


def ids(span: ReadableSpan) -> tuple[int, int, int | None]:
    """(trace id, span id, parent span id)."""
    context = span.context
    assert context is not None
    return context.trace_id, context.span_id, span.parent.span_id if span.parent else None


def times(span: ReadableSpan) -> tuple[int, int]:
    assert span.start_time is not None and span.end_time is not None
    return span.start_time, span.end_time


async def test_one_message_is_one_trace_of_intake_queued_and_the_relay_call(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    drop(spool, make_message(to=("alice@example.net", "bob@example.net")))
    _, spans = await run_traced(plain_config, host)
    smtp_server.wait_for(1)

    assert sorted(s.name for s in spans) == [
        "mqd intake",
        "mqd message",
        "mqd queued",
        "mqd relay sink",
    ]
    message = one(spans, "mqd message")
    queue_id = message.attributes["mqd.queue_id"]  # type: ignore[index]
    assert isinstance(queue_id, str)
    expected = message_trace(queue_id, None)
    trace_id, root_id, root_parent = ids(message)
    assert (trace_id, root_id, root_parent) == (expected.trace_id, expected.span_id, None)
    for span in spans:
        if span is not message:
            assert ids(span)[0] == trace_id and ids(span)[2] == root_id
            assert span.attributes["mqd.queue_id"] == queue_id  # type: ignore[index]
    assert message.kind is SpanKind.CONSUMER
    assert message.attributes["mqd.outcome"] == "completed"  # type: ignore[index]
    assert message.attributes["mqd.attempts"] == 1  # type: ignore[index]
    assert message.attributes["mqd.recipients"] == 2  # type: ignore[index]

    relay = one(spans, "mqd relay sink")
    assert relay.kind is SpanKind.CLIENT
    assert dict(relay.attributes or {}) == {
        "mqd.queue_id": queue_id,
        "mqd.attempt": 1,
        "mqd.relay": "sink",
        "mqd.recipients": 2,
        "mqd.outcome": "delivered",
        "mqd.reply": relay.attributes["mqd.reply"],  # type: ignore[index]
        "mqd.reply.code": 250,
        "mqd.reply.status": "2.0.0",
        "server.address": "127.0.0.1",
    }
    assert str(relay.attributes["mqd.reply"]).startswith("250")  # type: ignore[index]
    assert relay.status.status_code is StatusCode.UNSET

    # In order, from the events' times: accepted, queued, sent, done.
    intake, queued = one(spans, "mqd intake"), one(spans, "mqd queued")
    assert times(message)[0] <= times(intake)[0] <= times(intake)[1] <= times(queued)[0]
    assert times(queued)[1] <= times(relay)[0] <= times(relay)[1] <= times(message)[1]
    assert queued.attributes["mqd.attempt"] == 1  # type: ignore[index]


async def test_a_deferred_then_delivered_message_keeps_one_trace_across_runs(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    drop(spool, make_message(to=("temp-carol@example.net",)))
    daemon, first = await run_traced(plain_config, host)
    smtp_server.wait_for(0)
    [entry] = await queued_entries_async(daemon.config)
    # The first run ends with the message still queued: no message span yet.
    assert sorted(s.name for s in first) == ["mqd intake", "mqd queued", "mqd relay sink"]
    deferred = one(first, "mqd relay sink")
    assert deferred.attributes["mqd.outcome"] == "transient"  # type: ignore[index]
    assert deferred.attributes["mqd.reply.code"] == 451  # type: ignore[index]
    assert deferred.status.status_code is StatusCode.ERROR

    # A new daemon (as after a restart: a new process, a new tracer) delivers it.
    smtp_server.temp_failures = False
    state_file = plain_config.queue.dir / "state" / f"{entry.id}.json"
    state = QueueEntry.from_json(state_file.read_bytes())
    state.next_attempt_at = 0
    state_file.write_bytes(state.to_json())
    _, second = await run_traced(plain_config, host)
    smtp_server.wait_for(1)
    assert sorted(s.name for s in second) == ["mqd message", "mqd queued", "mqd relay sink"]

    spans = first + second
    message = one(spans, "mqd message")
    trace_id, root_id, _ = ids(message)
    assert trace_id == message_trace(entry.id, None).trace_id
    assert {ids(s)[0] for s in spans} == {trace_id}
    assert {ids(s)[2] for s in spans if s is not message} == {root_id}
    calls = named(spans, "mqd relay sink")
    assert [c.attributes["mqd.attempt"] for c in calls] == [1, 2]  # type: ignore[index]
    assert [c.attributes["mqd.outcome"] for c in calls] == ["transient", "delivered"]  # type: ignore[index]
    waits = named(spans, "mqd queued")
    assert [w.attributes["mqd.attempt"] for w in waits] == [1, 2]  # type: ignore[index]
    # The second wait runs from the end of the first attempt to the start of the second.
    assert times(calls[0])[1] <= times(waits[1])[0] <= times(waits[1])[1] <= times(calls[1])[0]
    assert message.attributes["mqd.attempts"] == 2  # type: ignore[index]
    assert times(message)[0] <= times(one(spans, "mqd intake"))[0]


async def test_a_traceparent_header_continues_the_applications_trace(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    traceparent = f"00-{APP_TRACE}-{APP_SPAN}-01"
    drop(spool, make_message(extra_headers=(f"traceparent: {traceparent}",)))
    _, spans = await run_traced(plain_config, host)
    [received] = smtp_server.wait_for(1)

    message = one(spans, "mqd message")
    trace_id, root_id, parent_id = ids(message)
    assert (trace_id, parent_id) == (int(APP_TRACE, 16), int(APP_SPAN, 16))
    assert message.parent is not None and message.parent.is_remote
    assert {ids(s)[0] for s in spans} == {int(APP_TRACE, 16)}
    assert {ids(s)[2] for s in spans if s is not message} == {root_id}
    # The header is the application's: it goes on downstream untouched.
    assert f"traceparent: {traceparent}".encode() in received.data


async def test_an_unsampled_traceparent_is_respected_and_a_bad_one_ignored(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    drop(spool, make_message(extra_headers=(f"traceparent: 00-{APP_TRACE}-{APP_SPAN}-00",)))
    _, spans = await run_traced(plain_config, host)
    assert spans == []  # the application decided not to sample this trace

    drop(spool, make_message(extra_headers=("traceparent: 00-not-a-trace-01",)))
    _, spans = await run_traced(plain_config, host)
    smtp_server.wait_for(2)
    message = one(spans, "mqd message")
    queue_id = str(message.attributes["mqd.queue_id"])  # type: ignore[index]
    assert ids(message) == (message_trace(queue_id, None).trace_id, span_id_for(queue_id), None)


async def test_a_bounce_is_a_span_and_the_dsn_continues_the_trace_from_it(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    drop(spool, make_message(to=("perm-bob@example.net", "perm-dan@example.net")))
    _, spans = await run_traced(plain_config, host)
    smtp_server.wait_for(1)  # the DSN, to the sender

    bounce = one(spans, "mqd bounce")  # one DSN for both recipients: one span
    messages = named(spans, "mqd message")
    original = next(m for m in messages if m.attributes["mqd.outcome"] == "failed")  # type: ignore[index]
    dsn = next(m for m in messages if m is not original)
    assert original.status.status_code is StatusCode.ERROR
    trace_id, original_id, _ = ids(original)
    assert ids(bounce)[0] == trace_id and ids(bounce)[2] == original_id
    assert bounce.attributes["mqd.dsn_sent"] is True  # type: ignore[index]
    assert bounce.attributes["mqd.reply.status"] == "5.1.1"  # type: ignore[index]
    assert bounce.attributes["mqd.dsn_id"] == dsn.attributes["mqd.queue_id"]  # type: ignore[index]
    # The DSN's own trace is this one, under the bounce.
    assert ids(dsn)[0] == trace_id and ids(dsn)[2] == ids(bounce)[1]
    dsn_call = next(
        s
        for s in named(spans, "mqd relay sink")
        if s.attributes["mqd.queue_id"] == dsn.attributes["mqd.queue_id"]  # type: ignore[index]
    )
    assert ids(dsn_call)[0] == trace_id and ids(dsn_call)[2] == ids(dsn)[1]


async def test_a_failover_attempt_has_a_span_for_each_relay_it_called(
    mqd_harness: Harness,
) -> None:
    config = mqd_harness.configure(
        {"primary": {"plugin": "memory"}, "backup": {"plugin": "memory"}},
        spools=[
            {
                "path": mqd_harness.spool_dir,
                "relay": ["primary", "backup"],
                "allowed_senders": ["*@example.com"],
            }
        ],
    )
    tracing, exporter = memory_tracing()
    host = PluginHost(entry_points=False)
    daemon = Daemon(config, host=host, once=True, shutdown_timeout=5, tracing=tracing)
    primary = daemon.relays["primary"]
    assert isinstance(primary, MemoryRelay)
    primary.replies["bob@example.net"] = Reply(452, "mailbox full", "4.2.2")
    mqd_harness.drop(make_message(to=("alice@example.net", "bob@example.net")))
    await daemon.run()

    spans = exporter.get_finished_spans()
    first, second = named(spans, "mqd relay primary"), named(spans, "mqd relay backup")
    assert len(first) == len(second) == 1
    assert first[0].attributes["mqd.outcome"] == "mixed"  # type: ignore[index]
    assert first[0].attributes["mqd.recipients"] == 2  # type: ignore[index]
    assert second[0].attributes["mqd.recipients"] == 1  # type: ignore[index]
    assert second[0].attributes["mqd.attempt"] == 1  # type: ignore[index]
    assert times(first[0])[1] <= times(second[0])[0]
    message = one(spans, "mqd message")
    assert message.attributes["mqd.route"] == ("primary", "backup")  # type: ignore[index]
    assert {ids(s)[2] for s in (*first, *second)} == {ids(message)[1]}


# -- on or off ------------------------------------------------------------------------------------


def outbox_config(write_config: Callable[[str], Path], tmp_path: Path, tracing: str) -> Path:
    """A config from a spool to an outbox folder, with ``tracing`` as its [tracing] table."""
    return write_config(
        f"""
        [queue]
        dir = "{tmp_path / "queue"}"
        [[spool]]
        path = "{tmp_path / "spool"}"
        relay = "outbox"
        allowed_senders = ["*@example.com"]
        [relays.outbox]
        plugin = "outbox"
        path = "{tmp_path / "outbox"}"
        [tracing]
        {tracing}
        """
    )


def tracing_config(write_config: Callable[[str], Path], tmp_path: Path, enabled: bool) -> Config:
    return load_config(outbox_config(write_config, tmp_path, f"enabled = {str(enabled).lower()}"))


def test_status_says_whether_tracing_is_on_and_why(
    write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    off = tracing_config(write_config, tmp_path, False)
    on = tracing_config(write_config, tmp_path, True)
    assert tracing_status(off, {}).why == "off: [tracing] enabled is false"
    assert not tracing_status(off, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}).on
    status = tracing_status(on, {})
    assert status.on and status.exporters == ("otlp",)
    assert "OTLP over http/protobuf to http://localhost:4318 (the default)" in status.why
    status = tracing_status(on, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert "to http://collector:4318" in status.why
    assert not tracing_status(on, {"OTEL_SDK_DISABLED": "true"}).on
    bad = tracing_status(on, {"OTEL_TRACES_EXPORTER": "zipkin"})
    assert not bad.on and "zipkin" in bad.problems[0]
    assert tracing_status(on, {"OTEL_TRACES_EXPORTER": "console"}).exporters == ("console",)


def test_config_check_says_whether_tracing_is_on(
    write_config: Callable[[str], Path], tmp_path: Path, env: dict[str, str]
) -> None:
    path = outbox_config(write_config, tmp_path, "enabled = true")
    env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.test:4318"}
    done = subprocess.run(
        [sys.executable, "-m", "mqd", "--config", str(path), "config", "check"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "# tracing: on ([tracing] enabled = true): exporting to OTLP over http/protobuf to " in (
        done.stdout
    )
    assert "http://collector.test:4318" in done.stdout
    assert "[tracing]\nenabled = true" in done.stdout


OFF_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from mqd.config.load import load_config
    from mqd.daemon.root import Daemon
    from mqd.plugins.host import PluginHost

    config = load_config(Path(sys.argv[1]))
    asyncio.run(Daemon(config, host=PluginHost(entry_points=False), once=True).run())
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")))
    """
)


def test_off_no_opentelemetry_module_is_imported(
    write_config: Callable[[str], Path], tmp_path: Path, env: dict[str, str]
) -> None:
    path = outbox_config(write_config, tmp_path, "enabled = false")
    (tmp_path / "spool").mkdir()
    drop(tmp_path / "spool", make_message())
    env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.test:4318"}
    done = subprocess.run(
        [sys.executable, "-c", OFF_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == []
    assert not list((tmp_path / "spool").glob("*.eml"))  # it ran: the message was taken


class Collector:
    """An OTLP/HTTP collector on 127.0.0.1: keeps each ExportTraceServiceRequest POSTed to
    ``/v1/traces``."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    collector.requests.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[tuple[str, str, dict[str, object]]]:
        """(service.name, span name, the span's fields) of every span received."""
        found = []
        for body in self.requests:
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        found.append((service, span.name, MessageToDict(span)))
        return found


def test_a_daemon_exports_by_otlp_as_the_otel_variables_say(
    write_config: Callable[[str], Path], tmp_path: Path, env: dict[str, str]
) -> None:
    collector = Collector()
    try:
        path = outbox_config(write_config, tmp_path, "enabled = true")
        (tmp_path / "spool").mkdir()
        traceparent = f"00-{APP_TRACE}-{APP_SPAN}-01"
        mqd = [sys.executable, "-m", "mqd", "--config", str(path)]
        send = [*mqd, "send", "--from", "app@example.com", "--to", "bob@example.net"]
        subprocess.run([*send, "--body", "hi"], env={**env, "TRACEPARENT": traceparent}, check=True)
        bad = subprocess.run([*send, "--traceparent", "00-nope-01"], env=env, capture_output=True)
        assert bad.returncode == 64 and b"not a W3C traceparent" in bad.stderr
        env = {
            **env,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
            "OTEL_SERVICE_NAME": "mail-eu",
        }
        subprocess.run([*mqd, "run", "--once"], env=env, check=True, timeout=60)
    finally:
        collector.server.shutdown()
    spans = collector.spans()
    assert sorted(name for _, name, _ in spans) == [
        "mqd intake",
        "mqd message",
        "mqd queued",
        "mqd relay outbox",
    ]
    assert {service for service, _, _ in spans} == {"mail-eu"}
    # OTLP/JSON spells ids in base64: compare the bytes.
    trace_ids = {base64.b64decode(str(fields["traceId"])).hex() for _, _, fields in spans}
    assert trace_ids == {APP_TRACE}
    [message] = [fields for _, name, fields in spans if name == "mqd message"]
    assert base64.b64decode(str(message["parentSpanId"])).hex() == APP_SPAN
    # The header went on to the relay (the outbox's file) untouched.
    [written] = (tmp_path / "outbox").rglob("*.eml")
    assert f"traceparent: {traceparent}".encode() in written.read_bytes()


def test_mqd_sendmail_keeps_the_traceparent_header(
    write_config: Callable[[str], Path], tmp_path: Path, env: dict[str, str]
) -> None:
    """The header is how a sendmail-speaking application (PHP's mail()) hands its trace over."""
    path = outbox_config(write_config, tmp_path, "enabled = false")
    (tmp_path / "spool").mkdir()
    traceparent = f"00-{APP_TRACE}-{APP_SPAN}-01"
    message = make_message(extra_headers=(f"traceparent: {traceparent}",))
    subprocess.run(
        [sys.executable, "-m", "mqd", "--config", str(path), "sendmail", "-t", "-i"],
        input=message,
        env=env,
        check=True,
    )
    [written] = (tmp_path / "spool").glob("*.eml")
    assert f"traceparent: {traceparent}".encode() in written.read_bytes()


def test_without_the_sdk_tracing_stays_off_with_a_warning(
    write_config: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mqd.tracing.status as status_module

    monkeypatch.setattr(status_module, "_installed", lambda module: False)
    status = tracing_status(tracing_config(write_config, tmp_path, True), {})
    assert not status.on
    assert "pip install 'mqd[otel]'" in status.problems[0]
    assert status.why.startswith("off: [tracing] enabled = true, but the OpenTelemetry SDK")
