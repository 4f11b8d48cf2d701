"""queue.workers: several daemon processes under one ``mqd run``, administered as one queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from corehelpers import DaemonProcess, make_message
from smtpserver import SMTPPeer
from test_processes import received_ids, wait_until_empty

from mqd.admin.fanout import merge_status
from mqd.config.load import load_config
from mqd.config.schema import QuotaConfig
from mqd.errors import ConfigError
from mqd.producer.inject import inject_many
from mqd.testing import wait_until_sync

CONFIG = """
[queue]
dir = "{queue}"
bounce_sender = "mailer-daemon@mqd.test"
scan_interval = "1s"
workers = {workers}
{queue_extra}
[[spool]]
path = "{spool}"
allowed_senders = ["app@example.com"]

[relays.sink]
plugin = "smtp"
host = "127.0.0.1"
port = {port}
security = "none"
{relay_extra}
"""


def write(
    tmp_path: Path,
    spool: Path,
    port: int = 1,
    workers: int = 2,
    queue_extra: str = "",
    relay_extra: str = "",
) -> Path:
    path = tmp_path / "mqd.toml"
    path.write_text(
        CONFIG.format(
            queue=tmp_path / "queue",
            spool=spool,
            port=port,
            workers=workers,
            queue_extra=queue_extra,
            relay_extra=relay_extra,
        ),
        encoding="utf-8",
    )
    return path


def mqd(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def mqd_json(config: Path, *args: str) -> Any:
    done = mqd(config, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- the config -----------------------------------------------------------------------------------


def test_workers_default_to_one(tmp_path: Path, spool: Path) -> None:
    path = tmp_path / "one.toml"
    path.write_text(
        write(tmp_path, spool).read_text().replace("workers = 2\n", ""), encoding="utf-8"
    )
    config = load_config(path)
    assert config.queue.workers == 1
    assert config.queue.worker_dirs == [tmp_path / "queue"]


def test_auto_is_one_worker_per_available_core(tmp_path: Path, spool: Path) -> None:
    path = write(tmp_path, spool)
    path.write_text(path.read_text().replace("workers = 2", 'workers = "auto"'))
    config = load_config(path)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert config.queue.workers == min(cores or 1, 64)


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "at least 1"), ("65", "at most 64"), ('"many"', 'an integer or "auto"')],
)
def test_workers_out_of_range_is_refused(
    tmp_path: Path, spool: Path, value: str, message: str
) -> None:
    path = write(tmp_path, spool)
    path.write_text(path.read_text().replace("workers = 2", f"workers = {value}"))
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert "queue.workers" in str(caught.value) or "workers" in str(caught.value)


def test_a_quota_smaller_than_the_workers_is_refused(tmp_path: Path, spool: Path) -> None:
    path = write(tmp_path, spool, workers=3, relay_extra="max_per_hour = 2")
    with pytest.raises(ConfigError, match=r"max_per_hour.*queue.workers = 3") as caught:
        load_config(path)
    assert "raise it or lower queue.workers" in str(caught.value)


def test_a_rate_below_the_workers_is_divided_as_it_is(tmp_path: Path, spool: Path) -> None:
    config = load_config(write(tmp_path, spool, workers=2, relay_extra="max_per_second = 0.5"))
    assert config.relays["sink"].quota.divided(2).max_per_second == 0.25


def test_each_worker_has_its_own_queue_and_shares_the_rest(tmp_path: Path, spool: Path) -> None:
    path = write(tmp_path, spool, workers=3)
    extra = "\n[http]\nenabled = true\n[metrics]\nenabled = true\nport = 9400\n"
    path.write_text(path.read_text() + extra)
    config = load_config(path)
    queue = tmp_path / "queue"
    assert config.queue.worker_dirs == [queue, queue / "workers" / "2", queue / "workers" / "3"]
    first, third = config.for_worker(1), config.for_worker(3)
    assert first.queue.own_dir == queue and third.queue.own_dir == queue / "workers" / "3"
    assert first.http.enabled and first.metrics.enabled and first.metrics.port == 9400
    assert third.http == first.http and third.notify.url is None  # [http]: each, one address
    assert third.metrics.enabled and third.metrics.port == 9402  # each worker its own endpoint
    assert third.tracking_path == first.tracking_path == queue / "tracking.sqlite3"
    assert third.failed_dir == first.failed_dir == queue / "failed"
    assert third.spools == first.spools


def test_quotas_are_divided_between_the_workers() -> None:
    quota = QuotaConfig(max_per_second=3.0, max_per_hour=100, max_per_day=7)
    share = quota.divided(3)
    assert share == QuotaConfig(max_per_second=1.0, max_per_hour=33, max_per_day=2)
    assert quota.divided(1) is quota


def status(worker: int, messages: int, **changes: Any) -> dict[str, Any]:
    relay = {
        "plugin": "smtp",
        "describe": "smtp 127.0.0.1:1 none",
        "health": "healthy",
        "circuit": "closed",
        "recent_attempts": 2,
        "recent_failures": 0,
        "last_success_at": 1000.0 + worker,
        "last_failure_at": None,
        "failures_in_a_row": 0,
        "errors": 0,
        "last_error": None,
        "queued": messages,
        "quota": {
            "max_per_second": None,
            "max_per_hour": 100,
            "sent_last_hour": 10 * worker,
            "max_per_day": None,
            "sent_last_day": None,
            "holds": worker,
        },
    }
    relay.update(changes)
    return {
        "running": True,
        "pid": 100 + worker,
        "version": "x",
        "uptime": 1.0,
        "config": "mqd.toml",
        "queue_dir": f"q/{worker}",
        "messages": messages,
        "by_state": {"active": 0, "waiting": messages, "deferred": 0, "held": 0},
        "not_read": 1,
        "bytes": 1000 * messages,
        "oldest_age": 10.0 * worker if messages else None,
        "failed": 4,
        "spools": ["s"],
        "relays": {"sink": relay},
    }


def test_merged_status_sums_the_queues_and_keeps_the_worst_health() -> None:
    merged = merge_status(
        {
            1: status(1, 3),
            2: status(
                2,
                5,
                health="failing",
                circuit="open",
                failures_in_a_row=6,
                errors=6,
                last_error="421 busy",
                recent_failures=2,
            ),
            3: status(3, 0),
        }
    )
    assert merged["messages"] == 8 and merged["by_state"]["waiting"] == 8
    assert merged["bytes"] == 8000 and merged["not_read"] == 3
    assert merged["oldest_age"] == 20.0  # worker 2's; worker 3 has none
    assert merged["failed"] == 4  # one folder for all, counted once
    relay = merged["relays"]["sink"]
    assert relay["health"] == "failing" and relay["circuit"] == "open"
    assert relay["last_error"] == "421 busy"
    assert relay["recent_attempts"] == 6 and relay["recent_failures"] == 2
    assert relay["last_success_at"] == 1003.0 and relay["last_failure_at"] is None
    assert relay["queued"] == 8 and relay["errors"] == 6 and relay["failures_in_a_row"] == 6
    assert relay["quota"]["max_per_hour"] == 100  # as configured: each keeps to its share
    assert relay["quota"]["sent_last_hour"] == 60 and relay["quota"]["holds"] == 6
    assert [(w["worker"], w["pid"], w["messages"]) for w in merged["workers"]] == [
        (1, 101, 3),
        (2, 102, 5),
        (3, 103, 0),
    ]


def test_a_worker_that_does_not_answer_yet_is_listed_and_counted_in_nothing() -> None:
    from mqd.admin.render import render_status

    merged = merge_status({1: status(1, 3), 2: None})
    assert merged["messages"] == 3
    assert merged["workers"][1] == {
        "worker": 2,
        "running": False,
        "pid": None,
        "queue_dir": None,
        "messages": None,
    }
    assert "3 queued; 2 (starting, not answering yet)" in "\n".join(render_status(merged))


# -- real processes -------------------------------------------------------------------------------


def start_workers(daemons: list[DaemonProcess], config: Path, workers: int) -> DaemonProcess:
    """``mqd run`` (worker 1) in the background, once all ``workers`` answer on their sockets."""
    run = DaemonProcess(config, config.parent / "mqd.log").start()
    daemons.append(run)
    wait_until_sync(sockets_up(config, workers), f"{workers} control sockets")
    return run


def first_stop_taken(log: Path) -> bool:
    """Worker 1 took a stop request: it passed it on to worker 2, who says so."""
    return "[worker 2] mqd.daemon: stopping: worker 1 stops" in log.read_text()


def sockets_up(config: Path, workers: int) -> Callable[[], bool]:
    queue = load_config(config).queue
    return lambda: all((d / "control.sock").exists() for d in queue.worker_dirs[:workers])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, its parent not told yet) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


pytestmark_slow = pytest.mark.slow


@pytestmark_slow
@pytest.mark.skipif(sys.platform == "win32", reason="signals and /proc")
def test_three_workers_deliver_each_message_once(
    tmp_path: Path, spool: Path, smtp_server: SMTPPeer, daemons: list[DaemonProcess]
) -> None:
    config = write(tmp_path, spool, smtp_server.port, workers=3)
    run = start_workers(daemons, config, 3)
    count = 300
    inject_many(
        spool,
        [make_message(extra_headers=(f"X-Test-Id: w-{i}",)) for i in range(count)],
    )
    smtp_server.wait_for(count, timeout=120)
    wait_until_empty(load_config(config).queue.worker_dirs, spool)
    assert run.stop() == 0
    ids = received_ids(smtp_server)
    assert len(ids) == count and max(ids.values()) == 1
    log = run.log.read_text()
    # More than one process took part (each claim is a race that any of them may win).
    delivering = {
        w for w in ("", "[worker 2] ", "[worker 3] ") if f"INFO    {w}mqd.delivery:" in log
    }
    assert len(delivering) >= 2, log[-2000:]
    assert "worker 2 started" in log and "worker 3 started" in log


@pytestmark_slow
@pytest.mark.skipif(sys.platform == "win32", reason="signals and /proc")
def test_the_queue_of_every_worker_is_administered_as_one(
    tmp_path: Path, spool: Path, smtp_server: SMTPPeer, daemons: list[DaemonProcess]
) -> None:
    smtp_server.mail_reply = "451 4.3.0 try again later"  # everything stays queued, deferred
    config = write(tmp_path, spool, smtp_server.port, workers=2)
    # Worker 2 alone (by hand, with --once) takes in the first three: they are in its queue.
    inject_many(spool, [make_message(subject=f"early {i}") for i in range(3)])
    by_hand = mqd(config, "run", "--worker", "2", "--once")
    assert by_hand.returncode == 0, by_hand.stderr
    assert "[worker 2]" in by_hand.stderr
    second = tmp_path / "queue" / "workers" / "2"
    assert len(list(second.glob("state/*.json"))) == 3
    inject_many(spool, [make_message(subject=f"late {i}") for i in range(2)])
    done = mqd(config, "run", "--once")  # both workers; the two new ones go to either
    assert done.returncode == 0, done.stderr

    # Offline: every worker's files.
    rows = mqd_json(config, "queue", "list")
    assert len(rows) == 5 and sum(row["worker"] == 2 for row in rows) >= 3
    offline = mqd_json(config, "status")
    assert offline["messages"] == 5 and not offline["running"]
    assert sum(w["messages"] for w in offline["workers"]) == 5
    of_second = next(row["id"] for row in rows if row["worker"] == 2)
    # A prefix finds its worker: the shortest that no other id starts with (ids begin with time).
    others = [row["id"] for row in rows if row["id"] != of_second]
    prefix = next(
        of_second[:n]
        for n in range(1, len(of_second))
        if not any(i.startswith(of_second[:n]) for i in others)
    )
    shown = mqd_json(config, "queue", "show", prefix)
    assert shown["id"] == of_second and shown["worker"] == 2
    assert shown["body_path"].startswith(str(second))

    run = start_workers(daemons, config, 2)
    online = mqd_json(config, "status")
    assert online["running"] and online["messages"] == 5
    assert [w["running"] for w in online["workers"]] == [True, True]
    pids = [w["pid"] for w in online["workers"]]
    assert pids[0] == run.proc.pid and pids[1] != pids[0]
    text = mqd(config, "status")
    assert text.returncode == 0 and "workers   1 (pid " in text.stdout, text.stdout

    held = mqd(config, "queue", "hold", of_second)
    assert held.returncode == 0, held.stderr
    assert [r["state"] for r in mqd_json(config, "queue", "list") if r["id"] == of_second] == [
        "held"
    ]
    deleted = mqd(config, "queue", "delete", "--yes", of_second)
    assert deleted.returncode == 0, deleted.stderr
    assert not (second / "state" / f"{of_second}.json").exists()
    unknown = mqd(config, "queue", "delete", "--yes", "zzzz")
    assert unknown.returncode != 0 and "no message 'zzzz'" in unknown.stderr
    reloaded = mqd(config, "reload")
    assert reloaded.returncode == 0 and "in each of 2 workers" in reloaded.stdout, reloaded.stderr

    # A worker that dies is started again; --check says so while it is down.
    os.kill(pids[1], signal.SIGKILL)
    restarted = wait_until_sync(
        lambda: next(
            (
                w["pid"]
                for w in mqd_json(config, "status")["workers"]
                if w["worker"] == 2 and w["running"] and w["pid"] != pids[1]
            ),
            None,
        ),
        "worker 2 started again",
        30,
    )
    assert "worker 2 exited (code -9)" in run.log.read_text()
    assert run.stop() == 0
    wait_until_sync(lambda: not alive(restarted), "worker 2 stopped with worker 1", 10)


@pytestmark_slow
@pytest.mark.skipif(sys.platform == "win32", reason="signals and /proc")
def test_workers_stop_when_worker_1_is_killed(
    tmp_path: Path, spool: Path, smtp_server: SMTPPeer, daemons: list[DaemonProcess]
) -> None:
    config = write(tmp_path, spool, smtp_server.port, workers=3)
    run = start_workers(daemons, config, 3)
    pids = [w["pid"] for w in mqd_json(config, "status")["workers"]]
    assert run.stop(signal.SIGKILL) == -signal.SIGKILL
    for pid in pids[1:]:
        wait_until_sync(lambda pid=pid: not alive(pid), f"worker pid {pid} gone", 20)
    # Nothing is left holding a queue: a new run starts at once.
    again = start_workers(daemons, config, 3)
    assert again.stop() == 0


def test_messages_of_a_retired_worker_are_named_at_start(
    tmp_path: Path, spool: Path, smtp_server: SMTPPeer
) -> None:
    smtp_server.mail_reply = "451 4.3.0 try again later"
    config = write(tmp_path, spool, smtp_server.port, workers=3)
    inject_many(spool, [make_message()])
    assert mqd(config, "run", "--worker", "3", "--once").returncode == 0
    config.write_text(config.read_text().replace("workers = 3", "workers = 1"))
    done = mqd(config, "run", "--once")
    assert done.returncode == 0, done.stderr
    assert "holds 1 message(s) of worker 3" in done.stderr
    assert "set queue.workers to 3 or more" in done.stderr
    refused = mqd(config, "run", "--worker", "3", "--once")
    assert refused.returncode != 0 and "queue.workers = 1" in refused.stderr


@pytestmark_slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="an AF_UNIX notify socket")
def test_only_worker_1_talks_to_systemd(
    tmp_path: Path,
    spool: Path,
    smtp_server: SMTPPeer,
    env: dict[str, str],
) -> None:
    from test_sd_notify import NotifySocket, short_socket_path

    notify = NotifySocket(short_socket_path(tmp_path))
    config = write(tmp_path, spool, smtp_server.port, workers=3)
    log = tmp_path / "mqd.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mqd", "--config", str(config), "run"],
            env={**env, "NOTIFY_SOCKET": notify.address},
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    try:
        assert notify.receive().get("READY") == "1"
        wait_until_sync(sockets_up(config, 3), "three control sockets")
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING")
        assert proc.wait(40) == 0
        # Every worker went through its start (a worker says READY=1, when it does, right after
        # opening its control socket) and has exited with worker 1: what they sent is queued on
        # the socket now, so nothing more can come.
        with pytest.raises(AssertionError, match="no notification"):
            notify.receive(timeout=0.5)
        assert [m for m in notify.received if m.get("READY") == "1"] == [notify.received[0]]
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()


@pytestmark_slow
@pytest.mark.skipif(sys.platform == "win32", reason="signals")
def test_each_worker_serves_its_own_metrics_and_they_add_up(
    tmp_path: Path, spool: Path, smtp_server: SMTPPeer, daemons: list[DaemonProcess]
) -> None:
    import re
    import urllib.request

    config = write(tmp_path, spool, smtp_server.port, workers=2)
    config.write_text(
        config.read_text() + '\n[metrics]\nenabled = true\nhost = "127.0.0.1"\nport = 0\n'
    )
    run = start_workers(daemons, config, 2)
    urls = wait_until_sync(
        lambda: (
            (found := re.findall(r"serving Prometheus metrics at (\S+)", run.log.read_text()))
            and len(found) == 2
            and found
        ),
        "two metrics endpoints",
    )
    assert len(set(urls)) == 2
    count = 60
    inject_many(spool, [make_message(subject=f"m {i}") for i in range(count)])
    smtp_server.wait_for(count, timeout=60)

    def delivered(url: str) -> float:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        found = re.search(r'^mqd_recipients_total\{outcome="delivered"\} (\S+)$', text, re.M)
        assert found, text[:500]
        return float(found.group(1))

    wait_until_sync(lambda: sum(delivered(url) for url in urls) == count, "the counts add up")
    assert run.stop() == 0


@pytestmark_slow
@pytest.mark.skipif(sys.platform == "win32", reason="signals")
def test_sigterm_to_every_worker_at_once_is_one_graceful_stop(
    tmp_path: Path, spool: Path, smtp_server: SMTPPeer, daemons: list[DaemonProcess]
) -> None:
    """What systemd's stop does (KillMode=control-group): deliveries in flight still finish."""
    smtp_server.data_delay = 0.5
    config = write(tmp_path, spool, smtp_server.port, workers=2)
    run = start_workers(daemons, config, 2)
    pids = [w["pid"] for w in mqd_json(config, "status")["workers"]]
    inject_many(spool, [make_message(subject=f"slow {i}") for i in range(40)])
    wait_until_sync(lambda: smtp_server.data_started >= 4, "deliveries in flight")
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    assert run.proc.wait(40) == 0
    for pid in pids[1:]:
        wait_until_sync(lambda pid=pid: not alive(pid), "worker 2 gone", 20)
    log = run.log.read_text()
    assert "cancelling in-flight deliveries" not in log
    assert "outcome=delivered" in log


