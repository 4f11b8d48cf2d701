"""The Prometheus endpoint: a real daemon delivering to the test SMTP server, scraped over HTTP."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from corehelpers import drop, make_event, make_message, run_once
from prometheus_client.parser import text_string_to_metric_families
from smtpserver import SMTPPeer

from mqd import __version__
from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.delivery.guards import Guards
from mqd.errors import ConfigError
from mqd.events import Event, EventKind
from mqd.http.metrics import Metrics, MetricsServer
from mqd.intake.source import SourceStatus
from mqd.plugins.hookspecs import hookimpl
from mqd.plugins.host import PluginHost
from mqd.queue.entry import QueueEntry, RecipientState
from mqd.queue.memory import MemoryStore
from mqd.queue.store import Incoming
from mqd.testing import wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Recorder:
    """Keeps every message id the daemon emits, to check that none reaches the scrape."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    @hookimpl
    def mqd_track_event(self, event: Event) -> None:
        self.ids.add(event.message_id)


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused, every time."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def metrics_config(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path, smtp_server: SMTPPeer
) -> Callable[..., Config]:
    """``make(metrics=..., sink=..., extra=...)``: [metrics] and [relays.sink] lines, and more
    tables. Retries wait an hour, so a deferred message stays deferred during the test."""

    def make(metrics: str = "enabled = true\nport = 0", sink: str = "", extra: str = "") -> Config:
        text = f"""
[queue]
dir = "{queue_dir}"
scan_interval = "1s"
bounce_sender = "mailer-daemon@mqd.test"
retry = {{ initial = "1h", max = "2h", lifetime = "1d" }}

[metrics]
{metrics}

[[spool]]
path = "{spool}"
relay = "sink"
allowed_senders = ["app@example.com", "*@example.org"]

[relays.sink]
plugin = "smtp"
host = "127.0.0.1"
port = {smtp_server.port}
security = "none"
{sink}

{extra}
"""
        return load_config(write_config(text))

    return make


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return response.read().decode("utf-8")


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_a_running_daemon_serves_its_metrics(
    metrics_config: Callable[..., Config], spool: Path, smtp_server: SMTPPeer, dead_port: int
) -> None:
    config = metrics_config(
        sink="max_per_hour = 100",
        extra=f"""
[relays.dead]
plugin = "smtp"
host = "127.0.0.1"
port = {dead_port}
security = "none"
circuit_failures = 1

[[route]]
senders = ["*@example.org"]
relay = "dead"
""",
    )
    recorder = Recorder()
    daemon = Daemon(config, host=PluginHost(entry_points=False, extra=[recorder]))
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 10)
    assert daemon.metrics is not None
    port = daemon.metrics.port
    assert port != 0
    assert daemon.metrics.url == f"http://127.0.0.1:{port}/metrics"

    drop(spool, make_message(to=("alice@example.net",)))  # delivered
    drop(spool, make_message(to=("temp-bob@example.net",)))  # 451: deferred
    drop(spool, make_message(to=("perm-carol@example.net",)))  # 550: bounced, DSN delivered
    drop(spool, make_message("ops@example.org", to=("dave@example.net",)))  # relay down
    # Delivered: alice and the DSN. Left: two deferred messages, attempted once each.
    await asyncio.to_thread(smtp_server.wait_for, 2)
    await wait_until(
        lambda: (
            len(daemon.store.schedule) == 2
            and not daemon.in_flight
            and all(entry.attempts == 1 for entry in daemon.store.schedule)
        ),
        "two deferred messages",
    )
    text = await asyncio.to_thread(scrape_text, port)
    daemon.request_stop()
    await asyncio.wait_for(task, 10)

    samples = parse(text)
    expected_events = {"queued": 4, "rejected": 0, "failed": 1, "completed": 2, "deleted": 0}
    for event, count in expected_events.items():
        assert value(samples, "mqd_messages_total", event=event) == count, event
    expected_outcomes = {"delivered": 2, "deferred": 2, "bounced": 1}
    for outcome, count in expected_outcomes.items():
        assert value(samples, "mqd_recipients_total", outcome=outcome) == count, outcome
    # One unit per metric: recipients are never counted as messages.
    for outcome in expected_outcomes:
        assert ("mqd_messages_total", frozenset({("event", outcome)})) not in samples, outcome
    deliveries = {
        ("sink", "delivered"): 2,
        ("sink", "deferred"): 1,
        ("sink", "bounced"): 1,
        ("dead", "delivered"): 0,
        ("dead", "deferred"): 1,
        ("dead", "bounced"): 0,
    }
    for (relay, outcome), count in deliveries.items():
        got = value(samples, "mqd_relay_deliveries_total", relay=relay, outcome=outcome)
        assert got == count, (relay, outcome)
    assert value(samples, "mqd_delivery_duration_seconds_count", relay="sink") == 2
    assert value(samples, "mqd_delivery_duration_seconds_count", relay="dead") == 0
    assert value(samples, "mqd_delivery_duration_seconds_bucket", relay="sink", le="+Inf") == 2
    assert value(samples, "mqd_delivery_age_seconds_count") == 2
    assert value(samples, "mqd_delivery_age_seconds_bucket", le="86400.0") == 2

    states = {"active": 0, "deferred": 2, "held": 0, "waiting": 0}
    for state, count in states.items():
        assert value(samples, "mqd_queue_messages", state=state) == count, state
    assert 0 < value(samples, "mqd_oldest_message_age_seconds") < 3600

    assert value(samples, "mqd_relay_errors_total", relay="dead") == 1
    assert value(samples, "mqd_relay_errors_total", relay="sink") == 0
    assert value(samples, "mqd_relay_circuit_open", relay="dead") == 1
    assert value(samples, "mqd_relay_circuit_open", relay="sink") == 0
    assert value(samples, "mqd_relay_quota_waits_total", relay="sink") == 0
    # Four messages went through sink: alice, bob, carol and the DSN.
    assert value(samples, "mqd_relay_sent_last_hour", relay="sink") == 4
    assert value(samples, "mqd_relay_sent_last_day", relay="sink") == 4
    assert value(samples, "mqd_relay_quota_limit", relay="sink", window="hour") == 100
    assert ("mqd_relay_sent_last_hour", frozenset({("relay", "dead")})) not in samples

    assert value(samples, "mqd_up") == 1
    assert value(samples, "mqd_start_time_seconds") == daemon.started_at
    assert value(samples, "mqd_info", version=__version__) == 1

    # No address, no message id, anywhere: not in labels, not in help texts.
    assert "@" not in text
    assert len(recorder.ids) == 5
    assert not [message_id for message_id in recorder.ids if message_id in text]

    assert await asyncio.to_thread(refused, port), "the endpoint is still open after the stop"


