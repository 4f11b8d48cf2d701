"""Routing, failover, the circuit breaker and quotas, through a real daemon run.

Relays are ``memory`` relays (told to fail on demand) and real SMTP servers; a plugin records
the events so each recipient's relay can be checked.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from corehelpers import drop, make_message
from smtpserver import SMTPPeer

from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.errors import TransientRelayError
from mqd.events import Bounced, Deferred, Delivered, Event
from mqd.message.reply import Reply
from mqd.plugins.hookspecs import hookimpl
from mqd.plugins.host import PluginHost
from mqd.relays.memory import MemoryRelay
from mqd.testing.harness import queued_entries

E = TypeVar("E", bound=Event)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def mqd_track_event(self, event: Event) -> None:
        self.events.append(event)

    def delivered_by(self) -> dict[str, str]:
        """recipient -> relay that delivered it."""
        return {e.recipient: e.relay for e in self.events if isinstance(e, Delivered)}

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def events_host(recorder: Recorder) -> PluginHost:
    return PluginHost(entry_points=False, extra=(recorder,))


@pytest.fixture
def config_for(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path
) -> Callable[..., Config]:
    """``make(relays=TOML, spool_relay=TOML value, routes=TOML, concurrency=N)``."""

    def make(relays: str, spool_relay: str, routes: str = "", concurrency: int = 1) -> Config:
        return load_config(
            write_config(
                f"""
[queue]
dir = "{queue_dir}"
bounce_sender = "mailer-daemon@mqd.test"
retry = {{ initial = "1m", max = "1h", lifetime = "1h" }}
concurrency = {concurrency}

[[spool]]
path = "{spool}"
relay = {spool_relay}
allowed_senders = ["*@example.com"]

{routes}

{relays}
"""
            )
        )

    return make


MEMORY_PAIR = """
[relays.primary]
plugin = "memory"
circuit_failures = 3
circuit_cooldown = "1h"

[relays.backup]
plugin = "memory"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start(config: Config, host: PluginHost) -> Daemon:
    """A --once daemon whose memory relays exist (and can be told to fail) before it runs."""
    return Daemon(config, host=host, once=True, shutdown_timeout=5)


async def test_a_dead_primary_fails_over_to_the_backup_and_its_circuit_opens(
    config_for, spool, queue_dir, events_host, recorder, caplog
):
    config = config_for(MEMORY_PAIR, '["primary", "backup"]')
    for n in range(6):
        drop(spool, to=(f"user{n}@example.net",))
    daemon = await start(config, events_host)
    MemoryRelay.instances["primary"].raise_error = TransientRelayError(
        "connection refused", reply=Reply(451, "connection refused", "4.4.1")
    )
    with caplog.at_level(logging.INFO):
        await daemon.run()

    assert set(recorder.delivered_by().values()) == {"backup"}
    assert len(MemoryRelay.instances["backup"].sent) == 6
    assert queued_entries(config) == []
    # Three failures open the circuit; the other messages skip the primary without trying it.
    failovers = [r for r in caplog.records if "failing over to backup" in r.getMessage()]
    assert len(failovers) == 3
    unhealthy = [r for r in caplog.records if "relay primary is unhealthy" in r.getMessage()]
    assert len(unhealthy) == 1 and unhealthy[0].levelno == logging.WARNING


async def test_transient_recipients_move_to_the_next_relay_in_the_same_attempt(
    config_for, spool, queue_dir, events_host, recorder
):
    config = config_for(MEMORY_PAIR, '["primary", "backup"]')
    drop(spool, to=("alice@example.net", "bob@example.net", "carol@example.net"))
    daemon = await start(config, events_host)
    primary = MemoryRelay.instances["primary"]
    primary.replies["bob@example.net"] = Reply(452, "mailbox full", "4.2.2")
    primary.replies["carol@example.net"] = Reply(550, "no such user", "5.1.1")
    await daemon.run()

    assert recorder.delivered_by() == {
        "alice@example.net": "primary",
        "bob@example.net": "backup",
        "app@example.com": "primary",  # carol's bounce, along the same route
    }
    # A permanent answer is final: carol is not offered to the backup, and she bounces.
    assert [e.recipient for e in recorder.of(Bounced)] == ["carol@example.net"]
    assert MemoryRelay.instances["backup"].sent[0].recipients == ("bob@example.net",)
    failed = json.loads(next((queue_dir / "failed").glob("*.json")).read_text())
    by_address = {r["address"]: r for r in failed["recipients"]}
    assert by_address["bob@example.net"]["status"] == "delivered"
    assert by_address["carol@example.net"]["status"] == "failed"


