"""Queue administration (mqd.admin.service) on a running daemon through its control socket, and on
the
files of a stopped one; and reloading the config (SIGHUP's work) without losing anything."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from corehelpers import drop

from mqd.admin.client import request
from mqd.admin.control import ControlError
from mqd.admin.service import AdminError
from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.errors import ConfigError, TransientRelayError
from mqd.message.reply import Reply
from mqd.plugins.host import PluginHost
from mqd.queue.entry import QueueEntry
from mqd.relays.memory import MemoryRelay
from mqd.testing import wait_until

CONFIG = """
[queue]
dir = "{queue}"
bounce_sender = "mailer-daemon@mqd.test"
scan_interval = "1s"
retry = {{ initial = "1h", max = "2h" }}

[[spool]]
path = "{spool}"
relay = "main"
allowed_senders = ["*@example.com"]

[relays.main]
plugin = "memory"
{extra}
"""


@pytest.fixture
def make_config(write_config, spool: Path, queue_dir: Path) -> Callable[..., Config]:
    def make(extra: str = "") -> Config:
        return load_config(write_config(CONFIG.format(queue=queue_dir, spool=spool, extra=extra)))

    return make


class Running:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    @property
    def relay(self) -> MemoryRelay:
        return MemoryRelay.instances["main"]

    def deferred(self) -> list[QueueEntry]:
        busy = self.daemon.in_flight
        return [
            e for e in self.daemon.store.schedule if e.attempts and not e.held and e.id not in busy
        ]


@pytest.fixture
async def running(make_config, host: PluginHost) -> AsyncIterator[Running]:
    daemon = Daemon(make_config(), host=host, shutdown_timeout=5)
    MemoryRelay.instances["main"].raise_error = TransientRelayError(
        "relay down", reply=Reply(451, "relay down", "4.4.1")
    )
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 10)
    yield Running(daemon)
    daemon.request_stop()
    await asyncio.wait_for(task, 10)


async def a_scheduler_pass(daemon: Daemon) -> None:
    """Wake the scheduler and wait until a pass that began after now has leased what was due
    (anything it leased is then in flight or delivered)."""
    scheduler = daemon.scheduler
    begun = scheduler.passes
    scheduler.wake()
    await wait_until(
        lambda: scheduler.passes > begun and scheduler.asleep, "a scheduler pass after now"
    )


async def one_deferred(running: Running, spool: Path, **message: Any) -> QueueEntry:
    drop(spool, **message)
    await wait_until(lambda: len(running.deferred()) == 1, "len(running.deferred()) == 1")
    return running.deferred()[0]


async def test_list_and_status_through_the_control_socket(running, spool, make_config):
    entry = await one_deferred(running, spool, to=("alice@example.net",))
    config = running.daemon.config
    [row] = await request(config, "list")
    assert row["id"] == entry.id and row["state"] == "deferred" and row["attempts"] == 1
    assert row["last_reply"] == "451 4.4.1 relay down"
    assert row["recipients"] == [
        {"address": "alice@example.net", "status": "pending", "reply": "451 4.4.1 relay down"}
    ]
    status = await request(config, "status")
    assert status["running"] is True and status["by_state"]["deferred"] == 1
    assert status["relays"]["main"]["errors"] == 1
    assert "relay down" in status["relays"]["main"]["last_error"]
    shown = await request(config, "show", {"id": entry.id[:8]})
    assert shown["entry"]["id"] == entry.id and "Subject: hello" in shown["headers"]


async def test_hold_keeps_a_message_from_being_tried_until_released(running, spool):
    entry = await one_deferred(running, spool)
    config = running.daemon.config
    await request(config, "hold", {"ids": [entry.id]})
    running.relay.raise_error = None
    await request(config, "retry", {"all": True})  # a held message stays held
    await a_scheduler_pass(running.daemon)
    assert running.relay.sent == [] and entry.held
    assert entry.id not in running.daemon.in_flight
    saved = QueueEntry.from_json(running.daemon.store.layout.state_path(entry.id).read_bytes())
    assert saved.held, "the hold must survive a restart"
    await request(config, "release", {"ids": [entry.id]})
    await wait_until(lambda: len(running.relay.sent) == 1, "len(running.relay.sent) == 1")
    await wait_until(
        lambda: entry.id not in running.daemon.store.schedule,
        "entry.id not in running.daemon.store.schedule",
    )


async def test_retry_and_flush_make_deferred_mail_due_now(running, spool):
    entry = await one_deferred(running, spool)
    assert entry.next_attempt_at > time.time() + 3000
    running.relay.raise_error = None
    await request(running.daemon.config, "flush")
    await wait_until(
        lambda: entry.id not in running.daemon.store.schedule,
        "entry.id not in running.daemon.store.schedule",
    )
    assert len(running.relay.sent) == 1


async def test_sigusr1_flush_closes_open_circuits_too(make_config, spool, host):
    daemon = Daemon(make_config('circuit_failures = 1\ncircuit_cooldown = "1h"'), host=host)
    relay = MemoryRelay.instances["main"]
    relay.raise_error = TransientRelayError("down")
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 10)
    try:
        drop(spool)
        await wait_until(
            lambda: any(e.attempts for e in daemon.store.schedule),
            "any(e.attempts for e in daemon.store.schedule)",
        )
        assert daemon.guards.circuits["main"].state.value == "open"
        relay.raise_error = None
        daemon.flush()
        await wait_until(lambda: not len(daemon.store.schedule), "not len(daemon.store.schedule)")
        assert daemon.guards.circuits["main"].state.value == "closed"
    finally:
        daemon.request_stop()
        await task


async def test_delete_removes_without_a_bounce(running, spool, queue_dir):
    entry = await one_deferred(running, spool)
    result = await request(running.daemon.config, "delete", {"ids": [entry.id]})
    assert result == {"deleted": [entry.id]}
    assert entry.id not in running.daemon.store.schedule
    assert not running.daemon.store.layout.state_path(entry.id).exists()
    assert list((queue_dir / "failed").iterdir()) == []
    assert [e for e in running.daemon.store.schedule if not e.sender] == []


async def test_bounce_fails_the_message_now_with_a_dsn(running, spool, queue_dir):
    entry = await one_deferred(running, spool, to=("bob@example.net",))
    await request(running.daemon.config, "bounce", {"ids": [entry.id]})
    reason = json.loads((queue_dir / "failed" / f"{entry.id}.json").read_text())
    assert "returned to the sender by the mail administrator" in reason["reason"]
    dsns = [e for e in running.daemon.store.schedule if e.sender == ""]
    assert [d.recipients[0].address for d in dsns] == ["app@example.com"]


async def test_an_unknown_id_and_an_ambiguous_prefix_are_refused(running, spool):
    await one_deferred(running, spool)
    config = running.daemon.config
    with pytest.raises(ControlError, match="no message 'nope'"):
        await request(config, "hold", {"ids": ["nope"]})
    drop(spool, to=("second@example.net",))
    await wait_until(lambda: len(running.deferred()) == 2, "len(running.deferred()) == 2")
    with pytest.raises(ControlError, match="start of 2 queue ids"):
        await request(config, "show", {"id": ""} | {"id": "1"})


async def test_a_message_in_flight_cannot_be_deleted(running, spool):
    relay = running.relay
    gate = asyncio.Event()
    original = relay.deliver

    async def slow(envelope):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await original(envelope)

    relay.raise_error = None
    relay.deliver = slow  # type: ignore[method-assign]
    drop(spool)
    await wait_until(lambda: bool(running.daemon.in_flight), "bool(running.daemon.in_flight)")
    [busy] = running.daemon.in_flight
    with pytest.raises(ControlError, match="being delivered right now"):
        await request(running.daemon.config, "delete", {"ids": [busy]})
    gate.set()
    await wait_until(
        lambda: not len(running.daemon.store.schedule), "not len(running.daemon.store.schedule)"
    )


# -- offline: no daemon running ------------------------------------------------------------


async def test_offline_admin_works_on_the_files_and_persists(make_config, spool, host):
    config = make_config()
    daemon = Daemon(config, host=host, once=True)
    MemoryRelay.instances["main"].raise_error = TransientRelayError("down")
    drop(spool)
    await daemon.run()
    [entry] = daemon.store.schedule

    rows = await request(config, "list")
    assert [r["id"] for r in rows] == [entry.id] and rows[0]["state"] == "deferred"
    assert (await request(config, "status"))["running"] is False
    await request(config, "hold", {"ids": [entry.id]})
    assert [r["state"] for r in await request(config, "list")] == ["held"]
    await request(config, "release", {"ids": [entry.id]})
    await request(config, "retry", {"ids": [entry.id]})
    saved = QueueEntry.from_json(daemon.store.layout.state_path(entry.id).read_bytes())
    assert not saved.held and saved.next_attempt_at <= time.time()
    with pytest.raises(AdminError, match="nothing to reload"):
        await request(config, "reload")
    # The retry was persisted: a new run delivers it at once.
    daemon = Daemon(config, host=host, once=True)
    await daemon.run()
    assert len(MemoryRelay.instances["main"].sent) == 1 and not len(daemon.store.schedule)


# -- reload ------------------------------------------------------------------------------------


async def test_reload_applies_a_new_relay_config_and_keeps_in_flight_work(
    running, spool, write_config, queue_dir
):
    daemon = running.daemon
    old_relay = running.relay
    entry = await one_deferred(running, spool)
    path = daemon.config.source
    assert path is not None
    text = path.read_text().replace('plugin = "memory"', 'plugin = "memory"\nmax_per_hour = 7')
    path.write_text(text)
    summary = await request(daemon.config, "reload")
    assert "reloaded" in summary["reloaded"]
    assert daemon.config.relays["main"].quota.max_per_hour == 7
    new_relay = MemoryRelay.instances["main"]
    assert new_relay is not old_relay and daemon.relays["main"] is new_relay
    await request(daemon.config, "retry", {"ids": [entry.id]})
    await wait_until(lambda: not len(daemon.store.schedule), "not len(daemon.store.schedule)")
    assert len(new_relay.sent) == 1


async def test_a_broken_config_is_refused_and_the_old_one_kept(running, spool, caplog):
    daemon = running.daemon
    path = daemon.config.source
    assert path is not None
    good = path.read_text()
    path.write_text(good + "\n[queue\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        await daemon.reload()
    assert "reload refused" in caplog.text
    path.write_text(good.replace(str(daemon.config.queue.dir), "/elsewhere/queue"))
    with pytest.raises(ConfigError, match="needs a restart"):
        await daemon.reload()
    # Still running on the old config: mail keeps flowing.
    running.relay.raise_error = None
    drop(spool)
    await wait_until(lambda: len(running.relay.sent) == 1, "len(running.relay.sent) == 1")


async def test_reload_picks_up_a_new_spool(running, spool, tmp_path):
    daemon = running.daemon
    running.relay.raise_error = None
    second = tmp_path / "second-spool"
    path = daemon.config.source
    assert path is not None
    path.write_text(
        path.read_text()
        + f'\n[[spool]]\npath = "{second}"\nrelay = "main"\nallowed_senders = ["*@example.com"]\n'
    )
    await daemon.reload()
    drop(second, to=("via-second@example.net",))
    await wait_until(
        lambda: len(MemoryRelay.instances["main"].sent) == 1,
        "one delivery",
    )
    assert MemoryRelay.instances["main"].sent[0].recipients == ("via-second@example.net",)


async def test_a_stopped_queue_is_listed_shown_and_held_without_building_its_relays(
    write_config, spool: Path, queue_dir: Path, host: PluginHost, tmp_path: Path
) -> None:
    """A relay whose password file is missing cannot be built: the daemon refuses to start,
    but looking at (and holding) the stopped queue needs no relay."""
    ok = load_config(write_config(CONFIG.format(queue=queue_dir, spool=spool, extra="")))
    drop(spool)
    MemoryRelay.instances.clear()
    daemon = Daemon(ok, host=host, once=True)
    relay_down = TransientRelayError("down", reply=Reply(451, "down", "4.4.1"))
    MemoryRelay.instances["main"].raise_error = relay_down
    await daemon.run()  # one message, deferred
    broken = write_config(
        f"""
        [queue]
        dir = "{queue_dir}"
        bounce_sender = "mailer-daemon@mqd.test"
        [[spool]]
        path = "{spool}"
        relay = "main"
        allowed_senders = ["*@example.com"]
        [relays.main]
        plugin = "smtp"
        host = "127.0.0.1"
        username = "u"
        password_file = "{tmp_path / "missing-password"}"
        """
    )
    config = load_config(broken)
    with pytest.raises(ConfigError, match="missing-password"):
        Daemon(config, host=host)  # the daemon needs its relays
    [row] = await request(config, "list")
    assert row["state"] == "deferred"
    shown = await request(config, "show", {"id": row["id"]})
    assert "Subject: hello" in shown["headers"]
    assert await request(config, "hold", {"ids": [row["id"]]}) == {"held": [row["id"]]}
    status = await request(config, "status")
    assert status["running"] is False and status["by_state"]["held"] == 1
    assert status["relays"]["main"]["describe"] is None
