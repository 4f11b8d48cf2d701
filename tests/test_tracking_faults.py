"""A damaged or unusable history database never stops delivery: a real daemon against real files.

- garbled at start: the daemon delivers, sets the file (and its -wal and -shm) aside, records in
  a new one, and says so in one ERROR;
- damaged while the daemon runs: delivery goes on and events resume in a new store (and the
  notifier follows them there);
- a directory the store cannot be created in: delivery goes on, one ERROR, events dropped and
  counted, retried with backoff on an injected clock;
- ``mqd history`` / ``mqd events`` on a damaged or unreadable store: exit 74 and one line naming
  the file, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from test_tracking import App, dispatched, notifier_started, tracker_for

from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.errors import TrackingError
from mqd.events import Claimed
from mqd.exitcodes import ExitCode
from mqd.relays.memory import MemoryRelay
from mqd.testing import Harness, make_message, wait_until, wait_until_sync
from mqd.tracking import notify as notify_module
from mqd.tracking.answers import MessageHistory
from mqd.tracking.eventstore import Fault
from mqd.tracking.keeper import FIRST_RETRY, StoreKeeper
from mqd.tracking.notify import Notifier
from mqd.tracking.queries import history
from mqd.tracking.records import Record
from mqd.tracking.sqlite import SQLiteStore
from mqd.tracking.sqlitefile import SQLiteHome, classify
from mqd.tracking.tracker import Tracker
from mqd.tracking.vocabulary import Status

MID = "0190000000aabbccddeeff"


def garble(path: Path) -> None:
    """Overwrite the file's first 100 bytes (SQLite's header) with junk, in place."""
    with path.open("r+b") as f:
        f.write(b"\xa5" * 100)


def truncate(path: Path, pages: int = 3) -> None:
    with path.open("r+b") as f:
        f.truncate(4096 * pages)


def checkpoint(path: Path) -> None:
    """Copy the WAL into the database file, as SQLite does by itself now and then, so that the
    file on disk is what the next transaction reads."""
    with sqlite3.connect(path) as db:
        wait_until_sync(
            lambda: db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0,
            "the daemon to let go of the database",
            10,
        )
    db.close()


def a_big_store(path: Path, messages: int = 300) -> None:
    """A store with enough in it that a truncated file loses pages that queries need."""
    store = SQLiteStore(path)
    store.record(
        [
            Record(f"m{i}", Status.QUEUED, 1.0 + i, sender="a@example.com", recipients=("b@y",))
            for i in range(messages)
        ]
    )
    store.close()
    checkpoint(path)


def tracking_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("mqd.tracking") and r.levelno >= logging.ERROR
    ]


CRASHING_WRITER = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA journal_mode=WAL")
db.execute(
    "INSERT INTO cursors (name, seq) VALUES ('crash', 1) "
    "ON CONFLICT (name) DO UPDATE SET seq = seq + 1"
)
db.commit()
os._exit(0)
"""


def side_files_left_by_a_crash(path: Path) -> None:
    """Write to the store from a process that dies without closing it: its -wal and -shm stay."""
    subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(path)], check=True, timeout=30)
    assert Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()


# -- what a store's failure means -----------------------------------------------------------------


def failure_of(make: Callable[[Path], object], tmp_path: Path) -> BaseException:
    try:
        make(tmp_path)
    except BaseException as exc:
        return exc
    pytest.fail("no failure")


