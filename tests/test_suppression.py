"""The suppression list (issue 24 #3): a recipient that bounced for its address (5.1.x) or was
reported bounced or complained is not sent to again, per account, for a configured time; the
sender gets no bounce for it; ``mqd suppress`` manages the list on a stopped or running queue."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner, Result

from mqd.admin.client import offline
from mqd.cli.main import cli
from mqd.clock import ManualClock
from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.events import Event, Suppressed
from mqd.message.reply import Reply
from mqd.plugins.hookspecs import hookimpl
from mqd.plugins.host import PluginHost
from mqd.producer.inject import inject
from mqd.relays.memory import MemoryRelay
from mqd.testing import make_message
from mqd.tracking.vocabulary import ProviderEvent, Status

DAY = 86400.0

CONFIG = """
[queue]
dir = "{queue}"
bounce_sender = "mailer-daemon@mqd.test"

[[spool]]
path = "{spool}"
allowed_senders = ["*@shop.example", "*@example.com"]

[relays.main]
plugin = "memory"

[[account]]
name = "shop"
senders = ["*@shop.example"]

[suppression]
bounce_for = "1d"
"""


@pytest.fixture
def config_path(write_config: Callable[[str], Path], spool: Path, queue_dir: Path) -> Path:
    return write_config(CONFIG.format(queue=queue_dir, spool=spool))


@pytest.fixture
def config(config_path: Path) -> Config:
    return load_config(config_path)


async def run_at(
    config: Config, host: PluginHost, now: float, replies: dict[str, Reply] | None = None
) -> tuple[MemoryRelay, list[Event]]:
    """One --once run at ``now``: its relay (what it sent) and the events it emitted."""
    daemon = Daemon(config, host=host, once=True, clock=ManualClock(now))
    relay = MemoryRelay.instances["main"]
    relay.replies.update(replies or {})
    events: list[Event] = []
    host.pm.register(Recorder(events), name="recorder")
    try:
        await daemon.run()
    finally:
        host.pm.unregister(name="recorder")
    return relay, events


class Recorder:
    """A plugin that keeps the events it is told."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events

    @hookimpl
    def mqd_track_event(self, event: Event) -> None:
        self.events.append(event)


def drop(spool: Path, sender: str, *to: str) -> None:
    inject(spool, make_message(sender=sender, to=to))


def sent_to(relay: MemoryRelay) -> list[tuple[str, ...]]:
    return [envelope.recipients for envelope in relay.sent]


async def invoke(*argv: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, list(argv))


NO_SUCH_USER = Reply(550, "no such user", "5.1.1")


async def test_a_bad_address_is_suppressed_for_its_account_and_later_mail_skips_it(
    config: Config, host: PluginHost, spool: Path
) -> None:
    now = time.time()
    drop(spool, "orders@shop.example", "bob@example.net")
    relay, _ = await run_at(config, host, now, {"bob@example.net": NO_SUCH_USER})
    assert sent_to(relay) == [("orders@shop.example",)], "the first bounce goes to the sender"

    drop(spool, "orders@shop.example", "bob@example.net", "alice@example.net")
    drop(spool, "app@example.com", "bob@example.net")  # another account: not suppressed there
    relay, events = await run_at(config, host, now + 60)
    assert ("alice@example.net",) in sent_to(relay)
    assert ("bob@example.net",) in sent_to(relay), "no account: its own list, bob not on it"
    assert ("orders@shop.example",) not in sent_to(relay), "no bounce storm"
    [suppressed] = [e for e in events if isinstance(e, Suppressed)]
    assert suppressed.recipient == "bob@example.net"
    assert suppressed.suppression == "bounce" and "5.1.1" in (suppressed.reply or "")

    drop(spool, "orders@shop.example", "bob@example.net")
    relay, _ = await run_at(config, host, now + 2 * DAY)  # past bounce_for = 1d
    assert sent_to(relay) == [("bob@example.net",)], "the suppression lapsed"


async def test_a_policy_refusal_does_not_suppress_the_address(
    config: Config, host: PluginHost, spool: Path
) -> None:
    now = time.time()
    drop(spool, "orders@shop.example", "carol@example.net")
    await run_at(config, host, now, {"carol@example.net": Reply(550, "spam", "5.7.1")})
    drop(spool, "orders@shop.example", "carol@example.net")
    relay, _ = await run_at(config, host, now + 60)
    assert sent_to(relay) == [("carol@example.net",)]


