"""Send later (issue 24 #1): ``X-Mqd-Send-At`` and ``mqd send --at``.

The daemon runs on a ManualClock standing at a chosen time, so "two hours later" is a number,
not a wait.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mqd.cli.main import cli
from mqd.clock import ManualClock
from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.errors import TransientRelayError
from mqd.plugins.host import PluginHost
from mqd.producer.inject import inject
from mqd.queue.entry import QueueEntry
from mqd.relays.memory import MemoryRelay
from mqd.testing import make_message

HOUR = 3600.0
DAY = 24 * HOUR


def drop(spool: Path, send_at: str) -> None:
    inject(spool, make_message(headers={"X-Mqd-Send-At": send_at}))


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


@pytest.fixture
def config_path(write_config: Callable[[str], Path], spool: Path, queue_dir: Path) -> Path:
    return write_config(
        f"""
        [queue]
        dir = "{queue_dir}"
        bounce_sender = "mailer-daemon@mqd.test"
        retry = {{ initial = "10m", max = "1h", lifetime = "1d" }}

        [[spool]]
        path = "{spool}"
        allowed_senders = ["*@example.com"]

        [relays.main]
        plugin = "memory"
        """
    )


@pytest.fixture
def config(config_path: Path) -> Config:
    return load_config(config_path)


async def run_at(config: Config, host: PluginHost, now: float) -> Daemon:
    """One ``--once`` run of the daemon with its clock standing at ``now``."""
    daemon = Daemon(config, host=host, once=True, clock=ManualClock(now))
    await daemon.run()
    return daemon


def states(queue_dir: Path) -> list[QueueEntry]:
    return [QueueEntry.from_json(p.read_bytes()) for p in (queue_dir / "state").glob("*")]


async def invoke(*argv: str) -> Result:
    """The CLI, in a thread: it runs its own event loop."""
    return await asyncio.to_thread(CliRunner().invoke, cli, list(argv))


async def listed(config_path: Path) -> list[dict[str, object]]:
    result = await invoke("--config", str(config_path), "queue", "list", "--json")
    assert result.exit_code == 0, result.output
    rows: list[dict[str, object]] = json.loads(result.output)
    return rows


async def admin(config_path: Path, *args: str) -> str:
    result = await invoke("--config", str(config_path), "queue", *args)
    assert result.exit_code == 0, result.output
    return result.output


def failure_reasons(queue_dir: Path) -> list[str]:
    return [json.loads(p.read_text())["reason"] for p in (queue_dir / "failed").glob("*.json")]


async def test_a_message_for_later_waits_durably_and_goes_at_its_time_without_the_header(
    config: Config, config_path: Path, host: PluginHost, spool: Path, queue_dir: Path
) -> None:
    now = time.time()
    drop(spool, iso(now + 2 * HOUR))
    await run_at(config, host, now)
    relay = MemoryRelay.instances["main"]
    assert relay.sent == [], "not before its time"
    [entry] = states(queue_dir)  # durable as a state file, not only as a body in memory
    assert entry.send_at == pytest.approx(now + 2 * HOUR, abs=1)
    assert entry.attempts == 0
    [row] = await listed(config_path)
    assert row["state"] == "scheduled"
    assert row["next_attempt_at"] == pytest.approx(now + 2 * HOUR, abs=1)

    await run_at(config, host, now + HOUR)  # a restart an hour later: still waiting
    assert MemoryRelay.instances["main"].sent == []

    await run_at(config, host, now + 2 * HOUR + 1)
    [sent] = MemoryRelay.instances["main"].sent
    assert b"X-Mqd-Send-At" not in sent.message, "mqd's own header is not relayed"
    assert states(queue_dir) == [] and await listed(config_path) == []


async def test_a_scheduled_message_can_be_held_released_and_brought_forward(
    config: Config, config_path: Path, host: PluginHost, spool: Path
) -> None:
    now = time.time()
    drop(spool, iso(now + 5 * HOUR))
    await run_at(config, host, now)
    [row] = await listed(config_path)
    queue_id = str(row["id"])
    await admin(config_path, "hold", queue_id)
    assert (await listed(config_path))[0]["state"] == "held"
    await admin(config_path, "release", queue_id)
    [row] = await listed(config_path)
    assert row["state"] == "scheduled", "released back to its time, not sent now"
    assert row["next_attempt_at"] == pytest.approx(now + 5 * HOUR, abs=1)
    await admin(config_path, "retry", "--all")  # a flush: not for a message for later
    [row] = await listed(config_path)
    assert row["state"] == "scheduled"
    assert row["next_attempt_at"] == pytest.approx(now + 5 * HOUR, abs=1)
    await admin(config_path, "retry", queue_id)  # named: brought forward
    await run_at(config, host, time.time())
    assert len(MemoryRelay.instances["main"].sent) == 1


async def test_a_scheduled_message_can_be_deleted_before_it_goes(
    config: Config, config_path: Path, host: PluginHost, spool: Path
) -> None:
    now = time.time()
    drop(spool, iso(now + HOUR))
    await run_at(config, host, now)
    [row] = await listed(config_path)
    result = await invoke("--config", str(config_path), "queue", "delete", "--yes", str(row["id"]))
    assert result.exit_code == 0, result.output
    await run_at(config, host, now + 2 * HOUR)
    assert MemoryRelay.instances["main"].sent == []


async def test_a_time_in_the_past_sends_now(config: Config, host: PluginHost, spool: Path) -> None:
    now = time.time()
    drop(spool, "Mon, 01 Jan 2024 09:00:00 +0100")
    await run_at(config, host, now)
    assert len(MemoryRelay.instances["main"].sent) == 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("in a while", "is not a date"),
        ("2026-12-24T09:00:00", "has no time zone offset"),
        ("far", "more than 30 days ahead"),
    ],
)
async def test_a_time_mqd_cannot_keep_is_refused_with_the_reason(
    config: Config, host: PluginHost, spool: Path, queue_dir: Path, value: str, reason: str
) -> None:
    now = time.time()
    if value == "far":
        value = iso(now + 40 * DAY)
    drop(spool, value)
    await run_at(config, host, now)
    assert MemoryRelay.instances["main"].sent == []
    [why] = failure_reasons(queue_dir)
    assert reason in why and "X-Mqd-Send-At" in why


async def test_its_lifetime_counts_from_the_scheduled_time(
    config: Config, host: PluginHost, spool: Path, queue_dir: Path
) -> None:
    """Lifetime 1 day, scheduled 2 days ahead: its first attempt fails temporarily and is
    retried, not expired (counted from acceptance it would be 2 days old)."""
    now = time.time()
    drop(spool, iso(now + 2 * DAY))
    await run_at(config, host, now)
    MemoryRelay.instances["main"].raise_error = TransientRelayError("down")
    daemon = Daemon(config, host=host, once=True, clock=ManualClock(now + 2 * DAY + 60))
    MemoryRelay.instances["main"].raise_error = TransientRelayError("down")
    await daemon.run()
    [entry] = states(queue_dir)
    assert entry.attempts == 1
    assert failure_reasons(queue_dir) == [], "deferred, not expired"


def test_send_at_writes_the_header_and_refuses_a_time_beyond_the_horizon(
    config_path: Path, spool: Path
) -> None:
    runner = CliRunner()
    base = ["--config", str(config_path), "send", "--from", "app@example.com"]
    base += ["--to", "you@example.net", "--body", "later"]
    ok = runner.invoke(cli, [*base, "--at", "+2h"])
    assert ok.exit_code == 0, ok.output
    assert "to be sent at" in ok.output
    [written] = list(spool.glob("*.eml"))
    header = next(
        line for line in written.read_bytes().split(b"\r\n") if line.startswith(b"X-Mqd-Send-At:")
    )
    when = datetime.fromisoformat(header.split(b": ", 1)[1].decode()).timestamp()
    assert when == pytest.approx(time.time() + 2 * HOUR, abs=60)

    refused = runner.invoke(cli, [*base, "--at", "+40d"])
    assert refused.exit_code == 2
    assert "more than 30 days ahead" in refused.output
    bad = runner.invoke(cli, [*base, "--at", "next tuesday"])
    assert bad.exit_code == 2 and "--at" in bad.output
    assert len(list(spool.glob("*.eml"))) == 1, "nothing written for a refused time"
