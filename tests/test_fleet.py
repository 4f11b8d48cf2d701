"""A fleet: three ``mqd run`` processes, each with its own spool and node name, on one PostgreSQL
queue, delivering into the in-test SMTP sink.

``MQD_FLEET_MESSAGES`` sets the drain's size (default 1,500: under a minute on a loaded 2-core
machine; issue 22 asks for 5,000, which ``MQD_FLEET_MESSAGES=5000`` runs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from corehelpers import DaemonProcess, make_message
from pgfixtures import PgSchema
from smtpserver import SMTPPeer

from mqd.producer.inject import inject_many
from mqd.testing import wait_until_sync

pytestmark = pytest.mark.slow

N = int(os.environ.get("MQD_FLEET_MESSAGES", "1500"))
NODES = ("node-1", "node-2", "node-3")
HOLD_ID = "X-Test-Id: h"


class Node:
    def __init__(self, root: Path, name: str, dsn: str, port: int) -> None:
        self.name = name
        self.spool = root / name / "spool"
        self.queue = root / name / "queue"
        self.spool.mkdir(parents=True)
        self.config = root / f"{name}.toml"
        self.log = root / f"{name}.log"
        self.config.write_text(
            textwrap.dedent(
                f"""
                [queue]
                dir = "{self.queue}"
                store = "postgresql"
                dsn = "{dsn}"
                node = "{name}"
                concurrency = 8
                bounce_sender = "mailer-daemon@mqd.test"
                scan_interval = "1s"
                retry = {{ initial = "1s", max = "2s" }}

                [[spool]]
                path = "{self.spool}"
                allowed_senders = ["app@example.com"]

                [relays.sink]
                plugin = "smtp"
                host = "127.0.0.1"
                port = {port}
                security = "none"
                """
            ),
            encoding="utf-8",
        )
        self.process = DaemonProcess(self.config, self.log)

    def start(self, daemons: list[DaemonProcess]) -> Node:
        self.process.start()
        daemons.append(self.process)
        return self

    def running(self) -> bool:
        return (self.queue / "control.sock").exists() and "mqd starting" in self.log.read_text()

    def mqd(self, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mqd", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )


def fleet(tmp_path: Path, schema: PgSchema, sink: SMTPPeer) -> list[Node]:
    return [Node(tmp_path, name, schema.dsn, sink.port) for name in NODES]


def messages(count: int, tag: str) -> list[bytes]:
    return [
        make_message(to=(f"rcpt{i % 7}@example.net",), extra_headers=(f"X-Test-Id: {tag}-{i}",))
        for i in range(count)
    ]


def header_id(data: bytes) -> str:
    for line in data.split(b"\r\n"):
        if line.startswith(b"X-Test-Id: "):
            return line[11:].decode()
    return ""


def received_ids(server: SMTPPeer) -> Counter[str]:
    return Counter(header_id(message.data) for message in list(server.messages))


def query(schema: PgSchema, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(schema.dsn, autocommit=True) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def queued(schema: PgSchema) -> int:
    return int(query(schema, "SELECT count(*) FROM mqd_entry")[0][0])  # type: ignore[call-overload]


def spread(nodes: list[Node], count: int, tag: str) -> None:
    """``count`` messages, a third into each node's spool."""
    batch = messages(count, tag)
    for index, node in enumerate(nodes):
        inject_many(node.spool, batch[index :: len(nodes)])


def wait_drained(nodes: list[Node], schema: PgSchema, sink: SMTPPeer, count: int) -> None:
    wait_until_sync(lambda: len(received_ids(sink)) >= count, f"{count} messages", 240)
    wait_until_sync(
        lambda: queued(schema) == 0 and not any(list(n.spool.glob("*.eml")) for n in nodes),
        "an empty queue and empty spools",
        60,
    )


