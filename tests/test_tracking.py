"""The event store: a real daemon's events in SQLite, provider events matched and de-duplicated,
statuses that never go backwards, retention, ``mqd history`` / ``mqd events``, and signed
notifications POSTed to a real HTTP server. The tracker's own tests run on both stores
(``store_dsn``: SQLite, and PostgreSQL in a schema of its own)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pgfixtures import PgSchema

from mqd.clock import ManualClock
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.events import Claimed, Delivered, Queued
from mqd.message.reply import Reply
from mqd.testing import Harness, make_message, wait_until
from mqd.tracking import notify as notify_module
from mqd.tracking.answers import FeedEvent, MessageHistory
from mqd.tracking.notify import Notifier
from mqd.tracking.queries import failures, history, message, recent, recipient
from mqd.tracking.sqlite import SQLiteStore
from mqd.tracking.tracker import Tracker
from mqd.tracking.vocabulary import ProviderEvent, Status

MID = "0190000000aabbccddeeff"


def statuses(found: MessageHistory) -> list[tuple[str, str | None]]:
    return [(e.status, e.recipient) for e in found.events]


def store_of(config: Config) -> SQLiteStore:
    return SQLiteStore(config.tracking_path, readonly=True)


# -- mqd's own events, from a real daemon ---------------------------------------------------------


async def test_a_delivered_message_has_its_whole_timeline(mqd_harness: Harness) -> None:
    config = mqd_harness.configure({"mem": {"plugin": "memory"}})
    mqd_harness.drop(
        make_message(
            sender="app@example.com",
            to=["Alice@Example.net", "bob@example.net"],
            headers={"Message-ID": "<timeline-1@example.com>"},
        )
    )
    await mqd_harness.run_once()
    store = store_of(config)
    [by_address] = history(store, "alice@example.net")
    timeline = statuses(by_address)
    assert timeline[:2] == [("accepted", None), ("queued", None)]
    # The recipients are kept as written in the events; their current status is by address.
    assert sorted(timeline[2:]) == [
        ("dispatched", "Alice@Example.net"),
        ("dispatched", "bob@example.net"),
    ]
    assert by_address.sender == "app@example.com"
    assert by_address.message_id == "<timeline-1@example.com>"
    assert by_address.status == "dispatched"
    assert {r.address: r.status for r in by_address.recipients} == {
        "alice@example.net": "dispatched",
        "bob@example.net": "dispatched",
    }
    assert all(e.relay == "mem" for e in by_address.events[2:])
    # The same message by its queue id, by its Message-ID with and without brackets, and by
    # its sender.
    for key in (by_address.id, "<timeline-1@example.com>", "timeline-1@example.com"):
        [same] = history(store, key)
        assert same.id == by_address.id
        assert message(store, key) is not None
    assert [m.id for m in history(store, "APP@example.com")] == [by_address.id]
    assert history(store, "nobody@example.net") == []
    assert message(store, "<unknown@example.com>") is None
    assert [m.id for m in recipient(store, "BOB@example.net")] == [by_address.id]
    assert failures(store) == []
    store.close()


async def test_deferred_then_bounced_is_recorded_with_the_replies(mqd_harness: Harness) -> None:
    config = mqd_harness.configure({"mem": {"plugin": "memory"}})
    mqd_harness.drop(make_message(to=["ok@example.net", "later@example.net"]))
    daemon = mqd_harness.make_daemon()
    relay = daemon.relays["mem"]
    relay.replies["later@example.net"] = Reply(451, "4.3.0 try again later")  # type: ignore[attr-defined]
    await daemon.run()
    store = store_of(config)
    [found] = history(store, "later@example.net")
    assert ("deferred", "later@example.net") in statuses(found)
    deferred = next(e for e in found.events if e.status == "deferred")
    assert "try again later" in deferred.reply
    assert deferred.detail["next_attempt_at"] > time.time()
    assert found.status == "deferred", "a message shows its slowest recipient's progress"
    assert [m.id for m in recent(store, status="deferred")] == [found.id]
    store.close()

    # The next attempt is refused for good: bounced, with the reply, and listed as a failure.
    # The test retry policy waits 1 s: this run's clock is past it.
    daemon = mqd_harness.make_daemon(clock=ManualClock(time.time() + 2))
    daemon.relays["mem"].replies["later@example.net"] = Reply(  # type: ignore[attr-defined]
        550, "5.1.1 no such user"
    )
    await daemon.run()
    store = store_of(config)
    [found] = history(store, "later@example.net")
    bounced = [e for e in found.events if e.status == "bounced"]
    assert len(bounced) == 1 and "no such user" in bounced[0].reply
    assert bounced[0].detail["dsn_sent"] is True
    later = next(r for r in found.recipients if r.address == "later@example.net")
    assert later.status == "bounced" and "no such user" in later.reply
    # It finished with a failure, so it went to failed/: that is what the message shows.
    assert found.status == "failed" and found.events[-1].status == "failed"
    assert [m.id for m in failures(store)] == [found.id]
    # The bounce mqd sent to the sender is a message of its own, from the null sender.
    [dsn] = history(store, "app@example.com")[:1]
    assert dsn.id.startswith(found.id + "b") and dsn.sender == ""
    store.close()


async def test_a_rejected_file_is_recorded_with_its_reason(mqd_harness: Harness) -> None:
    config = mqd_harness.configure({"mem": {"plugin": "memory"}})
    mqd_harness.drop(make_message(sender="intruder@elsewhere.example", to=["x@example.net"]))
    await mqd_harness.run_once()
    store = store_of(config)
    [found] = history(store, "intruder@elsewhere.example")
    assert found.status == "rejected"
    rejected = found.events[-1]
    assert rejected.status == "rejected" and "intruder@elsewhere.example" in rejected.reply
    assert rejected.detail["stage"] == "policy"
    assert [m.id for m in failures(store)] == [found.id]
    store.close()


async def test_tracking_off_writes_no_database(mqd_harness: Harness) -> None:
    config = mqd_harness.configure(
        {"mem": {"plugin": "memory"}}, tables={"tracking": {"enabled": False}}
    )
    mqd_harness.drop(make_message())
    await mqd_harness.run_once()
    assert not config.tracking_path.exists()
    assert mqd_harness.queued() == []


# -- provider events ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store_dsn(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for the SQLite store; for the PostgreSQL one, the DSN of a schema of its own."""
    if request.param == "sqlite":
        yield None
        return
    schema = PgSchema()
    try:
        yield schema.dsn
    finally:
        schema.drop()


