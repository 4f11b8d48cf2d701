"""Plugins: hooks are called, a failing plugin is isolated, entry points are discovered and
listed (``mqd plugins``) with their versions, and broken ones are reported and disabled."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mqd
from mqd import (
    DeliveryResult,
    Envelope,
    Event,
    EventKind,
    PluginHost,
    RegisterRelay,
    Relay,
    Reply,
    hookimpl,
)
from mqd.config.load import load_config
from mqd.errors import ConfigError, PluginError
from mqd.relays.build import build_relays
from mqd.relays.memory import MemoryRelay
from mqd.testing import Harness, make_message


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


@pytest.fixture
def harness(mqd_harness: Harness) -> Harness:
    """One spool relayed by the memory relay ``mem``; each test passes its own plugin host."""
    mqd_harness.configure({"mem": {"plugin": "memory"}})
    return mqd_harness


async def test_events_reach_plugins_even_when_another_plugin_raises(harness: Harness) -> None:
    recorder = Recorder()
    host = PluginHost(entry_points=False, extra=(Exploder(), recorder))
    harness.drop(make_message(to=("alice@example.net",)))
    await harness.run_once(host=host)
    kinds = [event.kind for event in recorder.events]
    assert kinds == [
        EventKind.CLAIMED,
        EventKind.QUEUED,
        EventKind.ATTEMPTED,
        EventKind.DELIVERED,
        EventKind.COMPLETED,
    ]
    assert len({event.message_id for event in recorder.events}) == 1
    assert harness.relay("mem", MemoryRelay).sent[0].recipients == ("alice@example.net",)


async def test_failing_bounce_plugin_falls_back_to_the_core_builder(harness: Harness) -> None:
    host = PluginHost(entry_points=False, extra=(Exploder(),))
    daemon = harness.make_daemon(host=host)
    relay = daemon.relays["mem"]
    assert isinstance(relay, MemoryRelay)
    relay.replies["gone@example.net"] = Reply(550, "no such user", "5.1.1")
    harness.drop(make_message(to=("gone@example.net",)))
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


async def test_policy_plugin_can_refuse(harness: Harness) -> None:
    host = PluginHost(entry_points=False, extra=(Refuser(),))
    harness.drop(make_message(to=("blocked@example.net",)))
    harness.drop(make_message(to=("fine@example.net",)))
    await harness.run_once(host=host)
    [record] = harness.failed()
    assert record["reason"] == "recipient is on the block list"
    assert [e.recipients for e in harness.relay("mem", MemoryRelay).sent] == [("fine@example.net",)]


async def test_policy_plugin_that_raises_fails_closed(harness: Harness) -> None:
    host = PluginHost(entry_points=False, extra=(BrokenPolicy(),))
    harness.drop(make_message(to=("alice@example.net",)))
    await harness.run_once(host=host)
    [record] = harness.failed()
    assert "the policy plugin BrokenPolicy failed" in record["reason"]
    assert harness.relay("mem", MemoryRelay).sent == []
    assert harness.queued() == []


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


class TerseGate:
    """Declares only the hook arguments it uses, as pluggy allows."""

    @hookimpl
    def mqd_check_policy(self, message) -> str | None:
        return "no mail for nobody@" if message.recipients[0].startswith("nobody@") else None


async def test_an_implementation_may_take_a_subset_of_the_arguments(harness: Harness) -> None:
    host = PluginHost(entry_points=False, extra=(TerseGate(),))
    harness.drop(make_message(to=("nobody@example.net",)))
    harness.drop(make_message(to=("somebody@example.net",)))
    await harness.run_once(host=host)
    [record] = harness.failed()
    assert record["reason"] == "no mail for nobody@"
    assert [e.recipients for e in harness.relay("mem", MemoryRelay).sent] == [
        ("somebody@example.net",)
    ]


class BadRegistrar:
    @hookimpl
    def mqd_register_relays(self, register) -> None:
        register("echo2", EchoRelay)
        register("smtp", EchoRelay)  # taken by the core: an error against this plugin


class NotARelay:
    @hookimpl
    def mqd_register_relays(self, register) -> None:
        register("dict", dict)


def test_relay_registration_errors_are_reported_and_the_rest_still_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = PluginHost(entry_points=False, extra=(BadRegistrar(), NotARelay(), EchoPlugin()))
    classes = host.relay_classes()
    assert classes["smtp"].__name__ == "SMTPRelay"
    assert classes["echo"] is EchoRelay
    assert "dict" not in classes
    infos = {info.name: info for info in host.describe()}
    assert infos["BadRegistrar"].relays == ("echo2",)
    [problem] = infos["BadRegistrar"].problems
    assert "registered the relay name 'smtp' again" in problem
    assert "not a Relay subclass" in infos["NotARelay"].problems[0]
    assert infos["EchoPlugin"].relays == ("echo",)
    assert infos["mqd.relays.smtp.relay"].relays == ("smtp",)
    assert "BadRegistrar failed in mqd_register_relays" in caplog.text


def test_core_plugins_carry_mqd_version_and_their_hooks() -> None:
    host = PluginHost(entry_points=False, extra=(Recorder(),))
    infos = {info.name: info for info in host.describe()}
    assert infos["mqd.delivery.bounce"].version == mqd.__version__
    assert infos["mqd.delivery.bounce"].origin == "core"
    assert infos["mqd.intake.policy"].hooks == ("mqd_check_policy",)
    assert infos["Recorder"].origin == "extra"
    assert infos["Recorder"].hooks == ("mqd_track_event",)


class Misspelled:
    @hookimpl
    def mqd_track_events(self, event) -> None:
        pass


class FromTheFuture:
    @hookimpl(optionalhook=True)
    def mqd_hook_of_a_later_version(self) -> None:
        pass

    @hookimpl
    def mqd_track_event(self, event) -> None:
        pass


class Wrapper:
    @hookimpl(wrapper=True)
    def mqd_check_policy(self, message):
        return (yield)


def test_plugins_given_in_code_are_checked_at_once() -> None:
    with pytest.raises(PluginError, match=r"mqd_track_events.*did you mean mqd_track_event"):
        PluginHost(entry_points=False, extra=(Misspelled(),))
    with pytest.raises(PluginError, match="as a wrapper"):
        PluginHost(entry_points=False, extra=(Wrapper(),))
    host = PluginHost(entry_points=False, extra=(FromTheFuture(),))
    [info] = [i for i in host.describe() if i.name == "FromTheFuture"]
    assert info.hooks == ("mqd_track_event",)


# -- installed plugins (entry points) -----------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``install(dist, version, entry_points, modules)``: a distribution 'installed' into a
    directory on sys.path (a .dist-info folder, as pip leaves it), found by importlib.metadata."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    modules: list[str] = []

    def install(dist: str, version: str, entry_points: dict[str, str], **sources: str) -> None:
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[mqd]\n{lines}")
        for module, source in sources.items():
            (root / f"{module}.py").write_text(textwrap.dedent(source))
            modules.append(module)

    install.root = root  # type: ignore[attr-defined]
    yield install
    for module in modules:
        sys.modules.pop(module, None)


GOOD_PLUGIN = """
    from mqd import DeliveryResult, Relay, Reply, hookimpl

    class GoodRelay(Relay):
        network = False

        @classmethod
        def from_options(cls, name, options):
            return cls(name)

        async def deliver(self, envelope):
            return DeliveryResult.all(envelope.recipients, Reply(250, "ok", "2.0.0"))

    @hookimpl
    def mqd_register_relays(register):
        register("good", GoodRelay)
    """


@pytest.fixture
def broken_site(site):
    """Installed: one good plugin and one of each way to be broken."""
    site("mqd-good", "2.0", {"good": "mqd_good_plugin"}, mqd_good_plugin=GOOD_PLUGIN)
    site("mqd-broken", "1.0", {"broken": "mqd_no_such_module_xyz"})
    site(
        "mqd-raises",
        "1.1",
        {"raises": "mqd_raises_plugin"},
        mqd_raises_plugin="raise RuntimeError('import-time bug')\n",
    )
    site(
        "mqd-typo",
        "0.3",
        {"typo": "mqd_typo_plugin"},
        mqd_typo_plugin="""
        from mqd import hookimpl

        @hookimpl
        def mqd_check_polcy(message):
            return "never called"
        """,
    )
    site(
        "mqd-badargs",
        "0.4",
        {"badargs": "mqd_badargs_plugin"},
        mqd_badargs_plugin="""
        from mqd import hookimpl

        @hookimpl
        def mqd_track_event(evnt):
            pass
        """,
    )
    site("mqd-impostor", "9.9", {"good": "mqd_no_such_module_either"})
    return site


def test_broken_entry_points_are_reported_and_disabled(
    broken_site, caplog: pytest.LogCaptureFixture
) -> None:
    host = PluginHost()
    infos = {(info.name, info.distribution): info for info in host.describe()}
    good = infos["good", "mqd-good"]
    assert (good.error, good.version, good.origin) == (None, "2.0", "entry point")
    assert good.relays == ("good",)
    errors = {
        name: infos[name, dist].error
        for name, dist in [
            ("broken", "mqd-broken"),
            ("raises", "mqd-raises"),
            ("typo", "mqd-typo"),
            ("badargs", "mqd-badargs"),
            ("good", "mqd-impostor"),
        ]
    }
    assert "failed to load" in errors["broken"] and "ModuleNotFoundError" in errors["broken"]
    assert "import-time bug" in errors["raises"]
    assert "mqd_check_polcy" in errors["typo"] and "did you mean mqd_check_policy" in errors["typo"]
    assert "failed to register" in errors["badargs"] and "evnt" in errors["badargs"]
    assert "already uses the name 'good'" in errors["good"]
    assert infos["broken", "mqd-broken"].version == "1.0"
    # Nothing of a disabled plugin is registered; everything else works.
    assert {"smtp", "outbox", "memory", "good"} <= set(host.relay_classes())
    assert host.pm.get_plugin("typo") is None
    for name in ("broken", "raises", "typo", "badargs"):
        assert f"plugin {name} (mqd-" in caplog.text


async def test_the_daemon_logs_a_broken_plugin_and_delivers_anyway(
    broken_site, mqd_harness, caplog: pytest.LogCaptureFixture
) -> None:
    mqd_harness.configure({"g": {"plugin": "good"}})
    mqd_harness.drop(make_message(to=("alice@example.net",)))
    await mqd_harness.run_once()  # a PluginHost() with the entry points, as 'mqd run' builds
    assert mqd_harness.queued() == [] and mqd_harness.failed() == []
    disabled = [r for r in caplog.records if r.name == "mqd.plugins" and "disabled" in r.message]
    assert {r.getMessage().split()[1] for r in disabled} >= {"broken", "raises", "typo", "badargs"}
    assert all(r.levelname == "ERROR" for r in disabled)


def test_mqd_plugins_lists_versions_relays_and_disabled_plugins(
    broken_site, env: dict[str, str]
) -> None:
    env["PYTHONPATH"] = str(broken_site.root)
    mqd_command = str(Path(sys.executable).with_name("mqd"))
    proc = subprocess.run(
        [mqd_command, "plugins"], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    blocks = proc.stdout.split("\n")
    assert f"mqd.relays.smtp.relay {mqd.__version__} (built in)" in blocks
    good = blocks.index("good 2.0 (mqd-good)")
    assert blocks[good + 1 : good + 3] == ["    hooks: mqd_register_relays", "    relays: good"]
    broken = blocks.index("broken 1.0 (mqd-broken)")
    assert blocks[broken + 1].startswith("    DISABLED: failed to load")
    types = blocks[-2].removeprefix("relay types: ").split(", ")
    assert {"good", "memory", "outbox", "smtp"} <= set(types)
    assert "plugin broken (mqd-broken 1.0) is disabled" in proc.stderr  # the log line

    proc = subprocess.run(
        [mqd_command, "plugins", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    by_dist = {p["distribution"]: p for p in document["plugins"] if p["distribution"]}
    assert by_dist["mqd-good"]["relays"] == ["good"]
    assert by_dist["mqd-good"]["version"] == "2.0"
    assert "ModuleNotFoundError" in by_dist["mqd-broken"]["error"]
    assert by_dist["mqd-typo"]["hooks"] == []
    assert {"good", "memory", "outbox", "smtp"} <= set(document["relay_types"])


class _LazyRelays:
    @hookimpl
    def mqd_register_relays(self, register: RegisterRelay) -> None:
        register("lazy-memory", "mqd.relays.memory:MemoryRelay")
        register("lazy-broken", "mqd_no_such_module:Relay")


def test_a_relay_registered_by_path_is_imported_when_used() -> None:
    host = PluginHost(entry_points=False, extra=[_LazyRelays()])
    assert {"lazy-memory", "lazy-broken"} <= set(host.relay_names())
    assert host.relay_class("lazy-memory") is MemoryRelay
    with pytest.raises(PluginError, match=r"lazy-broken.*does not load.*mqd_no_such_module"):
        host.relay_class("lazy-broken")
    assert "lazy-broken" not in host.relay_classes()  # logged and left out
