"""``queue.workers`` on the PostgreSQL store: each worker of one ``mqd run`` is a node of the
shared queue (``<node>.w<n>``), so one machine's cores all deliver; administration asks worker 1,
which sees the whole queue, and ``mqd status`` counts it once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from corehelpers import DaemonProcess, make_message
from pgfixtures import PgSchema
from smtpserver import SMTPPeer
from test_fleet import Node, query, received_ids

from mqd.producer.inject import inject_many
from mqd.testing import wait_until_sync

pytestmark = pytest.mark.slow

COUNT = 400


def owners(schema: PgSchema) -> set[object]:
    rows = query(schema, "SELECT DISTINCT owner FROM mqd_entry WHERE owner IS NOT NULL")
    return {row[0] for row in rows}


def test_two_workers_are_two_nodes_of_the_shared_queue(
    tmp_path: Path,
    schema: PgSchema,
    smtp_server: SMTPPeer,
    daemons: list[DaemonProcess],
    env: dict[str, str],
) -> None:
    smtp_server.data_delay = 0.01  # a drain long enough for worker 2 to start and take part
    node = Node(tmp_path, "node-1", schema.dsn, smtp_server.port)
    node.config.write_text(
        node.config.read_text().replace("concurrency = 8", "concurrency = 8\nworkers = 2")
    )
    messages = [
        make_message(to=(f"rcpt{i % 7}@example.net",), extra_headers=(f"X-Test-Id: w-{i}",))
        for i in range(COUNT)
    ]
    inject_many(node.spool, messages)
    node.start(daemons)
    seen: set[object] = set()

    def both_hold_leases() -> bool:
        seen.update(owners(schema))
        return {"node-1", "node-1.w2"} <= seen

    wait_until_sync(both_hold_leases, "leases held by both workers' nodes", 120)
    wait_until_sync(lambda: len(received_ids(smtp_server)) >= COUNT, f"{COUNT} messages", 240)
    ids = received_ids(smtp_server)
    assert len(ids) == COUNT and set(ids.values()) == {1}  # each once, none lost

    # Three that stay queued (the server defers them): counted once, not once per worker.
    inject_many(node.spool, [make_message(to=(f"temp-{i}@example.net",)) for i in range(3)])
    wait_until_sync(
        lambda: query(schema, "SELECT count(*) FROM mqd_entry WHERE attempts > 0")[0][0] == 3,
        "three deferred",
        60,
    )
    listed = node.mqd("queue", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 3
    shown = node.mqd("status", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["messages"] == 3
    assert [w["worker"] for w in status["workers"]] == [1, 2]
    assert node.process.stop() == 0