async def test_suppress_add_list_export_import_and_remove_on_a_stopped_queue(
    config: Config, config_path: Path, host: PluginHost, spool: Path, tmp_path: Path
) -> None:
    base = ["--config", str(config_path), "suppress"]
    drop(spool, "orders@shop.example", "x@example.net")
    await run_at(config, host, time.time())  # the queue exists
    added = await invoke(*base, "add", "dave@example.net", "--account", "shop", "--for", "7d")
    assert added.exit_code == 0, added.output
    listed = await invoke(*base, "list", "--json")
    [row] = json.loads(listed.output)
    assert row["address"] == "dave@example.net" and row["account"] == "shop"
    assert row["until"] - row["since"] == pytest.approx(7 * DAY)
    exported = tmp_path / "list.csv"
    assert (await invoke(*base, "export", "-o", str(exported))).exit_code == 0
    assert "dave@example.net,shop,manual" in exported.read_text()

    removed = await invoke(*base, "remove", "dave@example.net")
    assert removed.exit_code == 0 and "removed 1 suppression" in removed.output
    assert json.loads((await invoke(*base, "list", "--json")).output) == []
    imported = await invoke(*base, "import", str(exported))
    assert imported.exit_code == 0 and "imported 1 of 1 row" in imported.output

    drop(spool, "orders@shop.example", "dave@example.net", "erin@example.net")
    relay, _ = await run_at(config, host, time.time())
    assert sent_to(relay) == [("erin@example.net",)], "the imported suppression holds"

    bad = tmp_path / "bad.csv"
    bad.write_text("address\nnot-an-address\n")
    refused = await invoke(*base, "import", str(bad))
    assert refused.exit_code != 0 and "line 2" in refused.output


async def test_a_provider_reported_complaint_suppresses_for_good(
    config: Config, host: PluginHost, spool: Path
) -> None:
    drop(spool, "orders@shop.example", "x@example.net")
    await run_at(config, host, time.time())
    now = time.time()

    async def sender_of(queue_id: str) -> str | None:
        return "orders@shop.example" if queue_id == "q1" else None

    events = [
        ProviderEvent(Status.COMPLAINED, now, "e1", "fran@example.net", mqd_id="q1"),
        ProviderEvent(Status.OPENED, now, "e2", "gus@example.net", mqd_id="q1"),
    ]
    async with offline(config, host) as admin:
        assert len(await admin.note_reported(events, sender_of)) == 1
        [row] = await admin.op_suppress_list()
    assert row["address"] == "fran@example.net" and row["account"] == "shop"
    assert row["kind"] == "complaint" and row["until"] is None


HTTP_CONFIG = (
    CONFIG
    + """
[http]
enabled = true
port = 0
token = "read-token-for-the-suppression-tests"
operator_token = "operator-token-for-the-suppression-tests"
"""
)
OPERATOR = {"Authorization": "Bearer operator-token-for-the-suppression-tests"}
READER = {"Authorization": "Bearer read-token-for-the-suppression-tests"}


async def test_the_api_lists_to_readers_and_changes_only_with_the_operator_token(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path
) -> None:
    config = load_config(write_config(HTTP_CONFIG.format(queue=queue_dir, spool=spool)))
    daemon = Daemon(config, host=PluginHost(entry_points=False), shutdown_timeout=5)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        assert daemon.http is not None
        async with aiohttp.ClientSession(base_url=daemon.http.url) as http:
            add = {"addresses": ["hal@example.net"], "account": "shop", "reason": "asked"}
            async with http.post("/api/v1/suppressions", json=add, headers=READER) as r:
                assert r.status == 403, "the read token cannot change what mqd sends"
                assert "operator_token" in (await r.json())["error"]
            async with http.post("/api/v1/suppressions", json=add, headers=OPERATOR) as r:
                assert r.status == 200 and (await r.json())["added"] == ["hal@example.net"]
            async with http.post(
                "/api/v1/suppressions", json={"addresses": "x"}, headers=OPERATOR
            ) as r:
                assert r.status == 400
            async with http.get("/api/v1/suppressions", headers=READER) as r:
                [item] = (await r.json())["suppressions"]
            assert item["address"] == "hal@example.net" and item["reason"] == "asked"
            async with http.get("/suppressions", headers=READER) as r:
                page = await r.text()
            assert "hal@example.net" in page and "asked" in page
            async with http.get("/", headers=READER) as r:
                overview = await r.text()
            assert '<a href="/suppressions">1</a>' in overview
            assert "<h2>Accounts</h2>" in overview and "waits (0 held back)" in overview
            assert (await daemon.admin.status()).suppressed == 1
            async with http.delete("/api/v1/suppressions/hal@example.net", headers=READER) as r:
                assert r.status == 403
            async with http.delete("/api/v1/suppressions/hal@example.net", headers=OPERATOR) as r:
                assert r.status == 200 and (await r.json())["removed"] == 1
            async with http.delete("/api/v1/suppressions/hal@example.net", headers=OPERATOR) as r:
                assert r.status == 404
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)