def _garbled(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    SQLiteStore(path).close()
    garble(path)
    SQLiteStore(path)


def _truncated(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    a_big_store(path)
    truncate(path)
    SQLiteStore(path).recent_messages(limit=500)


def _locked(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    SQLiteStore(path).close()
    holder = sqlite3.connect(path)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        SQLiteStore(path, timeout=0)
    finally:
        holder.close()


def _no_directory(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    SQLiteStore(tmp_path / "a-file" / "t.sqlite3")


def _a_directory(tmp_path: Path) -> None:
    (tmp_path / "t.sqlite3").mkdir()
    SQLiteStore(tmp_path / "t.sqlite3")


def _newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE name = 'schema'")
    db.close()
    SQLiteStore(path)


def _closed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.sqlite3")
    store.close()
    store.last_position()


@pytest.mark.parametrize(
    ("make", "fault"),
    [
        (_garbled, Fault.DAMAGED),
        (_truncated, Fault.DAMAGED),
        (_locked, Fault.UNAVAILABLE),
        (_no_directory, Fault.UNAVAILABLE),
        (_a_directory, Fault.UNAVAILABLE),
        (_newer_schema, Fault.UNAVAILABLE),
        (_closed, Fault.OTHER),
    ],
    ids=lambda case: getattr(case, "__name__", str(case)).strip("_"),
)
def test_what_a_store_failure_means(
    make: Callable[[Path], object], fault: Fault, tmp_path: Path
) -> None:
    assert classify(failure_of(make, tmp_path)) is fault


def test_a_schema_from_a_newer_mqd_is_left_alone(tmp_path: Path) -> None:
    exc = failure_of(_newer_schema, tmp_path)
    assert isinstance(exc, TrackingError) and "'99'" in str(exc) and "newer mqd" in str(exc)
    keeper = StoreKeeper(SQLiteHome(tmp_path / "t.sqlite3"))
    keeper.start()
    assert keeper.paused is not None and "newer mqd" in keeper.paused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.sqlite3"]  # nothing set aside


# -- at start -------------------------------------------------------------------------------------


async def test_a_garbled_store_at_start_is_set_aside_and_mail_flows(
    mqd_harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    config = mqd_harness.configure({"mem": {"plugin": "memory"}})
    mqd_harness.drop(make_message(to=["first@example.net"]))
    await mqd_harness.run_once()
    path = config.tracking_path
    side_files_left_by_a_crash(path)
    garble(path)
    damaged = path.read_bytes()

    mqd_harness.drop(make_message(to=["second@example.net"]))
    await mqd_harness.run_once()

    [sent] = mqd_harness.relay("mem", MemoryRelay).sent
    assert sent.recipients == ("second@example.net",)
    [aside] = path.parent.glob("tracking.sqlite3.corrupt-*[0-9]Z")
    # As found, but for what SQLite itself folds in on closing it: the WAL the crash left.
    assert aside.read_bytes()[:100] == damaged[:100] and aside.stat().st_size == len(damaged)
    store = SQLiteStore(path, readonly=True)
    try:
        [found] = history(store, "second@example.net")
        assert [e.status for e in found.events] == ["accepted", "queued", "dispatched"]
        assert history(store, "first@example.net") == []  # that history went with the old file
    finally:
        store.close()
    [error] = tracking_errors(caplog)
    assert str(path) in error.getMessage() and str(aside) in error.getMessage()
    assert "history starts afresh" in error.getMessage()


def test_a_garbled_store_does_not_stop_mqd_run(mqd_harness: Harness, env: dict[str, str]) -> None:
    """The fault as reported: a real ``mqd run --once`` exited 70 and delivered nothing."""
    config = mqd_harness.configure(
        {"mem": {"plugin": "memory"}},
        tables={"tracking": {"path": mqd_harness.root / "history" / "t.sqlite3"}},
    )
    config.tracking_path.parent.mkdir(parents=True)
    config.tracking_path.write_bytes(os.urandom(8192))
    mqd_harness.drop(make_message(to=["bob@example.net"]))
    run = subprocess.run(
        [sys.executable, "-m", "mqd", "--config", str(mqd_harness.config_path), "run", "--once"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "outcome=delivered" in run.stderr
    assert run.stderr.count(" ERROR ") == 1 and "set aside as" in run.stderr
    assert mqd_harness.queued() == []
    assert len(list(config.tracking_path.parent.glob("t.sqlite3.corrupt-*"))) == 1


# -- while running --------------------------------------------------------------------------------


async def running_daemon(harness: Harness) -> tuple[Daemon, asyncio.Task[None]]:
    assert harness.config is not None
    daemon = Daemon(harness.config, host=harness.host)
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 10)
    return daemon, task


async def recorded(daemon: Daemon, address: str, status: str = "dispatched") -> MessageHistory:
    tracker = daemon.tracker
    assert tracker is not None

    async def shown() -> MessageHistory | None:
        found = await tracker.history(address)
        return found[0] if found and found[0].status == status else None

    history = await wait_until(shown, f"<{address}> to show {status}", 15)
    assert history is not None
    return history


async def test_a_store_damaged_while_running_is_replaced_and_mail_flows(
    mqd_harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    config = mqd_harness.configure({"mem": {"plugin": "memory"}})
    path = config.tracking_path
    daemon, task = await running_daemon(mqd_harness)
    try:
        mqd_harness.drop(make_message(to=["before@example.net"]))
        await recorded(daemon, "before@example.net")
        checkpoint(path)
        garble(path)

        mqd_harness.drop(make_message(to=["after@example.net"]))
        relay = daemon.relays["mem"]
        assert isinstance(relay, MemoryRelay)
        await wait_until(lambda: len(relay.sent) == 2, "the second delivery")
        found = await recorded(daemon, "after@example.net")
        assert [e.status for e in found.events] == ["accepted", "queued", "dispatched"]
        assert await daemon.tracker.history("before@example.net") == []  # type: ignore[union-attr]
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)
    [aside] = path.parent.glob("tracking.sqlite3.corrupt-*")
    assert aside.read_bytes()[:100] == b"\xa5" * 100
    [error] = tracking_errors(caplog)
    assert "file is not a database" in error.getMessage() and str(aside) in error.getMessage()


async def test_a_store_moved_away_while_running_is_created_anew(
    mqd_harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """What ``mqd history`` advises for a damaged store: move it away; the daemon follows."""
    config = mqd_harness.configure({"mem": {"plugin": "memory"}})
    path = config.tracking_path
    daemon, task = await running_daemon(mqd_harness)
    try:
        mqd_harness.drop(make_message(to=["before@example.net"]))
        await recorded(daemon, "before@example.net")
        path.rename(path.with_name("tracking.sqlite3.damaged"))
        mqd_harness.drop(make_message(to=["after@example.net"]))
        await recorded(daemon, "after@example.net")
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)
    assert path.exists()
    assert "was moved or replaced while in use" in caplog.text
    assert tracking_errors(caplog) == []


async def test_notifications_follow_into_the_new_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify_module, "IDLE_POLL", 0.05)
    from mqd.config.options import Secret
    from mqd.config.schema import NotifyConfig

    async with App() as app, tracker_for(tmp_path) as tracker:
        notifier = Notifier(tracker, NotifyConfig(url=app.url, secret=Secret("k")))
        notifier.start()
        await notifier_started(tracker)  # it starts from "now"
        dispatched(tracker)
        await tracker.flush()
        await wait_until(lambda: len(app.received) == 4, "the first notifications")

        checkpoint(tracker.config.tracking_path)
        garble(tracker.config.tracking_path)
        dispatched(tracker, "0190000000aaaaaaaaaaaa")
        await tracker.flush()
        await wait_until(lambda: len(app.received) == 8, "the notifications from the new store")
        await notifier.stop()
    later = app.documents()[4:]
    assert [d["seq"] for d in later] == [1, 2, 3, 4]
    assert {d["id"] for d in later} == {"0190000000aaaaaaaaaaaa"}


def test_the_side_files_go_with_the_file_under_one_free_name(tmp_path: Path) -> None:
    path = tmp_path / "tracking.sqlite3"
    home = SQLiteHome(path, now=lambda: 1_796_652_000.0)  # 2026-12-07 14:00:00 UTC
    home.open().close()
    side_files_left_by_a_crash(path)
    wal = Path(f"{path}-wal").read_bytes()
    first = home.set_aside()
    assert first == tmp_path / "tracking.sqlite3.corrupt-20261207T140000Z"
    assert Path(f"{first}-wal").read_bytes() == wal and Path(f"{first}-shm").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "tracking.sqlite3.corrupt-20261207T140000Z",
        "tracking.sqlite3.corrupt-20261207T140000Z-shm",
        "tracking.sqlite3.corrupt-20261207T140000Z-wal",
    ]
    assert home.set_aside() is None  # gone already: nothing to do
    home.open().close()
    assert home.set_aside() == tmp_path / "tracking.sqlite3.corrupt-20261207T140000Z-2"


def test_a_worker_never_sets_aside_the_store_another_has_just_made(tmp_path: Path) -> None:
    """Workers share the file: the first to find it damaged sets it aside; the other opens the
    new one rather than setting that aside too."""
    path = tmp_path / "tracking.sqlite3"
    one, two = StoreKeeper(SQLiteHome(path)), StoreKeeper(SQLiteHome(path))
    one.start()
    two.start()
    write = Record(MID, Status.ACCEPTED, 1.0)
    assert one.write(lambda s: s.record([write]), events=1, otherwise=[]) == [write]
    checkpoint(path)
    garble(path)
    assert one.write(lambda s: s.record([write]), events=1, otherwise=[]) == [write]
    assert two.write(lambda s: s.record([write]), events=1, otherwise=[]) == [write]
    [aside] = tmp_path.glob("tracking.sqlite3.corrupt-*[0-9]Z")
    # Worker two still had it open: SQLite left its -wal and -shm, and they went with it.
    assert Path(f"{aside}-wal").exists() and Path(f"{aside}-shm").exists()
    assert one.read(lambda s: s.last_position()) == 2  # both wrote to the new store
    one.close()
    two.close()


def test_a_write_that_fails_for_now_pauses_once_and_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A lock held past the wait (another process stuck mid-write): paused, not set aside."""
    path = tmp_path / "tracking.sqlite3"
    now = [0.0]
    keeper = StoreKeeper(SQLiteHome(path, timeout=0.05), clock=lambda: now[0])
    keeper.start()

    def record(n: int) -> list[Record]:
        event = Record(f"m{n}", Status.ACCEPTED, float(n))
        return keeper.write(lambda s: s.record([event]), events=1, otherwise=[])

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    assert record(1) == [] and record(2) == []
    assert keeper.dropped == 2 and keeper.paused is not None and "locked" in keeper.paused
    holder.execute("ROLLBACK")
    holder.close()
    now[0] += FIRST_RETRY
    assert record(3) != []
    assert keeper.read(lambda s: [m.id for m in s.recent_messages(limit=10)]) == ["m3"]
    keeper.close()
    [error] = tracking_errors(caplog)
    assert "tracking paused" in error.getMessage() and "database is locked" in error.getMessage()
    assert "2 events were dropped" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == []


# -- a store that cannot be created ---------------------------------------------------------------


def unwritable_dir(tmp_path: Path, how: str) -> Path:
    """A place the store cannot be created in, even by root: under a regular file; or, for
    other users, a directory without write permission."""
    if how == "not a directory":
        (tmp_path / "blocked").write_text("")
        return tmp_path / "blocked"
    if os.geteuid() == 0:
        pytest.skip("root writes into a directory whatever its permissions")
    (tmp_path / "blocked").mkdir(mode=0o500)
    return tmp_path / "blocked"


@pytest.mark.parametrize("how", ["not a directory", "no write permission"])
async def test_an_unwritable_directory_pauses_tracking_once_and_mail_flows(
    mqd_harness: Harness, caplog: pytest.LogCaptureFixture, tmp_path: Path, how: str
) -> None:
    blocked = unwritable_dir(tmp_path, how)
    try:
        mqd_harness.configure(
            {"mem": {"plugin": "memory"}},
            tables={"tracking": {"path": blocked / "tracking.sqlite3"}},
        )
        for n in range(3):
            mqd_harness.drop(make_message(to=[f"r{n}@example.net"]))
        daemon = await mqd_harness.run_once()
    finally:
        blocked.chmod(0o700)
    assert len(mqd_harness.relay("mem", MemoryRelay).sent) == 3
    [error] = tracking_errors(caplog)
    assert "tracking paused" in error.getMessage() and str(blocked) in error.getMessage()
    assert "delivery goes on" in error.getMessage()
    assert daemon.tracker is not None and daemon.tracker.keeper.dropped >= 9
    assert "events were not recorded" in caplog.text


async def test_a_paused_store_is_retried_with_backoff_and_keeps_the_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that cannot be created (a full disk, a directory that cannot be written): its
    events are kept meanwhile, and written in order, late, once it can be."""
    from mqd.config.load import parse_config

    caplog.set_level(logging.INFO, "mqd.tracking.tracker")
    now = [1000.0]
    blocked = tmp_path / "history"
    blocked.write_text("")
    config: Config = parse_config(
        {
            "queue": {"dir": str(tmp_path / "queue")},
            "relays": {"mem": {"plugin": "memory"}},
            "spool": [{"path": str(tmp_path / "spool"), "relay": "mem"}],
            "tracking": {"path": str(blocked / "t.sqlite3")},
        },
        None,
    )
    tracker = await Tracker.open(config, clock=lambda: now[0])
    ids = [f"019000000000000000000{n}" for n in range(1, 5)]
    try:

        async def claimed(mid: str) -> None:
            tracker.observe(Claimed(message_id=mid, time=time.time(), file="a.eml", spool="/s"))
            await tracker.flush()

        await claimed(ids[0])
        assert len(tracker.keeper.backlog) == 1 and tracker.store is None
        with pytest.raises(TrackingError, match="tracking is paused"):
            await tracker.history(ids[0])
        now[0] += FIRST_RETRY  # retried, still failing: the next try is twice as far
        await claimed(ids[1])
        assert "next try in 60s" in caplog.text
        blocked.unlink()
        now[0] += FIRST_RETRY  # not yet due
        await claimed(ids[2])
        assert tracker.store is None and len(tracker.keeper.backlog) == 3
        now[0] += 2 * FIRST_RETRY
        await claimed(ids[3])
        assert tracker.store is not None and not tracker.keeper.backlog
        feed = await tracker.events_after(0)
        assert [event.message for event in feed] == ids  # each once, in order
    finally:
        await tracker.close()
    assert len(tracking_errors(caplog)) == 1 and tracker.keeper.dropped == 0
    assert "tracking resumed" in caplog.text
    assert "3 events kept while it was paused were written late, 0 events were dropped" in (
        caplog.text
    )


async def test_the_api_says_history_is_paused(
    mqd_harness: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "blocked").write_text("")
    mqd_harness.configure(
        {"mem": {"plugin": "memory"}},
        tables={
            "http": {"enabled": True, "port": 0},
            "tracking": {"path": tmp_path / "blocked" / "t.sqlite3"},
        },
    )
    daemon, task = await running_daemon(mqd_harness)
    try:
        assert daemon.http is not None
        async with (
            aiohttp.ClientSession(base_url=daemon.http.url) as session,
            session.get("api/v1/messages") as response,
        ):
            assert response.status == 503
            assert "tracking is paused" in (await response.json())["error"]
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)
    assert "Traceback" not in caplog.text


# -- mqd history and mqd events -------------------------------------------------------------------


def mqd(config_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqd", "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
@pytest.mark.parametrize("command", [["history", "b@y"], ["events"]])
def test_the_commands_on_a_damaged_store_say_what_to_do(
    mqd_harness: Harness, env: dict[str, str], damage: str, command: list[str]
) -> None:
    config = mqd_harness.configure({"mem": {"plugin": "memory"}})
    path = config.tracking_path
    path.parent.mkdir(parents=True, exist_ok=True)
    a_big_store(path)
    if damage == "truncated":
        truncate(path)
    else:
        garble(path)
    done = mqd(mqd_harness.config_path, *command, env=env)
    assert done.returncode == ExitCode.IOERR == 74
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"mqd: error: the event store {path} is damaged (")
    assert "Move it away" in line


def test_history_on_an_unreadable_store_names_it(mqd_harness: Harness, env: dict[str, str]) -> None:
    config = mqd_harness.configure({"mem": {"plugin": "memory"}})
    config.tracking_path.mkdir(parents=True)  # a directory where the file should be
    done = mqd(mqd_harness.config_path, "history", "b@y", env=env)
    assert done.returncode == 74 and "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"mqd: error: cannot read the event store {config.tracking_path}: ")
