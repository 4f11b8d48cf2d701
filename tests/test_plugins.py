"""Plugins: hooks are called, a failing plugin is isolated, entry points are discovered."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import drop, make_message, run_once

from mqd import DeliveryResult, Envelope, Relay, Reply, hookimpl
from mqd.config import Config, load_config
from mqd.daemon import Daemon
from mqd.errors import ConfigError
from mqd.events import Event, EventKind
from mqd.plugins import PluginHost
from mqd.relays.memory import MemoryRelay
from mqd.runtime import build_relays


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def mqd_track_event(self, event: Event) -> None:
        self.events.append(event)


class Exploder:
    @hookimpl
    def mqd_track_event(self, event: Event) -> None:
        raise RuntimeError("tracking plugin bug")

    @hookimpl
    def mqd_build_bounce(self, entry, failures, original, config) -> bytes:
        raise RuntimeError("bounce plugin bug")


def memory_config(write_config, spool: Path, queue_dir: Path) -> Config:
    return load_config(
        write_config(
            f"""
            [queue]
            dir = "{queue_dir}"
            [[spool]]
            path = "{spool}"
            allowed_senders = ["app@example.com"]
            [relays.mem]
            plugin = "memory"
            """
        )
    )


async def test_events_reach_plugins_even_when_another_plugin_raises(
    write_config, spool: Path, queue_dir: Path
) -> None:
    recorder = Recorder()
    host = PluginHost(entry_points=False, extra=(Exploder(), recorder))
    config = memory_config(write_config, spool, queue_dir)
    drop(spool, make_message(to=("alice@example.net",)))
    await run_once(config, host)
    kinds = [event.kind for event in recorder.events]
    assert kinds == [
        EventKind.CLAIMED,
        EventKind.QUEUED,
        EventKind.DELIVERED,
        EventKind.COMPLETED,
    ]
    assert len({event.message_id for event in recorder.events}) == 1
    assert MemoryRelay.instances["mem"].sent[0].recipients == ("alice@example.net",)


async def test_failing_bounce_plugin_falls_back_to_the_core_builder(
    write_config, spool: Path, queue_dir: Path
) -> None:
    host = PluginHost(entry_points=False, extra=(Exploder(),))
    daemon = Daemon(memory_config(write_config, spool, queue_dir), host=host, once=True)
    relay = daemon.relays["mem"]
    assert isinstance(relay, MemoryRelay)
    relay.replies["gone@example.net"] = Reply(550, "no such user", "5.1.1")
    drop(spool, make_message(to=("gone@example.net",)))
    await daemon.run()
    [bounce] = relay.sent
    assert bounce.sender == ""
    assert bounce.recipients == ("app@example.com",)
    assert b"multipart/report" in bounce.message


class Refuser:
    @hookimpl
    def mqd_check_policy(self, message, spool, relay_name, config) -> str | None:
        if "blocked" in message.recipients[0]:
            return "recipient is on the block list"
        return None


class BrokenPolicy:
    @hookimpl
    def mqd_check_policy(self, message, spool, relay_name, config) -> str | None:
        raise RuntimeError("policy plugin bug")


async def test_policy_plugin_can_refuse(write_config, spool: Path, queue_dir: Path) -> None:
    host = PluginHost(entry_points=False, extra=(Refuser(),))
    config = memory_config(write_config, spool, queue_dir)
    drop(spool, make_message(to=("blocked@example.net",)))
    drop(spool, make_message(to=("fine@example.net",)))
    await run_once(config, host)
    [reason_file] = (queue_dir / "failed").glob("*.json")
    assert json.loads(reason_file.read_text())["reason"] == "recipient is on the block list"
    assert [e.recipients for e in MemoryRelay.instances["mem"].sent] == [("fine@example.net",)]


async def test_policy_plugin_that_raises_fails_closed(
    write_config, spool: Path, queue_dir: Path
) -> None:
    host = PluginHost(entry_points=False, extra=(BrokenPolicy(),))
    config = memory_config(write_config, spool, queue_dir)
    drop(spool, make_message(to=("alice@example.net",)))
    await run_once(config, host)
    [reason_file] = (queue_dir / "failed").glob("*.json")
    assert "policy plugin" in json.loads(reason_file.read_text())["reason"]
    assert MemoryRelay.instances["mem"].sent == []


class EchoRelay(Relay):
    network = True

    @classmethod
    def from_options(cls, name, options):
        relay = cls(name)
        relay.greeting = options.string("greeting", "hi")
        return relay

    async def deliver(self, envelope: Envelope) -> DeliveryResult:
        return DeliveryResult.all(envelope.recipients, Reply(250, self.greeting))


class EchoPlugin:
    @hookimpl
    def mqd_register_relays(self, register) -> None:
        register("echo", EchoRelay)


def test_third_party_relay_keys_are_checked_and_network_relays_need_senders(
    write_config, spool: Path, queue_dir: Path
) -> None:
    host = PluginHost(entry_points=False, extra=(EchoPlugin(),))
    base = f"""
        [queue]
        dir = "{queue_dir}"
        [[spool]]
        path = "{spool}"
        {{senders}}
        [relays.e]
        plugin = "echo"
        {{extra}}
        """
    ok = load_config(write_config(base.format(senders='allowed_senders = ["a@b.c"]', extra="")))
    assert isinstance(build_relays(ok, host)["e"], EchoRelay)
    typo = load_config(
        write_config(base.format(senders='allowed_senders = ["a@b.c"]', extra='greting = "x"'))
    )
    with pytest.raises(ConfigError, match=r"relays\.e\.greting.*did you mean 'greeting'"):
        build_relays(typo, host)
    open_relay = load_config(write_config(base.format(senders="", extra="")))
    with pytest.raises(ConfigError, match=r"spool\[0\]\.allowed_senders"):
        build_relays(open_relay, host)
    unknown = load_config(
        write_config(
            base.format(senders='allowed_senders = ["a@b.c"]', extra="").replace(
                'plugin = "echo"', 'plugin = "nope"'
            )
        )
    )
    with pytest.raises(ConfigError, match="no relay plugin named 'nope'"):
        build_relays(unknown, host)


def test_a_broken_entry_point_is_reported_and_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "mqd_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mqd-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mqd]\nbroken = mqd_no_such_module_xyz\n")
    good = tmp_path / "mqd_good_plugin.py"
    good.write_text(
        textwrap.dedent(
            """
            from mqd import hookimpl

            @hookimpl
            def mqd_track_event(event):
                pass
            """
        )
    )
    dist2 = tmp_path / "mqd_good-2.0.dist-info"
    dist2.mkdir()
    (dist2 / "METADATA").write_text("Metadata-Version: 2.1\nName: mqd-good\nVersion: 2.0\n")
    (dist2 / "entry_points.txt").write_text("[mqd]\ngood = mqd_good_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    host = PluginHost()
    infos = {info.name: info for info in host.describe()}
    assert infos["broken"].error is not None and "failed to load" in infos["broken"].error
    assert infos["broken"].version == "1.0"
    assert infos["good"].error is None and infos["good"].version == "2.0"
    assert "smtp" in host.relay_classes()
    sys.modules.pop("mqd_good_plugin", None)