async def test_quota_waits_and_waiting_messages(
    metrics_config: Callable[..., Config], spool: Path, smtp_server: SMTPPeer, host: PluginHost
) -> None:
    daemon = Daemon(metrics_config(sink="max_per_hour = 1"), host=host)
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 10)
    assert daemon.metrics is not None
    drop(spool, make_message(to=("alice@example.net",)))
    drop(spool, make_message(to=("bob@example.net",)))
    await asyncio.to_thread(smtp_server.wait_for, 1)
    await wait_until(lambda: daemon.guards.quotas["sink"].holds == 1, "the quota to hold one")
    await wait_until(
        lambda: len(daemon.store.schedule) == 1 and not daemon.in_flight, "one message left"
    )
    samples = parse(await asyncio.to_thread(scrape_text, daemon.metrics.port))
    daemon.request_stop()
    await asyncio.wait_for(task, 10)

    assert value(samples, "mqd_relay_quota_waits_total", relay="sink") == 1
    assert value(samples, "mqd_relay_sent_last_hour", relay="sink") == 1
    assert value(samples, "mqd_queue_messages", state="waiting") == 1
    assert value(samples, "mqd_queue_messages", state="deferred") == 0
    assert value(samples, "mqd_messages_total", event="completed") == 1


async def test_metrics_are_off_by_default(
    metrics_config: Callable[..., Config], spool: Path, host: PluginHost
) -> None:
    config = metrics_config(metrics="")
    assert not config.metrics.enabled
    assert config.metrics.host == "127.0.0.1"
    drop(spool, make_message())
    daemon = await run_once(config, host)
    assert daemon.metrics is None


