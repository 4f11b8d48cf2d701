"""What an operator sees of a node on a shared PostgreSQL queue: ``mqd status`` names the
database and the node and shows redispatches, ``mqd queue list`` who holds what, ``/metrics``
``mqd_redispatched_total``; and a database that is down is said once."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mqd.admin.render import render_queue, render_status
from mqd.config.schema import Config
from mqd.delivery.guards import Guards
from mqd.faults import Fault
from mqd.http.metrics import Metrics
from mqd.queue.memory import MemoryStore
from mqd.queue.store import QueueCounts

DSN = "postgresql://mqd@db.example.com/mqd"


def status(**given: object) -> dict[str, object]:
    base: dict[str, object] = {
        "running": True,
        "pid": 42,
        "uptime": 60.0,
        "version": "1.0",
        "config": "/etc/mqd/mqd.toml",
        "queue_dir": "/var/lib/mqd",
        "node": "web-1",
        "messages": 0,
        "by_state": {},
        "failed": 0,
        "relays": {},
    }
    return base | given


def test_status_names_the_database_and_the_node() -> None:
    lines = render_status(status(database=DSN, redispatched=3))
    assert f"queue         PostgreSQL {DSN}, node web-1, intake and delivery" in lines
    assert any(line.startswith("redispatched  3 (") for line in lines), lines
    stopped = render_status(status(database=DSN, running=False))
    assert stopped[0].endswith("not running (read from the queue database)")


def test_status_of_a_file_queue_is_as_it_was() -> None:
    lines = render_status(status())
    assert "queue     /var/lib/mqd" in lines
    assert not any("redispatched" in line for line in lines)
    assert render_status(status(running=False))[0].endswith("(read from the queue files)")


def row(entry_id: str, node: str | None) -> dict[str, object]:
    return {
        "id": entry_id,
        "state": "active" if node else "waiting",
        "node": node,
        "sender": "app@example.com",
        "subject": None,
        "recipients": [{"address": "a@example.net", "status": "pending", "reply": None}],
        "size": 10,
        "attempts": 0,
        "next_attempt_at": 0.0,
        "age": 5.0,
    }


def test_the_queue_list_shows_which_node_holds_an_entry() -> None:
    lines = render_queue([row("q1", "web-2"), row("q2", None)], time.time())
    assert lines[0].split() == ["ID", "AGE", "SIZE", "STATE", "TRIES", "NEXT", "NODE", "SENDER"]
    column = lines[0].index("NODE")
    assert lines[1][column:].startswith("web-2") and lines[3][column:].startswith("- ")
    plain = render_queue([row("q1", None)], time.time())
    assert "NODE" not in plain[0]  # nobody holds anything (or a file queue): no column


class Redispatching(MemoryStore):
    async def counts(self) -> QueueCounts:
        return dataclasses.replace(await super().counts(), redispatched=2)


@dataclass
class Node:
    config: Config
    store: MemoryStore
    guards: Guards
    started_at: float

    def source_status(self) -> list[object]:
        return []


async def test_metrics_export_the_redispatched_count(
    sink_config: Callable[..., Config],
) -> None:
    config = sink_config()
    node = Node(config, Redispatching(), Guards(config), time.time())
    await node.store.open()
    text = (await Metrics(node).render()).decode()
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples["mqd_redispatched_total"] == 2


def test_a_database_down_is_said_once_however_its_errors_are_worded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("mqd.test.fault")
    fault = Fault("the queue database", log, verb="is down")
    with caplog.at_level(logging.WARNING, logger="mqd.test.fault"):
        for why in ("connection refused", "terminating connection", "no connection in 10 s"):
            fault.failed(why, kind="unreachable")
        fault.cleared()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("the queue database is down: connection refused")
    assert messages[1].startswith("the queue database resumed after 3 failed tries")