def test_three_nodes_drain_every_message_once(
    tmp_path: Path, schema: PgSchema, smtp_server: SMTPPeer, daemons: list[DaemonProcess]
) -> None:
    nodes = fleet(tmp_path, schema, smtp_server)
    spread(nodes, N, "d")
    for node in nodes:
        node.start(daemons)
    wait_drained(nodes, schema, smtp_server, N)
    for node in nodes:
        assert node.process.stop() == 0, node.log.read_text()[-2000:]
    ids = received_ids(smtp_server)
    assert len(ids) == N and max(ids.values()) == 1
    assert len(smtp_server.messages) == N
    logs = [node.log.read_text() for node in nodes]
    assert all("outcome=delivered" in log for log in logs), "a node delivered nothing"


def test_a_node_killed_mid_drain_loses_nothing_and_repeats_only_what_it_was_sending(
    tmp_path: Path, schema: PgSchema, smtp_server: SMTPPeer, daemons: list[DaemonProcess]
) -> None:
    smtp_server.data_delay = 0.005  # enough messages in flight that the kill lands in a send
    nodes = fleet(tmp_path, schema, smtp_server)
    spread(nodes, N, "k")
    for node in nodes:
        node.start(daemons)
    victim = nodes[0]
    wait_until_sync(
        lambda: (
            query(schema, "SELECT 1 FROM mqd_entry WHERE owner = %s AND dispatching", "node-1")
            and len(smtp_server.messages) >= N // 4
        ),
        "node-1 sending",
        120,
    )
    assert victim.process.stop(signal.SIGKILL) == -signal.SIGKILL
    # node-1 writes nothing more: what it had marked is what may go out twice.
    marked = query(
        schema,
        "SELECT b.body FROM mqd_entry e JOIN mqd_body b USING (id) "
        "WHERE e.owner = %s AND e.dispatching",
        "node-1",
    )
    may_repeat = {header_id(bytes(row[0])) for row in marked}  # type: ignore[call-overload]
    assert len(smtp_server.messages) < N, "the fleet finished before node-1 was killed"
    victim.process = DaemonProcess(victim.config, victim.log)
    victim.start(daemons)  # under its name: its leases come back at once
    wait_drained(nodes, schema, smtp_server, N)
    for node in nodes:
        assert node.process.stop() == 0
    ids = received_ids(smtp_server)
    assert len(ids) == N, "a message was lost"
    twice = {test_id for test_id, count in ids.items() if count > 1}
    assert twice <= may_repeat, twice - may_repeat
    assert max(ids.values()) <= 2
    redispatched = victim.log.read_text().count("may have gone out")
    assert redispatched == len(marked), (redispatched, len(marked))


def test_hold_and_delete_from_another_node_race_the_holder(
    tmp_path: Path,
    schema: PgSchema,
    smtp_server: SMTPPeer,
    daemons: list[DaemonProcess],
    env: dict[str, str],
) -> None:
    smtp_server.data_delay = 2.0  # the entry stays leased and dispatching for a while
    one, other, _ = fleet(tmp_path, schema, smtp_server)
    one.start(daemons)
    other.start(daemons)
    wait_until_sync(lambda: one.running() and other.running(), "two nodes running", 30)
    inject_many(
        one.spool,
        [make_message(to=("ok@example.net", "temp-bob@example.net"), extra_headers=(HOLD_ID,))],
    )
    [[entry_id, owner]] = wait_until_sync(
        lambda: query(schema, "SELECT id, owner FROM mqd_entry WHERE dispatching"),
        "the entry being sent",
        30,
    )
    # A hold from the node that does not hold it: acknowledged now, applied when the holder
    # saves (temp-bob deferred): the entry stays held, never tried again.
    holder, admin = (one, other) if owner == "node-1" else (other, one)
    held = admin.mqd("queue", "hold", str(entry_id), env=env)
    assert held.returncode == 0, held.stderr
    wait_until_sync(
        lambda: query(schema, "SELECT 1 FROM mqd_entry WHERE held AND owner IS NULL"),
        "the holder saved the entry, held",
        30,
    )
    assert received_ids(smtp_server)["h"] == 1
    # Released, it goes out again (to temp-bob only, still refused): a delete while it is being
    # sent is refused (the holder may be sending it), then acknowledged once the holder is done.
    assert admin.mqd("queue", "release", str(entry_id), env=env).returncode == 0
    wait_until_sync(lambda: query(schema, "SELECT 1 FROM mqd_entry WHERE NOT held"), "released", 30)
    refusals: list[str] = []

    def deleted() -> bool:
        done = admin.mqd("queue", "delete", "--yes", str(entry_id), env=env)
        if done.returncode != 0:
            refusals.append(done.stderr)
        return done.returncode == 0

    wait_until_sync(deleted, "the delete acknowledged", 60)
    assert all("being delivered right now" in why for why in refusals), refusals
    sent_at_delete = smtp_server.data_started
    assert queued(schema) == 0
    # Another message through the same holder: the deleted one never comes back.
    smtp_server.data_delay = 0.0
    inject_many(holder.spool, [make_message(extra_headers=("X-Test-Id: after",))])
    wait_until_sync(lambda: received_ids(smtp_server)["after"] == 1, "the next message", 30)
    wait_until_sync(lambda: queued(schema) == 0, "an empty queue", 30)
    assert smtp_server.data_started == sent_at_delete + 1
    assert received_ids(smtp_server)["h"] == 1
    assert "temp-bob@example.net" not in [r for m in smtp_server.messages for r in m.rcpt_tos]