async def test_a_port_in_use_is_a_config_error(
    metrics_config: Callable[..., Config], host: PluginHost
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = metrics_config(metrics=f"enabled = true\nport = {port}")
        with pytest.raises(ConfigError) as caught:
            await run_once(config, host)
    assert caught.value.key == "metrics.port"
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "in use" in message
    assert "set [metrics] port" in message
    assert str(config.source) in message
    # The failed start let go of the queue: the next daemon (without metrics) runs.
    daemon = await run_once(metrics_config(metrics=""), host)
    assert daemon.metrics is None


async def test_an_address_of_another_machine_is_a_config_error(
    metrics_config: Callable[..., Config], host: PluginHost
) -> None:
    config = metrics_config(metrics='enabled = true\nhost = "192.0.2.1"\nport = 0')  # TEST-NET-1
    with pytest.raises(ConfigError) as caught:
        await run_once(config, host)
    assert caught.value.key == "metrics.host"
    assert "set [metrics] host to 127.0.0.1" in str(caught.value)


def entry(message_id: str, *, created: float, attempts: int = 0, held: bool = False) -> QueueEntry:
    return QueueEntry(
        id=message_id,
        sender="app@example.com",
        recipients=[RecipientState("rcpt@example.net")],
        relay="sink",
        source="test",
        created_at=created,
        next_attempt_at=created,
        attempts=attempts,
        held=held,
    )


@dataclass
class Node:
    """What the metrics read of a daemon: here a memory store, filled by the test."""

    config: Config
    store: MemoryStore
    guards: Guards
    started_at: float

    def source_status(self) -> list[SourceStatus]:
        return []


async def test_queue_states_and_the_oldest_message(metrics_config: Callable[..., Config]) -> None:
    config = metrics_config()
    node = Node(config, MemoryStore(), Guards(config), time.time())
    await node.store.open()
    metrics = Metrics(node)
    now = time.time()
    await node.store.accept(
        [
            Incoming(queued, b"x")
            for queued in (
                entry("held0000000001", created=now - 7200, held=True),
                entry("active00000001", created=now - 600),
                entry("deferred000001", created=now - 60, attempts=3),
                entry("deferred000002", created=now - 30, attempts=1),
                entry("waiting0000001", created=now - 10),
            )
        ]
    )
    # Mark one entry in flight the way the scheduler does: leased.
    [active] = await node.store.lease_ids(["active00000001"])

    async def gauges() -> Samples:
        return parse((await metrics.render()).decode())

    samples = await gauges()
    expected = {"active": 1, "deferred": 2, "held": 1, "waiting": 1}
    assert {s: value(samples, "mqd_queue_messages", state=s) for s in expected} == expected
    # The held message is older, but held on purpose: the age is the active one's.
    assert 600 <= value(samples, "mqd_oldest_message_age_seconds") < 7200

    await node.store.complete(active, active.entry)
    await node.store.delete(["held0000000001", "deferred000001", "deferred000002"])
    await node.store.delete(["waiting0000001"])
    samples = await gauges()
    assert value(samples, "mqd_oldest_message_age_seconds") == 0
    assert value(samples, "mqd_queue_messages", state="waiting") == 0


async def test_observe_counts_and_never_raises(
    metrics_config: Callable[..., Config], host: PluginHost
) -> None:
    metrics = Metrics(Daemon(metrics_config(), host=host))

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("mqd_recipients_total", outcome="delivered") == 0
    metrics.observe(make_event(EventKind.DELIVERED, "x1", relay="sink", elapsed=0.3, age=42.0))
    # A buggy emitter's event: it costs its duration, never the delivery.
    metrics.observe(make_event(EventKind.DELIVERED, "x2", relay="sink", elapsed="?"))
    metrics.observe(make_event(EventKind.DEFERRED, "x3", relay=None))  # counted, not per relay
    metrics.observe(make_event(EventKind.CLAIMED, "x4"))
    metrics.observe(make_event(EventKind.COMPLETED, "x1"))
    assert sample("mqd_recipients_total", outcome="delivered") == 2
    assert sample("mqd_recipients_total", outcome="deferred") == 1
    assert sample("mqd_messages_total", event="completed") == 1
    assert sample("mqd_messages_total", event="delivered") is None
    assert sample("mqd_messages_total", event="claimed") is None
    assert sample("mqd_relay_deliveries_total", relay="sink", outcome="delivered") == 2
    assert sample("mqd_relay_deliveries_total", relay="sink", outcome="deferred") == 0
    assert sample("mqd_delivery_duration_seconds_count", relay="sink") == 1
    assert sample("mqd_delivery_duration_seconds_bucket", relay="sink", le="0.5") == 1
    assert sample("mqd_delivery_duration_seconds_bucket", relay="sink", le="0.25") == 0
    assert sample("mqd_delivery_age_seconds_bucket", le="60.0") == 1
    assert sample("mqd_delivery_age_seconds_bucket", le="15.0") == 0
    server = MetricsServer(Daemon(metrics_config(), host=host), metrics)
    await server.stop()  # never started: nothing to do
    assert server.port == 0