async def test_each_relay_used_is_recorded_in_the_message_state(
    config_for, spool, queue_dir, events_host
):
    config = config_for(MEMORY_PAIR, '["primary", "backup"]')
    drop(spool, to=("alice@example.net",))
    daemon = await start(config, events_host)
    MemoryRelay.instances["primary"].replies["alice@example.net"] = Reply(451, "try later")
    MemoryRelay.instances["backup"].raise_error = TransientRelayError("backup down")
    await daemon.run()

    [entry] = queued_entries(config)
    assert entry.attempts == 1
    assert entry.route == ["primary", "backup"]
    assert [(h["relay"], h["outcome"]) for h in entry.history] == [
        ("primary", "transient"),
        ("backup", "transient"),
    ]
    assert entry.history[0]["reply"] == "451 try later"
    assert entry.recipients[0].relay == "backup"
    assert entry.next_attempt_at >= time.time() + 50  # the 1m backoff, less jitter headroom


async def test_a_route_by_sender_overrides_the_spool_relay(
    config_for, spool, events_host, recorder
):
    config = config_for(
        MEMORY_PAIR + '\n[relays.news]\nplugin = "memory"\n',
        '"primary"',
        routes="""
[[route]]
senders = ["*@example.com"]
relay = "backup"

[[route]]
senders = ["letters@example.com"]
relay = ["news", "backup"]
""",
    )
    drop(spool, sender="letters@example.com", to=("a@example.net",))
    drop(spool, sender="app@example.com", to=("b@example.net",))
    await (await start(config, events_host)).run()
    assert recorder.delivered_by() == {"a@example.net": "news", "b@example.net": "backup"}


async def test_a_relay_that_asks_for_a_pause_is_not_used_until_then(
    config_for, spool, queue_dir, events_host
):
    config = config_for(
        MEMORY_PAIR.replace("circuit_failures = 3", "circuit_failures = 50"), '"primary"'
    )
    drop(spool, to=("a@example.net",))
    drop(spool, to=("b@example.net",))
    daemon = await start(config, events_host)
    primary = MemoryRelay.instances["primary"]
    primary.raise_error = TransientRelayError(
        "429 too many requests", reply=Reply(451, "rate limited", "4.7.0"), retry_after=600
    )
    before = time.time()
    await daemon.run()

    entries = sorted(queued_entries(config), key=lambda e: e.attempts)
    assert [e.attempts for e in entries] == [0, 1]
    held, tried = entries
    # The one that was tried waits at least the asked-for 10 minutes, not the 1m backoff ...
    assert tried.next_attempt_at >= before + 600
    # ... and the other was never offered to the paused relay: not counted, no history.
    assert held.history == [] and held.recipients[0].reply is None


async def test_all_relays_down_defers_with_one_counted_attempt(
    config_for, spool, queue_dir, events_host, recorder
):
    config = config_for(MEMORY_PAIR, '["primary", "backup"]')
    drop(spool, to=("a@example.net",))
    daemon = await start(config, events_host)
    for name in ("primary", "backup"):
        MemoryRelay.instances[name].raise_error = TransientRelayError(f"{name} down")
    await daemon.run()
    [entry] = queued_entries(config)
    assert entry.attempts == 1
    assert entry.recipients[0].status.value == "pending"
    assert [e.relay for e in recorder.of(Deferred)] == ["backup"]
    assert recorder.of(Bounced) == []


