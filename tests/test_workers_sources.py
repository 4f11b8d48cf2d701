"""``queue.workers`` and the network sources: [[smtpd]], and [http] with [[submit]], listen
in every worker (the kernel spreads the connections over them, SO_REUSEPORT); on the file
store, whose workers keep their own hand-over keys, a request with an Idempotency-Key is handed
over in worker 1 whichever worker took it, and [[mailbox]] consumes in worker 1 alone (on a
shared store in each); ``mqd status`` counts each source once, summed over the workers."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import aiosmtplib
import pytest
from corehelpers import DaemonProcess
from pgfixtures import PgSchema
from smtpserver import SMTPPeer

from mqd.admin.fanout import merge_status
from mqd.config.load import load_config
from mqd.testing import wait_until_sync

CONFIG = """
[queue]
dir = "{queue}"
bounce_sender = "mailer-daemon@mqd.test"
workers = 2
{queue_extra}
[[spool]]
path = "{queue}-spool"
allowed_senders = ["app@example.com"]

[[smtpd]]
listen = ["127.0.0.1:{listen}"]
allowed_senders = ["app@example.com"]
{sources}
[relays.sink]
plugin = "smtp"
host = "127.0.0.1"
port = {port}
security = "none"
"""
OTHERS = """
[http]
enabled = true
port = 0
[[submit]]
token = "t0ken-for-the-submit-test"
allowed_senders = ["app@example.com"]
[[mailbox]]
url = "amqp://guest:guest@127.0.0.1/"
queue = "mqd-workers-sources"
allowed_senders = ["app@example.com"]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write(
    tmp_path: Path, *, listen: int = 0, port: int = 1, sources: str = "", **extra: str
) -> Path:
    path = tmp_path / "mqd.toml"
    text = CONFIG.format(
        queue=tmp_path / "queue",
        listen=listen,
        port=port,
        sources=sources,
        queue_extra=extra.get("queue_extra", ""),
    )
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("store", "second"),
    [("file", ["smtpd", "submit"]), ("postgresql", ["smtpd", "submit", "mailbox"])],
)
def test_the_listening_sources_run_in_every_worker(
    tmp_path: Path, store: str, second: list[str]
) -> None:
    extra = 'store = "postgresql"\ndsn = "postgresql://postgres@127.0.0.1/postgres"'
    path = write(tmp_path, sources=OTHERS, queue_extra=extra if store == "postgresql" else "")
    config = load_config(path)
    assert [s.kind for s in config.for_worker(1).sources] == ["smtpd", "submit", "mailbox"]
    assert [s.kind for s in config.for_worker(2).sources] == second
    # [[submit]] is served by [http], in each worker on the same port.
    assert config.for_worker(2).http.enabled
    assert config.for_worker(2).http.port == config.http.port


def part(worker: int, accepted: int, connected: bool | None = None) -> dict[str, object]:
    source = {
        "name": "smtpd[0]",
        "kind": "smtpd",
        "listening": ["127.0.0.1:2525"],
        "connections": worker,
        "accepted": accepted,
        "refused": 1,
        "connected": connected,
        "last_error": None if connected is not False else "refused",
    }
    return {
        "running": True,
        "pid": 100 + worker,
        "queue_dir": f"q/{worker}",
        "messages": 0,
        "by_state": {},
        "not_read": 0,
        "bytes": 0,
        "oldest_age": None,
        "relays": {},
        "sources": [source],
    }


def test_the_merged_status_counts_each_source_once_over_the_workers() -> None:
    [source] = merge_status({1: part(1, 5), 2: part(2, 7)})["sources"]
    assert (source["accepted"], source["refused"], source["connections"]) == (12, 2, 3)
    [broker] = merge_status({1: part(1, 1, True), 2: part(2, 1, False)})["sources"]
    assert broker["connected"] is False and broker["last_error"] == "refused"


async def submit_each_on_its_own_connection(port: int, count: int) -> None:
    async def one(n: int) -> None:
        message = f"From: app@example.com\r\nTo: rcpt@example.net\r\nX-Test-Id: w-{n}\r\n\r\nhi\r\n"
        await aiosmtplib.send(
            message,
            sender="app@example.com",
            recipients=["rcpt@example.net"],
            hostname="127.0.0.1",
            port=port,
        )

    for first in range(0, count, 8):
        await asyncio.gather(*(one(n) for n in range(first, min(first + 8, count))))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SO_REUSEPORT")
