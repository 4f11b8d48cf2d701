"""Hand-over keys for a fleet: two ``mqd run`` processes on one PostgreSQL queue, each serving
the submit API; a request retried at the other node (a load balancer's choice) with the same
``Idempotency-Key`` queues nothing twice, nor do two copies reaching both nodes at once."""

from __future__ import annotations

import asyncio
import socket
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from corehelpers import DaemonProcess
from pgfixtures import PgSchema
from smtpserver import SMTPPeer

from mqd.testing import wait_until

TOKEN = "fleet-submit-token-0123456789abcdef"
MESSAGE = {"from": "app@example.com", "to": ["alice@example.net"], "subject": "fleet", "text": "x"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Node:
    def __init__(self, root: Path, name: str, dsn: str, sink: int) -> None:
        self.port = free_port()
        self.config = root / f"{name}.toml"
        self.log = root / f"{name}.log"
        self.config.write_text(
            textwrap.dedent(
                f"""
                [queue]
                dir = "{root / name / "queue"}"
                store = "postgresql"
                dsn = "{dsn}"
                node = "{name}"

                [[spool]]
                path = "{root / name / "spool"}"
                allowed_senders = ["app@example.com"]

                [http]
                enabled = true
                port = {self.port}

                [[submit]]
                token = "{TOKEN}"
                allowed_senders = ["app@example.com"]

                [relays.sink]
                plugin = "smtp"
                host = "127.0.0.1"
                port = {sink}
                security = "none"
                """
            ),
            encoding="utf-8",
        )
        self.config.chmod(0o600)  # it holds a token
        self.process = DaemonProcess(self.config, self.log)

    async def post(self, key: str) -> tuple[int, dict[str, str], Any]:
        headers = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": key}
        async with (
            aiohttp.ClientSession(f"http://127.0.0.1:{self.port}") as http,
            http.post("/api/v1/messages", json=MESSAGE, headers=headers) as answer,
        ):
            return answer.status, dict(answer.headers), await answer.json()

    async def taking(self) -> bool:
        """Whether its submit source takes requests (not connecting, not 503)."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        try:
            async with (
                aiohttp.ClientSession(f"http://127.0.0.1:{self.port}") as http,
                http.post("/api/v1/messages", data=b"", headers=headers) as answer,
            ):
                return answer.status != 503
        except aiohttp.ClientConnectionError:
            return False


def queued(schema: PgSchema) -> int:
    with psycopg.connect(schema.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM mqd_entry").fetchone()
    return int(row[0]) if row else -1


async def test_one_idempotency_key_posted_to_two_nodes_queues_one_message(
    tmp_path: Path, schema: PgSchema, smtp_server: SMTPPeer, daemons: list[DaemonProcess]
) -> None:
    nodes = [Node(tmp_path, name, schema.dsn, smtp_server.port) for name in ("web-1", "web-2")]
    for node in nodes:
        daemons.append(node.process.start())
    for node in nodes:
        await wait_until(node.taking, f"{node.config.stem} taking requests", 60)
    first, second = nodes
    # A request retried at the other node gets the first answer.
    status, headers, answer = await first.post("order-1")
    assert status == 202 and "Idempotent-Replayed" not in headers
    status, headers, again = await second.post("order-1")
    assert status == 202 and again == answer and headers["Idempotent-Replayed"] == "true"
    # The same request reaching both nodes at once: one queues it, both answer with its id.
    both = await asyncio.gather(first.post("order-2"), second.post("order-2"))
    assert [status for status, _, _ in both] == [202, 202]
    assert both[0][2] == both[1][2] != answer
    assert sum("Idempotent-Replayed" not in headers for _, headers, _ in both) == 1
    await wait_until(lambda: len(smtp_server.messages) >= 2, "two messages delivered", 60)
    await wait_until(lambda: queued(schema) == 0, "an empty queue", 60)
    for node in nodes:
        assert node.process.stop() == 0, node.log.read_text()[-2000:]
    assert len(smtp_server.messages) == 2, "a key was queued twice"