# -- quotas -----------------------------------------------------------------------------------


async def test_an_hourly_quota_holds_a_burst_without_counting_or_bouncing(
    config_for, spool, queue_dir, events_host, recorder, caplog
):
    config = config_for('[relays.limited]\nplugin = "memory"\nmax_per_hour = 5\n', '"limited"')
    for n in range(8):
        drop(spool, to=(f"user{n}@example.net",))
    with caplog.at_level(logging.INFO):
        await (await start(config, events_host)).run()

    assert len(MemoryRelay.instances["limited"].sent) == 5
    held = queued_entries(config)
    assert len(held) == 3
    assert all(e.attempts == 0 and e.history == [] for e in held)
    assert recorder.of(Bounced) == [] and recorder.of(Deferred) == []
    assert not list((queue_dir / "failed").iterdir())
    assert any("reached its per-hour quota" in r.getMessage() for r in caplog.records)
    # The count survives a restart: the next daemon does not send the held three either.
    saved = json.loads((queue_dir / "quota.json").read_text())
    assert sum(saved["relays"]["limited"]["minutes"].values()) == 5
    config = load_config(config.source)
    await (await start(config, events_host)).run()
    assert len(MemoryRelay.instances["limited"].sent) == 0
    assert len(queued_entries(config)) == 3


async def test_a_quota_overflow_takes_the_next_relay_of_the_route(
    config_for, spool, queue_dir, events_host, recorder
):
    config = config_for(
        '[relays.limited]\nplugin = "memory"\nmax_per_day = 4\n'
        '[relays.backup]\nplugin = "memory"\n',
        '["limited", "backup"]',
    )
    for n in range(7):
        drop(spool, to=(f"user{n}@example.net",))
    await (await start(config, events_host)).run()
    relays = list(recorder.delivered_by().values())
    assert relays.count("limited") == 4 and relays.count("backup") == 3
    assert queued_entries(config) == []


async def test_a_per_second_quota_paces_a_burst(config_for, spool, events_host, recorder):
    config = config_for(
        '[relays.paced]\nplugin = "memory"\nmax_per_second = 4\n',
        '"paced"',
        concurrency=20,
    )
    count = 12
    for n in range(count):
        drop(spool, to=(f"user{n}@example.net",))
    await (await start(config, events_host)).run()

    times = sorted(e.time for e in recorder.of(Delivered))
    assert len(times) == count
    # A bucket of 4 then 4 per second: the n-th send (from 0) is no earlier than (n-3)/4 s after
    # the first. Lower bounds only: a slow machine cannot break them.
    for n in range(4, count):
        assert times[n] - times[0] >= (n - 3) / 4 - 0.05, (n, times[n] - times[0])


# -- with real SMTP servers ------------------------------------------------------------------


async def test_smtp_relay_down_fails_over_to_a_second_smtp_account(
    write_config, spool, queue_dir, smtp_server: SMTPPeer, events_host, recorder
):
    dead_port = free_port()
    config = load_config(
        write_config(
            f"""
[queue]
dir = "{queue_dir}"
retry = {{ initial = "1m", max = "1h" }}

[[spool]]
path = "{spool}"
relay = ["primary", "backup"]
allowed_senders = ["*@example.com"]

[relays.primary]
plugin = "smtp"
host = "127.0.0.1"
port = {dead_port}
security = "none"
connect_timeout = "2s"

[relays.backup]
plugin = "smtp"
host = "127.0.0.1"
port = {smtp_server.port}
security = "none"
"""
        )
    )
    for n in range(3):
        drop(spool, make_message(to=(f"user{n}@example.net",)))
    await (await start(config, events_host)).run()

    assert sorted(r for m in smtp_server.wait_for(3) for r in m.rcpt_tos) == [
        "user0@example.net",
        "user1@example.net",
        "user2@example.net",
    ]
    assert set(recorder.delivered_by().values()) == {"backup"}
    assert queued_entries(config) == []
