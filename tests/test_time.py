"""Time: the schedule survives restarts, clock jumps neither storm nor stall, and a message that
outlives the queue lifetime gets exactly one DSN.

The clock is moved by writing state files whose times lie in the past or the future of the real
clock (what a jump looks like to the next start), and, for a jump while running or between runs,
by giving the daemon a ManualClock and moving it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from corehelpers import drop

from mqd.clock import ManualClock
from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.daemon.scheduler import MAX_SLEEP
from mqd.errors import ConfigError, TransientRelayError
from mqd.plugins.host import PluginHost
from mqd.queue.entry import QueueEntry
from mqd.relays.memory import MemoryRelay
from mqd.testing import wait_until

HOUR = 3600.0


@pytest.fixture
def config(write_config: Callable[[str], Path], spool: Path, queue_dir: Path) -> Config:
    return load_config(
        write_config(
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
    )


def states(queue_dir: Path) -> dict[str, QueueEntry]:
    entries = (QueueEntry.from_json(p.read_bytes()) for p in (queue_dir / "state").glob("*"))
    return {e.id: e for e in entries}


def rewrite(queue_dir: Path, entry: QueueEntry) -> None:
    (queue_dir / "state" / f"{entry.id}.json").write_bytes(entry.to_json())


async def deferred_once(config: Config, host: PluginHost, spool: Path) -> QueueEntry:
    drop(spool)
    daemon = Daemon(config, host=host, once=True)
    MemoryRelay.instances["main"].raise_error = TransientRelayError("down")
    await daemon.run()
    [entry] = states(config.queue.dir).values()
    return entry


async def test_the_schedule_survives_a_restart(config, host, spool, queue_dir):
    entry = await deferred_once(config, host, spool)
    assert entry.attempts == 1 and entry.next_attempt_at > time.time() + 500
    daemon = Daemon(config, host=host, once=True)
    await daemon.run()  # nothing is due: no attempt, the plan is kept as it was
    assert MemoryRelay.instances["main"].sent == []
    assert states(queue_dir)[entry.id].next_attempt_at == entry.next_attempt_at
    assert states(queue_dir)[entry.id].attempts == 1


async def test_a_clock_that_went_back_does_not_stall_the_queue(config, host, spool, queue_dir):
    """The message was tried 'a day from now' (the clock has since gone back a day): it keeps
    its 10-minute wait, counted from now, instead of waiting a day and ten minutes."""
    entry = await deferred_once(config, host, spool)
    wait = entry.next_attempt_at - (entry.last_attempt_at or 0)
    entry.last_attempt_at = (entry.last_attempt_at or 0) + 24 * HOUR
    entry.next_attempt_at += 24 * HOUR
    rewrite(queue_dir, entry)
    daemon = Daemon(config, host=host, once=True)
    await daemon.run()
    planned = (await daemon.store.get(entry.id)).entry.next_attempt_at - time.time()
    assert 0 < planned <= wait + 1


async def test_a_new_message_from_a_clock_ahead_is_due_now(config, host, spool, queue_dir):
    entry = await deferred_once(config, host, spool)
    entry.attempts, entry.last_attempt_at = 0, None
    entry.created_at = entry.next_attempt_at = time.time() + 24 * HOUR
    rewrite(queue_dir, entry)
    daemon = Daemon(config, host=host, once=True)
    MemoryRelay.instances["main"].raise_error = None
    await daemon.run()
    assert len(MemoryRelay.instances["main"].sent) == 1


async def test_a_clock_that_goes_back_while_running_re_plans_the_schedule(
    config, host, spool, queue_dir
):
    """The daemon is running, the message waits its 10 minutes, and the clock goes back a day:
    the scheduler notices (it asks the store at least every MAX_SLEEP) and the wait is counted
    from the new time instead of waiting a day and ten minutes."""
    clock = ManualClock(time.time())
    drop(spool)
    daemon = Daemon(config, host=host, clock=clock)
    MemoryRelay.instances["main"].raise_error = TransientRelayError("down")
    running = asyncio.create_task(daemon.run())

    async def entry() -> QueueEntry:
        listed = await daemon.store.entries()
        assert len(listed) == 1
        return listed[0].entry

    try:

        async def attempted() -> bool:
            return bool(await daemon.store.entries()) and bool((await entry()).attempts)

        await wait_until(attempted, "the first attempt", 20)
        first = await entry()
        wait = first.next_attempt_at - (first.last_attempt_at or 0)
        # Its outcome saved, the scheduler sleeps on the clock until the next is due.
        scheduler = daemon.scheduler
        await wait_until(lambda: scheduler.asleep and not scheduler.in_flight, "the scheduler")
        clock.set(clock.time() - 24 * HOUR)
        clock.advance(MAX_SLEEP)  # the scheduler's longest sleep: it looks at the time again

        async def replanned() -> bool:
            return (await entry()).next_attempt_at <= clock.time() + wait

        await wait_until(replanned, "the schedule to be re-planned", 20)
        assert (await entry()).attempts == 1, "re-planning is not an extra attempt"
        assert (await entry()).next_attempt_at > clock.time(), "the wait is kept, not dropped"
    finally:
        daemon.request_stop()
        await asyncio.wait_for(running, 10)


def count_attempts(daemon: Daemon) -> list[str]:
    """The ids the daemon's memory relay is asked to deliver (it fails them all)."""
    relay = MemoryRelay.instances["main"]
    relay.raise_error = TransientRelayError("down")
    attempts: list[str] = []
    deliver = relay.deliver

    async def counting(envelope):  # type: ignore[no-untyped-def]
        attempts.append(envelope.id)
        return await deliver(envelope)

    relay.deliver = counting  # type: ignore[method-assign]
    return attempts