@asynccontextmanager
async def tracker_for(
    tmp_path: Path, dsn: str | None = None, **tracking: Any
) -> AsyncIterator[Tracker]:
    """A tracker on SQLite, or with ``dsn`` on the queue's PostgreSQL database."""
    from mqd.config.load import parse_config

    queue: dict[str, Any] = {"dir": str(tmp_path / "queue")}
    if dsn is not None:
        queue |= {"store": "postgresql", "dsn": dsn, "node": "node-1"}
    config = parse_config(
        {
            "queue": queue,
            "relays": {"mem": {"plugin": "memory"}},
            "spool": [{"path": str(tmp_path / "spool"), "relay": "mem"}],
            "tracking": tracking,
        },
        None,
    )
    tracker = await Tracker.open(config)
    try:
        yield tracker
    finally:
        await tracker.close()


def dispatched(tracker: Tracker, mid: str = MID, provider_id: str = "PID-1") -> None:
    now = time.time()
    tracker.observe(Claimed(message_id=mid, time=now, file="a.eml", spool="/s"))
    tracker.observe(
        Queued(
            message_id=mid,
            time=now,
            sender="app@example.com",
            recipients=("bob@example.net", "carol@example.net"),
            relay="sg",
            route=("sg",),
            message_id_header="<p1@example.com>",
        )
    )
    for rcpt in ("bob@example.net", "carol@example.net"):
        tracker.observe(
            Delivered(
                message_id=mid,
                time=now,
                recipient=rcpt,
                reply="202",
                relay="sg",
                provider_id=provider_id,
                elapsed=0.1,
                age=0.1,
            )
        )


def provider(status: Status, event_id: str, **kwargs: Any) -> ProviderEvent:
    return ProviderEvent(status, kwargs.pop("at", time.time()), event_id, **kwargs)


