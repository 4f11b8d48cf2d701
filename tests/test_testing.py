"""mqd.testing: the helpers and fixtures plugin authors use, exercised the way they would be."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Self

import pytest

from mqd import ConfigError, DeliveryResult, Envelope, Options, Relay, Reply, hookimpl
from mqd.message.envelope import parse_message
from mqd.plugins.hookspecs import RegisterRelay
from mqd.plugins.host import PluginHost
from mqd.queue.entry import RcptStatus
from mqd.relays.outbox import OutboxRelay
from mqd.testing import (
    Harness,
    MemoryRelay,
    make_envelope,
    make_message,
    relay_from_table,
    wait_until,
    wait_until_sync,
)


class FlakyRelay(Relay):
    """A third-party relay: 451 for the addresses listed in ``defer``, 250 for the others."""

    network = True

    def __init__(self, name: str, defer: tuple[str, ...]) -> None:
        super().__init__(name)
        self.defer = defer
        self.seen: list[Envelope] = []

    @classmethod
    def from_options(cls, name: str, options: Options) -> Self:
        return cls(name, options.string_list("defer", []))

    async def deliver(self, envelope: Envelope) -> DeliveryResult:
        self.seen.append(envelope)
        return DeliveryResult(
            {
                rcpt: Reply(451, "try later", "4.2.1")
                if rcpt in self.defer
                else Reply(250, "ok", "2.0.0")
                for rcpt in envelope.recipients
            }
        )


class FlakyPlugin:
    @hookimpl
    def mqd_register_relays(self, register: RegisterRelay) -> None:
        register("flaky", FlakyRelay)


@pytest.fixture
def flaky_host() -> PluginHost:
    return PluginHost(entry_points=False, extra=(FlakyPlugin(),))


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    """Core plugins only, so that installed third-party plugins cannot change the outcome."""
    return Harness(tmp_path / "h", host=PluginHost(entry_points=False))


# -- messages and envelopes -----------------------------------------------------------------------


def test_make_message_is_a_message_mqd_reads() -> None:
    message = make_message(sender="a@example.com", to=("b@example.net", "c@example.net"))
    parsed = parse_message(message)
    assert parsed.sender == "a@example.com"
    assert parsed.recipients == ("b@example.net", "c@example.net")
    assert b"\r\nSubject: test\r\n" in message
    assert message.endswith(b"hello\r\n")


def test_make_message_headers_are_added_or_replace_the_default() -> None:
    message = make_message(headers={"Message-ID": "<fixed@example.com>", "X-Campaign": "spring"})
    assert message.count(b"Message-ID:") == 1
    assert b"Message-ID: <fixed@example.com>\r\n" in message
    assert b"X-Campaign: spring\r\n" in message
    assert parse_message(message).recipients == ("rcpt@example.net",)


def test_make_envelope_defaults_and_a_given_message_is_kept_byte_for_byte() -> None:
    envelope = make_envelope(recipients=("x@example.net",), id="abc")
    assert (envelope.sender, envelope.recipients, envelope.id) == (
        "app@example.com",
        ("x@example.net",),
        "abc",
    )
    assert parse_message(envelope.message).recipients == ("x@example.net",)
    raw = b"From: a@example.com\r\nTo: b@example.net\r\n\r\nbody\r\n"
    assert make_envelope(raw).message == raw


# -- relay_from_table ---------------------------------------------------------------------------


def test_relay_from_table_builds_a_third_party_relay(flaky_host: PluginHost) -> None:
    relay = relay_from_table("flaky", {"defer": ["x@example.net"]}, name="f", host=flaky_host)
    assert isinstance(relay, FlakyRelay)
    assert (relay.name, relay.defer) == ("f", ("x@example.net",))


def test_relay_from_table_rejects_unknown_keys_as_the_daemon_does(flaky_host: PluginHost) -> None:
    with pytest.raises(ConfigError, match=r"relays\.test\.defr.*did you mean 'defer'") as info:
        relay_from_table("flaky", {"defr": ["x@example.net"]}, host=flaky_host)
    assert info.value.key == "relays.test.defr"


def test_relay_from_table_reports_bad_values_and_missing_plugins(flaky_host: PluginHost) -> None:
    with pytest.raises(ConfigError, match=r"relays\.test\.defer.*list of strings"):
        relay_from_table("flaky", {"defer": "x@example.net"}, host=flaky_host)
    with pytest.raises(ConfigError, match="no relay plugin named 'nope'"):
        relay_from_table("nope", {}, host=flaky_host)
    with pytest.raises(ValueError, match="first argument"):
        relay_from_table("flaky", {"plugin": "flaky"}, host=flaky_host)


async def test_relay_from_table_accepts_paths_and_the_relay_delivers(tmp_path: Path) -> None:
    relay = relay_from_table("outbox", {"path": tmp_path / "out"})
    assert isinstance(relay, OutboxRelay)
    result = await relay.deliver(make_envelope(id="q1"))
    await relay.aclose()
    assert result.replies["rcpt@example.net"].code == 250
    assert (tmp_path / "out" / "q1.eml").read_bytes().startswith(b"X-Sender: <app@example.com>")


# -- Harness ------------------------------------------------------------------------------------


def test_configure_writes_the_defaults_and_merges_queue_settings(harness: Harness) -> None:
    config = harness.configure(
        {"mem": {"plugin": "memory"}, "other": {"plugin": "memory"}},
        queue={"retry": {"lifetime": "1h"}, "concurrency": 3},
    )
    written = tomllib.loads(harness.config_path.read_text(encoding="utf-8"))
    assert written["queue"]["retry"] == {"initial": "1s", "max": "2s", "lifetime": "1h"}
    assert config.queue.dir == harness.queue_dir
    assert (config.queue.retry.initial, config.queue.retry.lifetime) == (1.0, 3600.0)
    assert config.queue.concurrency == 3
    [spool] = config.spools
    assert spool.path == harness.spool_dir
    assert spool.relay == "mem"
    assert spool.allowed_senders == ("*@example.com",)
    assert harness.config_path.stat().st_mode & 0o077 == 0


def test_configure_writes_routes_as_route_tables(harness: Harness) -> None:
    config = harness.configure(
        {"a": {"plugin": "memory"}, "b": {"plugin": "memory"}},
        routes=[{"senders": ["*@example.com"], "relay": "b"}],
    )
    written = tomllib.loads(harness.config_path.read_text(encoding="utf-8"))
    assert written["route"] == [{"senders": ["*@example.com"], "relay": "b"}]
    assert [route.relays for route in config.routes] == [("b",)]


def test_configure_raises_the_config_error_mqd_would(harness: Harness) -> None:
    with pytest.raises(ConfigError, match=r"queue\.concurency"):
        harness.configure({"mem": {"plugin": "memory"}}, queue={"concurency": 3})


async def test_round_trip_delivers_and_leaves_nothing_behind(harness: Harness) -> None:
    harness.configure({"mem": {"plugin": "memory"}})
    harness.drop(make_message(to=("a@example.net",)))
    harness.drop(make_message(to=("b@example.net",)))
    daemon = await harness.run_once()
    assert daemon is harness.last_daemon
    relay = harness.relay("mem", MemoryRelay)
    assert sorted(e.recipients for e in relay.sent) == [("a@example.net",), ("b@example.net",)]
    assert harness.queued() == []
    assert harness.failed() == []
    assert list(harness.spool_dir.glob("*.eml")) == []


async def test_a_transient_reply_stays_queued(harness: Harness, flaky_host: PluginHost) -> None:
    harness.configure({"f": {"plugin": "flaky", "defer": ["later@example.net"]}})
    harness.drop(make_message(to=("now@example.net", "later@example.net")))
    await harness.run_once(host=flaky_host)
    [entry] = harness.queued()
    assert entry.attempts == 1
    states = {r.address: r.status for r in entry.recipients}
    assert states == {
        "now@example.net": RcptStatus.DELIVERED,
        "later@example.net": RcptStatus.PENDING,
    }
    assert harness.failed() == []
    assert [e.recipients for e in harness.relay("f", FlakyRelay).seen] == [
        ("now@example.net", "later@example.net")
    ]


async def test_a_permanent_reply_fails_and_bounces(harness: Harness) -> None:
    harness.configure({"mem": {"plugin": "memory"}})
    harness.drop(make_message(sender="app@example.com", to=("gone@example.net",)))
    daemon = harness.make_daemon()
    relay = daemon.relays["mem"]
    assert isinstance(relay, MemoryRelay)
    relay.replies["gone@example.net"] = Reply(550, "no such user", "5.1.1")
    await daemon.run()
    [record] = harness.failed()
    assert "gone@example.net" in record["reason"]
    assert "550" in record["reason"]
    assert (harness.queue_dir / "failed" / f"{record['id']}.eml").exists()
    [bounce] = relay.sent
    assert (bounce.sender, bounce.recipients) == ("", ("app@example.com",))
    assert harness.queued() == []


async def test_a_refused_sender_is_in_failed(harness: Harness) -> None:
    harness.configure({"mem": {"plugin": "memory"}})
    harness.drop(make_message(sender="intruder@elsewhere.test"))
    await harness.run_once()
    [record] = harness.failed()
    assert "intruder@elsewhere.test is not allowed" in record["reason"]
    assert harness.relay("mem", MemoryRelay).sent == []


async def test_drop_by_name_and_into_another_spool(harness: Harness, tmp_path: Path) -> None:
    second = tmp_path / "second-spool"
    harness.configure(
        {"a": {"plugin": "memory"}, "b": {"plugin": "memory"}},
        spools=[
            {"path": harness.spool_dir, "relay": "a", "allowed_senders": ["*@example.com"]},
            {"path": second, "relay": "b", "allowed_senders": ["*@example.com"]},
        ],
    )
    named = harness.drop(make_message(), spool=1, name="invoice.eml")
    ignored = harness.drop(make_message(), name="half-written.tmp")
    assert named == second / "invoice.eml"
    await harness.run_once()
    assert [e.recipients for e in harness.relay("b", MemoryRelay).sent] == [("rcpt@example.net",)]
    assert harness.relay("a", MemoryRelay).sent == []
    assert ignored.exists()  # not a .eml name: the daemon leaves it alone
    with pytest.raises(IndexError, match="spool 2 is not configured"):
        harness.drop(make_message(), spool=2)
    with pytest.raises(ValueError, match="not a file name"):
        harness.drop(make_message(), name="../escape.eml")


async def test_harness_misuse_is_explained(harness: Harness) -> None:
    with pytest.raises(RuntimeError, match="configure"):
        await harness.run_once()
    with pytest.raises(RuntimeError, match="run_once"):
        harness.relay("mem")
    harness.configure({"mem": {"plugin": "memory"}})
    await harness.run_once()
    with pytest.raises(TypeError, match="MemoryRelay, not a OutboxRelay"):
        harness.relay("mem", OutboxRelay)


# -- the pytest plugin --------------------------------------------------------------------------


async def test_the_mqd_harness_fixture_runs_a_daemon(mqd_harness: Harness, tmp_path: Path) -> None:
    assert isinstance(mqd_harness, Harness)
    assert mqd_harness.root == tmp_path / "mqd"
    mqd_harness.configure({"mem": {"plugin": "memory"}})
    mqd_harness.drop(make_message())
    await mqd_harness.run_once()
    assert len(mqd_harness.relay("mem", MemoryRelay).sent) == 1


def test_the_mqd_plugin_host_fixture_loads_the_plugins(mqd_plugin_host: PluginHost) -> None:
    assert isinstance(mqd_plugin_host, PluginHost)
    assert {"smtp", "outbox", "memory"} <= set(mqd_plugin_host.relay_classes())


def test_the_pytest_plugin_is_registered_and_light() -> None:
    code = (
        "import importlib.metadata, json, sys\n"
        "[ep] = [e for e in importlib.metadata.entry_points(group='pytest11') if e.name == 'mqd']\n"
        "ep.load()\n"
        "print(json.dumps([ep.value, sorted(sys.modules)]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    value, modules = json.loads(proc.stdout)
    assert value == "mqd.testing.pytest_plugin"
    heavy = {
        "mqd.daemon.root",
        "mqd.config.load",
        "mqd.plugins.host",
        "aiosmtpd",
        "aiosmtplib",
        "tomli_w",
    }
    assert heavy.isdisjoint(modules)


# -- waiting on a condition -----------------------------------------------------------------------


async def test_wait_until_returns_the_first_true_value_of_a_function_or_a_coroutine() -> None:
    looks: list[int] = []

    def third_look() -> str | None:
        looks.append(1)
        return "found" if len(looks) >= 3 else None

    assert await wait_until(third_look, "the third look") == "found"
    assert len(looks) == 3

    async def ready() -> int:
        return 7

    assert await wait_until(ready, "a coroutine's answer") == 7
    assert wait_until_sync(lambda: [1], "a list") == [1]


async def test_wait_until_names_what_it_waited_for_when_it_gives_up() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0\.01s waiting for the moon"):
        await wait_until(lambda: False, "the moon", timeout=0.01)
    with pytest.raises(AssertionError, match="waiting for the sun"):
        wait_until_sync(lambda: 0, "the sun", timeout=0.01)
