"""The suppression list with ``queue.workers`` on the file store: each worker keeps the whole
list, so ``mqd suppress`` (and the API, through ``mqd.admin.fanout``) answers as for one list,
and an address a provider's webhook reports to one worker joins every worker's list."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from test_http import Provider, sign

from mqd.admin.client import offline
from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.plugins.host import PluginHost

CONFIG = """
[queue]
dir = "{queue}"
bounce_sender = "mailer-daemon@mqd.test"
workers = 2

[[spool]]
path = "{spool}"
allowed_senders = ["*@example.com"]
relay = "{relay}"
{extra}
[relays.{relay}]
plugin = "{relay}"
"""
HTTP = """
[http]
enabled = true
port = 0
token = "read-token-for-the-suppression-worker-tests"
"""


def write(write_config: Callable[[str], Path], queue: Path, spool: Path, **kw: str) -> Path:
    kw.setdefault("relay", "memory")
    kw.setdefault("extra", "")
    return write_config(CONFIG.format(queue=queue, spool=spool, **kw))


def mqd(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqd", "--config", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


async def each_workers_list(config: Config) -> dict[int, list[str]]:
    lists = {}
    for n in (1, 2):
        async with offline(config.for_worker(n)) as admin:
            lists[n] = sorted(row["address"] for row in await admin.op_suppress_list())
    return lists


def test_mqd_suppress_answers_for_one_list_over_the_workers(
    write_config: Callable[[str], Path], queue_dir: Path, spool: Path, tmp_path: Path
) -> None:
    path = write(write_config, queue_dir, spool)
    ran = mqd(path, "run", "--once")  # both workers: each has its queue
    assert ran.returncode == 0, ran.stderr

    added = mqd(path, "suppress", "add", "ann@example.net")
    assert added.returncode == 0 and "suppressed 1 address" in added.stdout, added.stderr
    again = mqd(path, "suppress", "add", "ann@example.net")
    assert "ann@example.net: already suppressed" in again.stdout, again.stdout
    csv = tmp_path / "list.csv"
    csv.write_text("address,account\nbob@example.net,\ncy@example.net,shop\n")
    imported = mqd(path, "suppress", "import", str(csv))
    assert imported.returncode == 0, imported.stderr
    assert "imported 2 of 2 rows" in imported.stdout
    listed = mqd(path, "suppress", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted((r["account"], r["address"]) for r in rows) == [
        ("", "ann@example.net"),
        ("", "bob@example.net"),
        ("shop", "cy@example.net"),
    ]
    removed = mqd(path, "suppress", "remove", "bob@example.net")
    assert removed.returncode == 0 and "removed 1 suppression" in removed.stdout
    lists = asyncio.run(each_workers_list(load_config(path)))
    assert lists[1] == lists[2] == ["ann@example.net", "cy@example.net"]


async def test_a_bounce_reported_to_one_worker_suppresses_in_every_worker(
    write_config: Callable[[str], Path], queue_dir: Path, spool: Path
) -> None:
    config = load_config(write(write_config, queue_dir, spool, relay="hooked", extra=HTTP))
    # Worker 1 is not running: it is given the addition on its files, as the CLI would.
    config.for_worker(1).queue.own_dir.mkdir(parents=True)
    second = config.for_worker(2)
    daemon = Daemon(second, host=PluginHost(entry_points=False, extra=[Provider()]))
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        assert daemon.http is not None
        events: list[dict[str, Any]] = [
            {"status": "bounced", "event_id": "b1", "recipient": "dee@example.net"},
            {"status": "delivered", "event_id": "d1", "recipient": "eve@example.net"},
        ]
        body = json.dumps([{**e, "at": time.time()} for e in events]).encode()
        async with (
            aiohttp.ClientSession(base_url=daemon.http.url) as http,
            http.post(
                "/webhooks/hooked", data=body, headers={"X-Test-Signature": sign(body)}
            ) as response,
        ):
            assert response.status == 200, await response.text()
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)
    assert await each_workers_list(config) == {
        1: ["dee@example.net"],
        2: ["dee@example.net"],
    }