async def test_provider_events_match_by_our_id_then_by_theirs(
    tmp_path: Path, store_dsn: str | None
) -> None:
    async with tracker_for(tmp_path, store_dsn) as tracker:
        dispatched(tracker)
        # No flush first: ingest writes what is buffered before matching.
        new = await tracker.ingest(
            "sendgrid",
            [
                provider(Status.DELIVERED, "e1", recipient="BOB@example.net", mqd_id=MID),
                provider(
                    Status.DELIVERED, "e2", recipient="carol@example.net", provider_id="PID-1"
                ),
                provider(Status.OPENED, "e3", recipient="nobody@example.net", provider_id="PID-X"),
            ],
        )
        assert new == 2 and tracker.unmatched == 1
        found = await tracker.message(MID)
        assert found is not None
        assert {r.address: r.status for r in found.recipients} == {
            "bob@example.net": "delivered",
            "carol@example.net": "delivered",
        }
        assert found.status == "delivered"
        sources = [(e.status, e.source) for e in found.events]
        assert sources[-2:] == [("delivered", "sendgrid"), ("delivered", "sendgrid")]


async def test_a_duplicate_event_is_recorded_once(tmp_path: Path, store_dsn: str | None) -> None:
    async with tracker_for(tmp_path, store_dsn) as tracker:
        dispatched(tracker)
        event = provider(Status.OPENED, "sg-evt-1", recipient="bob@example.net", mqd_id=MID)
        assert await tracker.ingest("sendgrid", [event]) == 1
        assert await tracker.ingest("sendgrid", [event, event]) == 0
        # The same id from another provider is another event.
        assert await tracker.ingest("ses", [event]) == 1
        found = await tracker.message(MID)
        assert found is not None
        assert [e.status for e in found.events].count("opened") == 2


async def test_a_late_event_never_moves_a_status_backwards(
    tmp_path: Path, store_dsn: str | None
) -> None:
    async with tracker_for(tmp_path, store_dsn) as tracker:
        dispatched(tracker)
        now = time.time()
        await tracker.ingest(
            "sendgrid",
            [provider(Status.CLICKED, "c", recipient="bob@example.net", mqd_id=MID, at=now + 10)],
        )
        await tracker.ingest(
            "sendgrid",
            [provider(Status.DELIVERED, "d", recipient="bob@example.net", mqd_id=MID, at=now + 5)],
        )
        found = await tracker.message(MID)
        assert found is not None
        bob = next(r for r in found.recipients if r.address == "bob@example.net")
        assert bob.status == "clicked"
        # The timeline is in the order things happened, not the order they were reported.
        bob_events = [e.status for e in found.events if e.recipient == "bob@example.net"]
        assert bob_events == ["dispatched", "delivered", "clicked"]
        # A complaint outranks everything: it is what an administrator must see.
        await tracker.ingest(
            "sendgrid",
            [provider(Status.COMPLAINED, "s", recipient="carol@example.net", mqd_id=MID)],
        )
        found = await tracker.message(MID)
        assert found is not None and found.status == "complained"
        assert [m.id for m in await tracker.failures()] == [MID]


async def test_an_event_for_our_id_unknown_here_is_kept(
    tmp_path: Path, store_dsn: str | None
) -> None:
    async with tracker_for(tmp_path, store_dsn) as tracker:
        other = "0190000000ffffffffffff"
        assert (
            await tracker.ingest(
                "ses", [provider(Status.BOUNCED, "b", recipient="x@example.net", mqd_id=other)]
            )
            == 1
        )
        found = await tracker.message(other)
        assert found is not None and found.status == "bounced"


async def test_retention_prunes_old_events_and_messages(
    tmp_path: Path, store_dsn: str | None
) -> None:
    async with tracker_for(tmp_path, store_dsn, retention="1h") as tracker:
        await wait_until(lambda: tracker.prunes, "its own first pruning pass (at start-up)")
        old = time.time() - 7200
        tracker.observe(Claimed(message_id=MID, time=old, file="a.eml", spool="/s"))
        tracker.observe(
            Queued(
                message_id=MID,
                time=old,
                sender="a@example.com",
                recipients=("b@example.net",),
                relay="mem",
                route=("mem",),
                message_id_header=None,
            )
        )
        dispatched(tracker, "0190000000aaaaaaaaaaaa")
        await tracker.flush()
        gone = await tracker.prune()
        assert gone == 2
        assert await tracker.message(MID) is None
        assert await tracker.message("0190000000aaaaaaaaaaaa") is not None