def test_once_fails_when_a_worker_fails(tmp_path: Path, spool: Path, smtp_server: SMTPPeer) -> None:
    from lockholder import hold_queue_lock

    config = write(tmp_path, spool, smtp_server.port, workers=2)
    inject_many(spool, [make_message(subject=f"m {i}") for i in range(5)])
    with hold_queue_lock(tmp_path / "queue" / "workers" / "2"):
        done = mqd(config, "run", "--once")
    assert done.returncode == 1, done.stderr
    assert "worker(s) 2 (code 75) did not finish" in done.stderr
    assert "in use by another mqd process" in done.stderr  # worker 2's own words
    smtp_server.wait_for(5, timeout=30)  # worker 1 delivered everything meanwhile


@pytestmark_slow
@pytest.mark.skipif(sys.platform == "win32", reason="signals")
def test_a_second_sigterm_to_worker_1_hurries_every_worker(
    tmp_path: Path, spool: Path, smtp_server: SMTPPeer, daemons: list[DaemonProcess]
) -> None:
    smtp_server.data_delay = 20.0  # a graceful stop would wait for these
    config = write(tmp_path, spool, smtp_server.port, workers=2)
    run = start_workers(daemons, config, 2)
    inject_many(spool, [make_message(subject=f"slow {i}") for i in range(40)])
    wait_until_sync(lambda: smtp_server.data_started >= 4, "deliveries in flight")
    started = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    # Once worker 1 took the first (two signals at once may arrive as one), the second.
    wait_until_sync(lambda: first_stop_taken(run.log), "worker 1 to start stopping", 10)
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(15) == 0
    assert time.monotonic() - started < 15
    log = run.log.read_text()
    assert "[worker 2] mqd.daemon: second stop request: cancelling" in log, log[-3000:]