def pg_cluster(action: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", action],
        check=True,
        capture_output=True,
        timeout=120,
    )


def needs_pg_ctlcluster() -> None:
    if shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs pg_ctlcluster, as root")


def test_postgresql_restarted_mid_drain_loses_nothing(
    tmp_path: Path,
    schema: PgSchema,
    smtp_server: SMTPPeer,
    daemons: list[DaemonProcess],
    env: dict[str, str],
) -> None:
    needs_pg_ctlcluster()
    count = N // 3
    smtp_server.data_delay = 0.005
    nodes = fleet(tmp_path, schema, smtp_server)
    spread(nodes, count, "r")
    for node in nodes:
        node.start(daemons)
    wait_until_sync(lambda: len(smtp_server.messages) >= count // 4, "the drain under way", 120)
    pg_cluster("stop")
    try:
        # Intake keeps what it cannot queue in the spool.
        inject_many(nodes[1].spool, messages(20, "down"))

        def faulted() -> dict[str, object] | None:
            done = nodes[1].mqd("status", "--json", env=env)
            assert done.returncode == 0, done.stderr  # it answers, the database down or not
            status: dict[str, object] = json.loads(done.stdout)
            faults = status["faults"]
            assert isinstance(faults, list)
            return status if any(f["what"] == "the queue database" for f in faults) else None

        wait_until_sync(faulted, "mqd status showing the database down", 60)
        shown = nodes[1].mqd("status", env=env).stdout
        assert "paused    the queue database: cannot reach the queue database" in shown, shown
        # What intake could not queue waits in the spool (or its claim area), nothing lost.
        waiting = list(nodes[1].spool.glob("*.eml")) + list(nodes[1].queue.rglob("*.eml"))
        assert len(waiting) >= 20, waiting
    finally:
        pg_cluster("start")
    wait_drained(nodes, schema, smtp_server, count + 20)
    for node in nodes:
        # Its session (its lock and LISTEN) comes back on its own backoff (up to 15 s apart),
        # which a quick drain may not outlast.
        wait_until_sync(
            lambda: "the queue database's session is back" in node.log.read_text(),  # noqa: B023
            f"{node.name}'s session back",
            60,
        )
        assert node.process.stop() == 0
        log = node.log.read_text()
        assert log.count("the queue database is down") == 1, log[-3000:]
        assert "the queue database resumed after" in log
        assert "psycopg.pool" not in log
    ids = received_ids(smtp_server)
    assert len(ids) == count + 20, "a message was lost"
    # What went twice is what a node had marked as being sent when its outcome could not be
    # written: each said in its log (and counted in redispatched).
    repeats = sum(n - 1 for n in ids.values())
    said = sum(node.log.read_text().count("may have gone out") for node in nodes)
    assert repeats <= said, (repeats, said)