# -- the commands ---------------------------------------------------------------------------------


def mqd(config_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqd", "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


async def test_mqd_history_and_events(mqd_harness: Harness, env: dict[str, str]) -> None:
    config = mqd_harness.configure({"mem": {"plugin": "memory"}})
    path = mqd_harness.config_path
    missing = mqd(path, "history", "x@example.net", env=env)
    assert missing.returncode == 78 and "no event store" in missing.stderr
    mqd_harness.drop(
        make_message(to=["reader@example.net"], headers={"Message-ID": "<cli-1@example.com>"})
    )
    await mqd_harness.run_once()

    shown = mqd(path, "history", "reader@example.net", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "message-id: <cli-1@example.com>" in shown.stdout
    assert "to: <reader@example.net>  dispatched" in shown.stdout
    assert [line.split()[2] for line in shown.stdout.splitlines() if line.startswith("  20")] == [
        "accepted",
        "queued",
        "dispatched",
    ]
    as_json = json.loads(mqd(path, "history", "<cli-1@example.com>", "--json", env=env).stdout)
    assert as_json[0]["recipients"][0]["address"] == "reader@example.net"
    nothing = mqd(path, "history", "nobody@example.net", env=env)
    assert nothing.returncode == 1 and "no message matches" in nothing.stderr

    lines = mqd(path, "events", "-n", "2", "--json", env=env).stdout.splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["queued", "dispatched"]

    # --follow prints the newest (-n 1), then what is recorded after it started.
    follow = subprocess.Popen(
        [sys.executable, "-m", "mqd", "--config", str(path), "events", "-f", "-n", "1"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert follow.stdout is not None
        readline = follow.stdout.readline
        first = await asyncio.wait_for(asyncio.to_thread(readline), 30)
        assert first.split()[3] == "dispatched" and "reader@example.net" in first  # following
        mqd_harness.drop(make_message(to=["later@example.net"]))
        await mqd_harness.run_once()
        got = [await asyncio.wait_for(asyncio.to_thread(readline), 30) for _ in range(3)]
        assert [line.split()[3] for line in got] == ["accepted", "queued", "dispatched"]
        assert "later@example.net" in got[2]
    finally:
        follow.terminate()
        follow.wait(10)

    off = mqd_harness.configure(
        {"mem": {"plugin": "memory"}}, tables={"tracking": {"enabled": False}}
    )
    assert not off.tracking.enabled
    refused = mqd(path, "history", "reader@example.net", env=env)
    assert refused.returncode == 78 and "tracking is off" in refused.stderr
    assert config.tracking_path.exists()


# -- notifications --------------------------------------------------------------------------------


class App:
    """The application's endpoint: records what it is sent; answers from ``answers`` first."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.answers.pop(0) if self.answers else 204
        if status < 300:
            self.received.append((dict(request.headers), body))
        return web.Response(status=status)

    async def __aenter__(self) -> App:
        app = web.Application()
        app.router.add_post("/mqd-events", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/mqd-events"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


def verify(secret: bytes, headers: dict[str, str], body: bytes) -> bool:
    timestamp = headers["X-Mqd-Timestamp"]
    expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Mqd-Signature"], "v1=" + expected)


async def notifier_started(tracker: Tracker) -> None:
    """Wait until a notifier has set its cursor (on its first run: at the newest event)."""

    async def started() -> bool:
        return await tracker.cursor(notify_module.CURSOR) >= 0

    await wait_until(started, "the notifier to set its cursor")


async def notifier_caught_up(tracker: Tracker) -> None:
    """Wait until a notifier's cursor is at the newest event: it has nothing left to send."""

    async def caught_up() -> bool:
        return await tracker.cursor(notify_module.CURSOR) == await tracker.last_position()

    await wait_until(caught_up, "the notifier to reach the newest event")


async def test_a_daemon_notifies_the_application_signed(
    mqd_harness: Harness, tmp_path: Path
) -> None:
    secret = tmp_path / "notify-secret"
    secret.write_text("s3cret-for-hmac\n")
    secret.chmod(0o600)
    async with App() as app:
        mqd_harness.configure(
            {"mem": {"plugin": "memory"}},
            tables={"notify": {"url": app.url, "secret_file": secret}},
        )
        # The first run starts the cursor at "now": history before [notify] is not replayed.
        await mqd_harness.run_once()
        mqd_harness.drop(
            make_message(to=["n@example.net"], headers={"Message-ID": "<n-1@example.com>"})
        )
        daemon = Daemon(mqd_harness.config, host=mqd_harness.host)  # type: ignore[arg-type]
        task = asyncio.create_task(daemon.run())
        try:
            await wait_until(lambda: len(app.received) >= 3, "three notifications")
        finally:
            daemon.request_stop()
            await task
    docs = app.documents()
    assert [d["status"] for d in docs] == ["accepted", "queued", "dispatched"]
    assert docs[2]["recipient"] == "n@example.net" and docs[2]["relay"] == "mem"
    assert all(d["message_id"] == "<n-1@example.com>" for d in docs[1:])
    assert [d["seq"] for d in docs] == sorted(d["seq"] for d in docs)
    for headers, body in app.received:
        assert verify(b"s3cret-for-hmac", headers, body)
        assert not verify(b"another secret", headers, body)
        assert abs(int(headers["X-Mqd-Timestamp"]) - time.time()) < 60


async def test_notifications_retry_then_resume_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify_module, "FIRST_DELAY", 0.05)
    from mqd.config.options import Secret
    from mqd.config.schema import NotifyConfig

    async with App() as app, tracker_for(tmp_path) as tracker:
        config = NotifyConfig(url=app.url, secret=Secret("k"), statuses=("dispatched",))
        notifier = Notifier(tracker, config)
        notifier.start()
        await notifier_started(tracker)  # its cursor starts at the newest event: none yet
        app.answers = [500, 503]  # the application is failing: retried with backoff
        dispatched(tracker)
        await tracker.flush()
        await wait_until(lambda: len(app.received) == 2, "the first two, after two retries")
        assert [d["recipient"] for d in app.documents()] == ["bob@example.net", "carol@example.net"]
        # The application records a request before its answer reaches the notifier.
        await wait_until(lambda: notifier.sent == 2, "the notifier to count the second")
        assert notifier.dropped == 0
        # A 4xx is the application refusing: dropped, not retried, and the next goes on.
        app.answers = [400]
        dispatched(tracker, "0190000000bbbbbbbbbbbb")
        await tracker.flush()
        await wait_until(lambda: len(app.received) == 3, "the refused one")
        assert notifier.dropped == 1
        # Stopped once its cursor has passed what it sent: a stop between a send and the
        # cursor's write sends that one again after the restart (at least once, by design).
        await notifier_caught_up(tracker)
        await notifier.stop()

        # Stopped: what is recorded meanwhile is sent after a restart, once.
        dispatched(tracker, "0190000000cccccccccccc")
        await tracker.flush()
        again = Notifier(tracker, config)
        again.start()
        await wait_until(lambda: len(app.received) == 5, "the two after the restart")
        await notifier_caught_up(tracker)  # nothing more to send: a sixth would be a duplicate
        await again.stop()
    ids = [d["id"] for d in app.documents()]
    assert ids == [
        MID,
        MID,
        "0190000000bbbbbbbbbbbb",
        "0190000000cccccccccccc",
        "0190000000cccccccccccc",
    ]


def test_notify_config_errors() -> None:
    from mqd.config.load import parse_config
    from mqd.errors import ConfigError

    base = {
        "relays": {"mem": {"plugin": "memory"}},
        "spool": [{"path": "/tmp/mqd-test-spool", "relay": "mem"}],
    }
    with pytest.raises(ConfigError, match=r"secret_file.*required with url"):
        parse_config({**base, "notify": {"url": "https://app.example/hook"}}, None)
    with pytest.raises(ConfigError, match="not an http"):
        parse_config({**base, "notify": {"url": "ftp://x", "secret_env": "HOME"}}, None)
    with pytest.raises(ConfigError, match="'opend' is not a status"):
        parse_config(
            {
                **base,
                "notify": {
                    "url": "https://a.example/",
                    "secret_env": "HOME",
                    "statuses": ["opend"],
                },
            },
            None,
        )
    assert os.environ.get("HOME")


async def test_an_id_among_several_joined_ones_matches(
    tmp_path: Path, store_dsn: str | None
) -> None:
    """SES sends more than 50 recipients in several calls: the relay joins their ids."""
    async with tracker_for(tmp_path, store_dsn) as tracker:
        dispatched(tracker, provider_id="ses-a,ses-b,ses-c")
        for n, pid in enumerate(("ses-a", "ses-b", "ses-c")):
            event = provider(
                Status.DELIVERED, f"d{n}", recipient="bob@example.net", provider_id=pid
            )
            assert await tracker.ingest("ses", [event]) == 1
        assert (
            await tracker.ingest("ses", [provider(Status.DELIVERED, "x", provider_id="ses")]) == 0
        )
        assert tracker.unmatched == 1


def test_the_starter_config_offers_tracking_and_http_ready_to_uncomment(tmp_path: Path) -> None:
    import tomllib

    from mqd.cli.starter import StarterOptions, render_starter
    from mqd.config.load import parse_config

    text = render_starter(StarterOptions())
    for line in ("# [tracking]", '# retention = "30d"', "# [http]", "# enabled = true"):
        assert line in text
        text = text.replace(line, line[2:])
    (tmp_path / "smtp-password").write_text("x\n")
    (tmp_path / "smtp-password").chmod(0o600)
    config = parse_config(tomllib.loads(text), tmp_path / "mqd.toml")
    assert config.http.enabled and config.tracking.retention == 30 * 86400


async def test_a_reload_says_which_tracking_tables_wait_for_a_restart(
    mqd_harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    mqd_harness.configure(
        {"mem": {"plugin": "memory"}}, tables={"http": {"enabled": True, "port": 0}}
    )
    daemon = Daemon(mqd_harness.config, host=mqd_harness.host)  # type: ignore[arg-type]
    running = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        # A new token only: applied at once, no warning.
        mqd_harness.configure(
            {"mem": {"plugin": "memory"}},
            tables={"http": {"enabled": True, "port": 0, "token": "t0ken-t0ken"}},
        )
        await daemon.reload()
        assert "changed" not in caplog.text
        assert daemon.config.http.token is not None
        mqd_harness.configure(
            {"mem": {"plugin": "memory"}},
            tables={
                "http": {"enabled": True, "port": 0, "token": "t0ken-t0ken"},
                "tracking": {"retention": "2d"},
            },
        )
        await daemon.reload()
        assert "[tracking] changed: that takes effect at the next restart" in caplog.text
        assert "[http] changed" not in caplog.text
    finally:
        daemon.request_stop()
        await asyncio.wait_for(running, 10)


async def test_notifications_survive_a_failing_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_dsn: str | None
) -> None:
    monkeypatch.setattr(notify_module, "IDLE_POLL", 0.05)
    from mqd.config.options import Secret
    from mqd.config.schema import NotifyConfig

    async with App() as app, tracker_for(tmp_path, store_dsn) as tracker:
        assert tracker.store is not None
        real = tracker.store.events_after
        failures_left = [2]

        def flaky(position: int, limit: int) -> list[FeedEvent]:
            if failures_left[0]:
                failures_left[0] -= 1
                raise OSError("disk I/O error")
            return real(position, limit)

        monkeypatch.setattr(tracker.store, "events_after", flaky)
        notifier = Notifier(tracker, NotifyConfig(url=app.url, secret=Secret("k")))
        notifier.start()
        await notifier_started(tracker)  # its cursor starts at the newest event: none yet
        dispatched(tracker)
        await tracker.flush()
        await wait_until(lambda: len(app.received) == 4, "the four notifications")
        await notifier.stop()
    assert failures_left == [0]
    assert [d["status"] for d in app.documents()][:2] == ["accepted", "queued"]