def test_every_worker_takes_smtp_submissions(
    tmp_path: Path, smtp_server: SMTPPeer, daemons: list[DaemonProcess]
) -> None:
    listen = free_port()
    path = write(tmp_path, listen=listen, port=smtp_server.port)
    run = DaemonProcess(path, tmp_path / "mqd.log").start()
    daemons.append(run)

    def both_listen() -> bool:
        said = f"smtpd[0] listening on 127.0.0.1:{listen}"
        lines = [line for line in run.log.read_text().splitlines() if said in line]
        return len(lines) == 2 and sum("[worker 2]" in line for line in lines) == 1

    wait_until_sync(both_listen, "both workers listening", timeout=60)
    count = 48
    asyncio.run(submit_each_on_its_own_connection(listen, count))
    smtp_server.wait_for(count, timeout=60)
    log = run.log.read_text()
    queued = [line for line in log.splitlines() if " queued from=<app@example.com>" in line]
    by_worker_2 = [line for line in queued if "[worker 2]" in line]
    assert len(queued) == count
    # The kernel spread the connections over both (48 to one alone: a chance of 2^-47).
    assert 0 < len(by_worker_2) < count, log[-3000:]
    status = subprocess.run(
        [sys.executable, "-m", "mqd", "--config", str(path), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [source] = json.loads(status.stdout)["sources"]
    assert source["accepted"] == count
    assert run.stop() == 0


SUBMIT_TOKEN = "t0ken-for-the-submit-test"
PG_SUBMIT = (
    "[http]\nenabled = true\nport = {http}\n[[submit]]\n"
    f'token = "{SUBMIT_TOKEN}"\nallowed_senders = ["app@example.com"]\n'
)


async def post_each_on_its_own_connection(port: int, count: int) -> list[int]:
    """``count`` JSON messages, each POSTed on a connection of its own: the statuses."""
    import aiohttp

    async def one(n: int) -> int:
        message = {"from": "app@example.com", "to": "rcpt@example.net", "subject": f"w-{n}"}
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(
                f"http://127.0.0.1:{port}/api/v1/messages",
                json={**message, "text": "hi"},
                headers={"Authorization": f"Bearer {SUBMIT_TOKEN}"},
            ) as response,
        ):
            return response.status

    statuses: list[int] = []
    for first in range(0, count, 8):
        statuses += await asyncio.gather(*(one(n) for n in range(first, min(first + 8, count))))
    return statuses


async def status_of(port: int) -> dict[str, object]:
    import aiohttp

    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"http://127.0.0.1:{port}/api/v1/status") as response,
    ):
        assert response.status == 200
        answer: dict[str, object] = await response.json()
        return answer


def every_worker_serves_submissions(
    tmp_path: Path, smtp_server: SMTPPeer, daemons: list[DaemonProcess], queue_extra: str
) -> tuple[DaemonProcess, int]:
    """Two workers serving [http] with [[submit]]: each takes some of 56 messages POSTed on
    connections of their own, and each answers the status of both. The daemon, its port."""
    http = free_port()
    path = write(
        tmp_path,
        listen=free_port(),
        port=smtp_server.port,
        sources=PG_SUBMIT.format(http=http),
        queue_extra=queue_extra,
    )
    path.chmod(0o600)  # (it holds the submit token)
    run = DaemonProcess(path, tmp_path / "mqd.log").start()
    daemons.append(run)

    def both_take() -> bool:
        said = "serving webhooks"
        lines = [line for line in run.log.read_text().splitlines() if said in line]
        return len(lines) == 2 and sum("[worker 2]" in line for line in lines) == 1

    wait_until_sync(both_take, "both workers serving [http]", timeout=60)
    count = 48
    statuses: list[int] = []

    def all_taken() -> bool:  # 503 while a worker's source is still starting
        statuses[:] = asyncio.run(post_each_on_its_own_connection(http, 8))
        return statuses == [202] * 8

    wait_until_sync(all_taken, "both submit sources taking messages", timeout=60)
    assert asyncio.run(post_each_on_its_own_connection(http, count)) == [202] * count
    smtp_server.wait_for(count + 8, timeout=60)
    log = run.log.read_text()
    queued = [line for line in log.splitlines() if " queued from=<app@example.com>" in line]
    assert len(queued) >= count + 8
    # The kernel spread the connections over both (56 to one alone: a chance of 2^-55).
    assert 0 < sum("[worker 2]" in line for line in queued) < len(queued), log[-3000:]
    # Whichever worker answers, the status is every worker's.
    for _ in range(8):
        workers = asyncio.run(status_of(http))["workers"]
        assert isinstance(workers, list)
        assert [(w["worker"], w["running"]) for w in workers] == [(1, True), (2, True)]
        assert workers[0]["pid"] != workers[1]["pid"]  # each its own, not the answerer's
    return run, http


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SO_REUSEPORT")
def test_every_worker_serves_http_submissions_on_a_shared_store(
    tmp_path: Path, smtp_server: SMTPPeer, daemons: list[DaemonProcess]
) -> None:
    schema = PgSchema()
    try:
        extra = f'store = "postgresql"\ndsn = "{schema.dsn}"\nnode = "workers-http"'
        run, _ = every_worker_serves_submissions(tmp_path, smtp_server, daemons, extra)
        assert run.stop() == 0
    finally:
        schema.drop()


async def post_keyed_each_on_its_own_connection(port: int, key: str, count: int) -> list[str]:
    """The same request with the same Idempotency-Key ``count`` times, each on a connection of
    its own: the queue ids answered."""
    import aiohttp

    async def one() -> str:
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(
                f"http://127.0.0.1:{port}/api/v1/messages",
                json={
                    "from": "app@example.com",
                    "to": "k@example.net",
                    "subject": key,
                    "text": "k",
                },
                headers={"Authorization": f"Bearer {SUBMIT_TOKEN}", "Idempotency-Key": key},
            ) as response,
        ):
            assert response.status == 202, await response.text()
            answer = await response.json()
            return str(answer["id"])

    return list(await asyncio.gather(*(one() for _ in range(count))))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SO_REUSEPORT")
def test_a_file_stores_workers_each_serve_http_and_hand_keyed_messages_to_the_first(
    tmp_path: Path, smtp_server: SMTPPeer, daemons: list[DaemonProcess]
) -> None:
    run, http = every_worker_serves_submissions(tmp_path, smtp_server, daemons, "")
    before = len(smtp_server.messages)
    # One key sent 24 times at once over connections the kernel spreads over both workers.
    ids = asyncio.run(post_keyed_each_on_its_own_connection(http, "order-1", 24))
    assert len(set(ids)) == 1, ids
    smtp_server.wait_for(before + 1, timeout=60)
    log = run.log.read_text()
    queued = [line for line in log.splitlines() if " queued from=" in line and "k@example" in line]
    assert len(queued) == 1 and "[worker 2]" not in queued[0], queued
    assert run.stop() == 0
    assert len(smtp_server.messages) == before + 1
