"""``queue.role``: an intake node queues what its spool takes in and leases nothing, while a
delivery node on the same PostgreSQL queue (with no spool of its own) delivers it; the roles
that cannot work are refused at config load, naming the key and the fix."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from corehelpers import drop, make_message
from pgfixtures import PgSchema

from mqd.admin.render import render_status
from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.errors import ConfigError
from mqd.plugins.host import PluginHost
from mqd.testing import wait_until

SINK = """
[relays.sink]
plugin = "smtp"
host = "127.0.0.1"
port = {port}
security = "none"
"""
SPOOL = """
[[spool]]
path = "{path}"
relay = "sink"
allowed_senders = ["app@example.com"]
"""


def node_config(
    write_config: Callable[..., Path], tmp_path: Path, port: int, queue: str, *, spool: bool
) -> Config:
    """A node's config: its own queue directory, ``queue``'s lines, the sink relay and (with
    ``spool``) a spool of its own, ``<tmp_path>/spool``."""
    name = queue.split('node = "')[1].split('"')[0] if 'node = "' in queue else "file"
    (tmp_path / "spool").mkdir(exist_ok=True)
    text = f'[queue]\ndir = "{tmp_path / name}"\n{queue}\n' + SINK.format(port=port)
    if spool:
        text += SPOOL.format(path=tmp_path / "spool")
    return load_config(write_config(text, name=f"{name}.toml"))


def pg_queue(schema: PgSchema, node: str, role: str) -> str:
    return f'store = "postgresql"\ndsn = "{schema.dsn}"\nnode = "{node}"\nrole = "{role}"'


def leased_ever(schema: PgSchema) -> int:
    """Entries a node has leased (an owner or a fencing token taken)."""
    with psycopg.connect(schema.dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM mqd_entry WHERE owner IS NOT NULL OR token > 0"
        ).fetchone()
    return int(row[0]) if row else 0


def queued(schema: PgSchema) -> int:
    with psycopg.connect(schema.dsn) as conn:
        row = conn.execute("SELECT count(*) FROM mqd_entry").fetchone()
    return int(row[0]) if row else 0


async def test_an_intake_node_queues_and_a_delivery_node_delivers(
    write_config: Callable[..., Path],
    tmp_path: Path,
    schema: PgSchema,
    smtp_server,
    host: PluginHost,
) -> None:
    port = smtp_server.port
    intake_config = node_config(
        write_config, tmp_path, port, pg_queue(schema, "in-1", "intake"), spool=True
    )
    delivery_config = node_config(
        write_config, tmp_path, port, pg_queue(schema, "out-1", "delivery"), spool=False
    )
    assert delivery_config.spools == ()
    for n in range(10):
        drop(tmp_path / "spool", make_message(to=(f"r{n}@example.net",)))
    intake = Daemon(intake_config, host=host, shutdown_timeout=5)
    delivery = Daemon(delivery_config, host=host, shutdown_timeout=5)
    running = [asyncio.create_task(intake.run())]
    try:
        await wait_until(lambda: queued(schema) == 10, "the intake node to queue 10 messages")
        assert list((tmp_path / "spool").glob("*.eml")) == []
        status = (await intake.admin.status()).to_dict()
        assert status["role"] == "intake"
        assert any("node in-1, intake only" in line for line in render_status(status))
        assert intake.scheduler.passes == 0 and leased_ever(schema) == 0
        assert smtp_server.messages == []

        running.append(asyncio.create_task(delivery.run()))
        received = await asyncio.to_thread(smtp_server.wait_for, 10)
        assert sorted(r for m in received for r in m.rcpt_tos) == sorted(
            f"r{n}@example.net" for n in range(10)
        )
        await wait_until(lambda: queued(schema) == 0, "the delivered entries to leave")
        assert (await delivery.admin.status()).role == "delivery"
        # Mail dropped now is still the intake node's to take in, and the other's to deliver.
        drop(tmp_path / "spool", make_message(to=("late@example.net",)))
        more = await asyncio.to_thread(smtp_server.wait_for, 11)
        assert more[-1].rcpt_tos == ["late@example.net"]
        assert intake.scheduler.passes == 0
    finally:
        for daemon in (intake, *([delivery] if len(running) > 1 else [])):
            daemon.request_stop()
        await asyncio.gather(*running)


def test_an_intake_node_on_the_file_store_is_refused(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        node_config(write_config, tmp_path, 25, 'role = "intake"', spool=True)
    message = str(caught.value)
    assert "queue.role" in message and 'store = "postgresql"' in message
    assert "nothing would ever deliver" in message and 'role = "both"' in message


def test_a_delivery_node_with_intake_tables_is_refused(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    queue = 'store = "postgresql"\ndsn = "postgresql://mqd@db/mqd"\nnode = "out-1"\n'
    with pytest.raises(ConfigError) as caught:
        node_config(write_config, tmp_path, 25, queue + 'role = "delivery"', spool=True)
    message = str(caught.value)
    assert "queue.role" in message and "[[spool]]" in message and "never be read" in message
    both = node_config(write_config, tmp_path, 25, queue, spool=True)
    assert both.queue.role == "both" and both.queue.delivers
    with pytest.raises(ConfigError, match="role"):
        node_config(write_config, tmp_path, 25, queue + 'role = "sender"', spool=True)


def test_a_reload_keeps_the_role(write_config: Callable[..., Path], tmp_path: Path) -> None:
    from mqd.daemon.reload import _check_same_store

    queue = 'store = "postgresql"\ndsn = "postgresql://mqd@db/mqd"\nnode = "in-1"\n'
    intake = node_config(write_config, tmp_path, 25, queue + 'role = "intake"', spool=True)
    _check_same_store(intake, intake)
    with pytest.raises(ConfigError, match="role changes at a restart") as caught:
        _check_same_store(intake, node_config(write_config, tmp_path, 25, queue, spool=True))
    assert caught.value.key == "queue.role"


def test_a_delivery_node_says_its_role_and_sends_nothing_in(
    write_config: Callable[..., Path], tmp_path: Path, env: dict[str, str]
) -> None:
    from test_cli import mqd

    queue = 'store = "postgresql"\ndsn = "postgresql://mqd@db/mqd"\nnode = "out-1"\n'
    node_config(write_config, tmp_path, 25, queue + 'role = "delivery"', spool=False)
    path = str(tmp_path / "out-1.toml")
    checked = mqd("-c", path, "config", "check", env=env)
    assert checked.returncode == 0, checked.stderr
    assert 'role = "delivery"' in checked.stdout and 'node = "out-1"' in checked.stdout
    sending = mqd(
        "-c", path, "send", "--from", "app@example.com", "--to", "bob@example.net",
        stdin="Subject: hi\n\nhello\n", env=env,
    )  # fmt: skip
    assert sending.returncode != 0
    assert "queue.role" in sending.stderr and "send through an intake node" in sending.stderr


async def test_once_an_intake_node_queues_and_a_delivery_node_drains(
    write_config: Callable[..., Path],
    tmp_path: Path,
    schema: PgSchema,
    smtp_server,
    host: PluginHost,
) -> None:
    """``mqd run --once`` on each: the intake node exits once its spool is queued, the delivery
    node once nothing is due."""
    port = smtp_server.port
    intake = node_config(
        write_config, tmp_path, port, pg_queue(schema, "in-1", "intake"), spool=True
    )
    delivery = node_config(
        write_config, tmp_path, port, pg_queue(schema, "out-1", "delivery"), spool=False
    )
    for n in range(3):
        drop(tmp_path / "spool", make_message(to=(f"r{n}@example.net",)))
    await Daemon(intake, host=host, once=True, shutdown_timeout=5).run()
    assert queued(schema) == 3 and leased_ever(schema) == 0 and smtp_server.messages == []
    await Daemon(delivery, host=host, once=True, shutdown_timeout=5).run()
    assert queued(schema) == 0 and len(smtp_server.wait_for(3)) == 3