async def test_a_jump_forward_gives_each_message_one_attempt_not_a_storm(
    config, host, spool, queue_dir, monkeypatch
):
    for n in range(5):
        drop(spool, to=(f"user{n}@example.net",))
    now = time.time()
    daemon = Daemon(config, host=host, once=True, clock=ManualClock(now))
    attempts = count_attempts(daemon)
    await daemon.run()
    assert len(attempts) == 5
    # Three hours later (within the 1-day lifetime): every message is due, and tried once.
    later = now + 3 * HOUR
    daemon = Daemon(config, host=host, once=True, clock=ManualClock(later))
    attempts = count_attempts(daemon)
    await asyncio.wait_for(daemon.run(), 30)
    assert sorted(attempts) == sorted(states(queue_dir)), "one attempt per message"
    assert all(e.attempts == 2 for e in states(queue_dir).values())
    assert all(e.next_attempt_at > later + 500 for e in states(queue_dir).values())


async def test_lifetime_expiry_gives_exactly_one_dsn_across_restarts(
    config, host, spool, queue_dir
):
    entry = await deferred_once(config, host, spool)
    entry.created_at -= 2 * 24 * HOUR  # accepted two days ago: past the 1-day lifetime
    entry.next_attempt_at = time.time()
    rewrite(queue_dir, entry)
    for _ in range(3):
        daemon = Daemon(config, host=host, once=True)
        MemoryRelay.instances["main"].raise_error = TransientRelayError("still down")
        await daemon.run()
    # The DSN (from <>) also meets the dead relay: it stays queued, one of it, never doubled.
    remaining = list(states(queue_dir).values())
    assert [e.sender for e in remaining] == [""]
    assert remaining[0].id == f"{entry.id}b0"
    assert (queue_dir / "failed" / f"{entry.id}.json").exists()
    assert "4.4.7" in (queue_dir / "failed" / f"{entry.id}.json").read_text()


async def test_max_attempts_gives_up_by_count_before_the_lifetime(
    write_config: Callable[[str], Path], host, spool, queue_dir
):
    """retry.max_attempts = 3: the third temporary failure, well within the 1-day lifetime,
    fails the recipient with 4.4.7 and one bounce, as an expired lifetime does."""
    config = load_config(
        write_config(
            f"""
            [queue]
            dir = "{queue_dir}"
            bounce_sender = "mailer-daemon@mqd.test"
            retry = {{ initial = "10m", max = "1h", lifetime = "1d", max_attempts = 3 }}

            [[spool]]
            path = "{spool}"
            allowed_senders = ["*@example.com"]

            [relays.main]
            plugin = "memory"
            """
        )
    )
    assert config.queue.retry.max_attempts == 3
    from mqd.admin.service import _retries

    assert _retries(config) == "10m doubling to 1h, for 1d or 3 attempts"  # mqd status says so
    entry = await deferred_once(config, host, spool)
    for attempt in (2, 3):
        [entry] = [e for e in states(queue_dir).values() if e.id == entry.id]
        assert entry.attempts == attempt - 1
        clock = ManualClock(entry.next_attempt_at + 1)  # due again, hours within the lifetime
        daemon = Daemon(config, host=host, once=True, clock=clock)
        MemoryRelay.instances["main"].raise_error = TransientRelayError("still down")
        await daemon.run()
    failed = queue_dir / "failed" / f"{entry.id}.json"
    assert failed.exists(), "given up after the third attempt"
    reason = failed.read_text()
    assert "4.4.7" in reason and "3 attempts (retry.max_attempts)" in reason
    # The bounce (from <>) is the one entry left, waiting for the dead relay.
    assert [e.sender for e in states(queue_dir).values()] == [""]


def test_max_attempts_must_be_a_positive_count(write_config: Callable[[str], Path], queue_dir):
    path = write_config(
        f"""
        [queue]
        dir = "{queue_dir}"
        bounce_sender = "mailer-daemon@mqd.test"
        retry = {{ max_attempts = 0 }}
        """
    )
    with pytest.raises(ConfigError, match=r"max_attempts.*at least 1"):
        load_config(path)
