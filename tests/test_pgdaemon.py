"""The daemon on the PostgreSQL store: spool -> a node on a shared queue -> a real SMTP server,
the queue's config keys, ``mqd db``, and ``mqd run`` when the database is out of reach."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from corehelpers import drop, make_message, run_once
from pgfixtures import PgSchema, require_postgresql
from test_cli import mqd

from mqd.config.schema import Config
from mqd.errors import ConfigError
from mqd.exitcodes import ExitCode
from mqd.plugins.host import PluginHost
from mqd.queue.postgresql.connect import Database
from mqd.queue.postgresql.schema import SCHEMA_VERSION
from mqd.queue.postgresql.store import PostgresStore


@pytest.fixture
def pg_config(sink_config: Callable[..., Config], schema: PgSchema) -> Config:
    """``plain_config``'s spool and relay, the queue in ``schema``."""
    return sink_config(
        queue=f"""
        store = "postgresql"
        dsn = "{schema.dsn}"
        node = "test-node"
        bounce_sender = "mailer-daemon@mqd.test"
        scan_interval = "1s"
        retry = {{ initial = "1s", max = "2s", lifetime = "1h" }}
        """,
        relay="""
        connect_timeout = "5s"
        command_timeout = "5s"
        data_timeout = "5s"
        """,
    )


async def looked_at(schema: PgSchema) -> tuple[int, int]:
    """(queued, failed) in ``schema``, as another node sees them."""
    store = PostgresStore(Database(schema.dsn), node="observer")
    await store.open()
    try:
        return await store.queued(), await store.failed.count()
    finally:
        await store.close()


async def test_a_daemon_on_postgresql_delivers_the_spool_and_bounces(
    pg_config: Config, host: PluginHost, spool: Path, smtp_server, schema: PgSchema
) -> None:
    drop(spool, make_message(to=("alice@example.net",)))
    drop(spool, make_message(to=("perm-bob@example.net", "carol@example.net")))
    daemon = await run_once(pg_config, host)
    assert daemon.store.node == "test-node"
    received = smtp_server.wait_for(3)
    rcpts = sorted(r for message in received for r in message.rcpt_tos)
    assert rcpts == ["alice@example.net", "app@example.com", "carol@example.net"]
    [bounce] = [m for m in received if m.mail_from == "<>"]
    assert b"perm-bob@example.net" in bounce.data
    assert list(spool.glob("*.eml")) == []
    assert await looked_at(schema) == (0, 1)  # delivered and gone; the failure in the folder


async def test_the_failed_folder_commands_work_on_the_database(
    pg_config: Config, host: PluginHost, spool: Path, smtp_server, tmp_path: Path, env
) -> None:
    drop(spool, make_message(to=("perm-bob@example.net",)))
    await run_once(pg_config, host)
    smtp_server.wait_for(1)  # the bounce
    config = str(tmp_path / "mqd.toml")  # what sink_config wrote
    listed = mqd("-c", config, "failed", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    [failed] = json.loads(listed.stdout)
    assert failed["stage"] == "delivery" and failed["message_path"].startswith("postgresql:")
    retried = mqd("-c", config, "failed", "retry", failed["id"], env=env)
    assert retried.returncode == 0, retried.stderr
    [again] = spool.glob("*.eml")  # back in the spool, for the failed recipient only
    assert b"X-Receiver: <perm-bob@example.net>" in again.read_bytes()
    assert json.loads(mqd("-c", config, "failed", "list", "--json", env=env).stdout) == []


async def test_a_transient_failure_stays_queued_in_the_database(
    pg_config: Config, host: PluginHost, spool: Path, smtp_server, schema: PgSchema
) -> None:
    drop(spool, make_message(to=("temp-alice@example.net",)))
    await run_once(pg_config, host)
    assert await looked_at(schema) == (1, 0)


# -- the config ------------------------------------------------------------------------------------


def test_the_password_file_follows_the_secret_rules(
    sink_config: Callable[..., Config], tmp_path: Path
) -> None:
    (tmp_path / "db-pw").write_text("s3cret\n")
    (tmp_path / "db-pw").chmod(0o644)
    queue = "\n".join(
        [
            'store = "postgresql"',
            'dsn = "postgresql://mqd@db/mqd"',
            f'password_file = "{tmp_path}/db-pw"',
        ]
    )
    with pytest.raises(ConfigError, match="too open") as caught:
        sink_config(queue=queue)
    assert caught.value.key == "queue.password_file"
    (tmp_path / "db-pw").chmod(0o600)
    database = sink_config(queue=queue).queue.database
    assert database is not None and database.password is not None
    assert database.password.reveal() == "s3cret"


@pytest.mark.parametrize(
    ("lines", "key", "fragment"),
    [
        ('store = "postgresql"', "queue.dsn", "is required"),
        ('store = "postgres"', "queue.store", "must be one of"),
        ('store = "postgresql"\ndsn = "postgresql://mqd:pw@db/mqd"', "queue.dsn", "password_file"),
        ('store = "postgresql"\ndsn = "host=db password=pw"', "queue.dsn", "password_file"),
        ('store = "postgresql"\ndsn = "db.example.com"', "queue.dsn", "connection string"),
        ('store = "postgresql"\ndsn = "postgresql://db/mqd"\nnode = "a b"', "queue.node", "web-1"),
        ('dsn = "postgresql://db/mqd"', "queue.dsn", 'store = "postgresql" only'),
    ],
)
def test_bad_store_keys_name_the_key(
    sink_config: Callable[..., Config], lines: str, key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        sink_config(queue=lines)
    problems = getattr(caught.value, "errors", [caught.value])
    assert any(p.key == key and fragment in p.message for p in problems), problems


def test_the_node_defaults_to_the_host_name(sink_config: Callable[..., Config]) -> None:
    from mqd.config.hostname import local_hostname

    config = sink_config(queue='store = "postgresql"\ndsn = "postgresql://db/mqd"')
    assert config.queue.store == "postgresql"
    assert config.queue.database is not None and config.queue.database.node == local_hostname()


def test_workers_on_postgresql_are_nodes_whose_limits_the_fleet_counts(
    sink_config: Callable[..., Config],
) -> None:
    config = sink_config(
        queue='store = "postgresql"\ndsn = "postgresql://db/mqd"\nworkers = 2',
        relay="max_per_hour = 1",  # a file store's 2 workers could not share 1 a hour
    )
    assert config.queue.workers == 2 and config.queue.limit_shares == 1
    assert config.relays["sink"].quota.max_per_hour == 1
    with pytest.raises(ConfigError, match=r"cannot be shared between queue\.workers"):
        sink_config(queue="workers = 2", relay="max_per_hour = 1")


# -- the commands ----------------------------------------------------------------------------------


def test_db_upgrade_and_check(write_config, spool: Path, queue_dir: Path, env) -> None:
    require_postgresql()
    bare = PgSchema(upgraded=False)
    try:
        config = write_config(
            f"""
            [queue]
            dir = "{queue_dir}"
            store = "postgresql"
            dsn = "{bare.dsn}"
            [[spool]]
            path = "{spool}"
            allowed_senders = ["*@example.com"]
            [relays.sink]
            plugin = "smtp"
            host = "127.0.0.1"
            security = "none"
            """
        )
        checked = mqd("-c", str(config), "db", "check", env=env)
        assert checked.returncode == ExitCode.CONFIG, checked.stderr
        assert "run 'mqd db upgrade'" in checked.stderr
        upgraded = mqd("-c", str(config), "db", "upgrade", env=env)
        assert upgraded.returncode == 0, upgraded.stderr
        assert f"from version 0 to {SCHEMA_VERSION}" in upgraded.stdout
        again = mqd("-c", str(config), "db", "upgrade", env=env)
        assert "nothing to do" in again.stdout
        checked = mqd("-c", str(config), "db", "check", env=env)
        assert checked.returncode == 0 and f"schema version {SCHEMA_VERSION}" in checked.stdout
        printed = mqd("db", "upgrade", "--sql", env=env)
        assert printed.returncode == 0 and "CREATE TABLE mqd_entry" in printed.stdout
    finally:
        bare.drop()


def test_mqd_run_names_an_unreachable_database_and_exits_75(
    write_config, spool: Path, queue_dir: Path, env, tmp_path: Path
) -> None:
    (tmp_path / "db-pw").write_text("s3cret-pw\n")
    (tmp_path / "db-pw").chmod(0o600)
    config = write_config(
        f"""
        [queue]
        dir = "{queue_dir}"
        store = "postgresql"
        dsn = "postgresql://mqd@127.0.0.1:1/mqd"
        password_file = "{tmp_path / "db-pw"}"
        [[spool]]
        path = "{spool}"
        allowed_senders = ["*@example.com"]
        [relays.sink]
        plugin = "smtp"
        host = "127.0.0.1"
        security = "none"
        """
    )
    result = mqd("-c", str(config), "run", env=env, timeout=60)
    assert result.returncode == ExitCode.TEMPFAIL, result.stderr
    assert "cannot reach the queue database postgresql://mqd@127.0.0.1:1/mqd" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_a_reload_keeps_the_queue_it_runs_on(sink_config: Callable[..., Config]) -> None:
    from mqd.daemon.reload import _check_same_store

    on = sink_config(queue='store = "postgresql"\ndsn = "postgresql://db/mqd"\nnode = "n1"')
    _check_same_store(on, sink_config(queue=on_lines("n1") + "\nconcurrency = 5"))
    for other in (on_lines("n2"), 'store = "file"'):
        with pytest.raises(ConfigError, match="needs a restart") as caught:
            _check_same_store(on, sink_config(queue=other))
        assert caught.value.key == "queue.store"


def on_lines(node: str) -> str:
    return f'store = "postgresql"\ndsn = "postgresql://db/mqd"\nnode = "{node}"'


async def test_two_daemons_on_one_queue_deliver_each_message_once(
    write_config, tmp_path: Path, schema: PgSchema, smtp_server, host: PluginHost
) -> None:
    import asyncio

    from mqd.config.load import load_config
    from mqd.daemon.root import Daemon

    configs = []
    for node in ("node-a", "node-b"):
        (tmp_path / node / "spool").mkdir(parents=True)
        text = f"""
            [queue]
            dir = "{tmp_path / node / "queue"}"
            store = "postgresql"
            dsn = "{schema.dsn}"
            node = "{node}"
            concurrency = 4
            [[spool]]
            path = "{tmp_path / node / "spool"}"
            relay = "sink"
            allowed_senders = ["app@example.com"]
            [relays.sink]
            plugin = "smtp"
            host = "127.0.0.1"
            port = {smtp_server.port}
            security = "none"
            """
        configs.append(load_config(write_config(text, name=f"{node}.toml")))
    for config in configs:
        for n in range(15):
            drop(config.spools[0].path, make_message(to=(f"r{n}@example.net",)))
    daemons = [Daemon(config, host=host, once=True, shutdown_timeout=5) for config in configs]
    await asyncio.gather(*(daemon.run() for daemon in daemons))
    received = smtp_server.wait_for(30)
    ids = [m.data.split(b"Message-ID: ")[1].split(b"\r\n")[0] for m in received]
    assert len(set(ids)) == 30 and len(received) == 30  # every message, each once
    assert await looked_at(schema) == (0, 0)


async def test_a_daemon_on_postgresql_counts_for_the_fleet_and_suppresses_for_it(
    sink_config: Callable[..., Config], host: PluginHost, spool: Path, smtp_server, schema
) -> None:
    config = sink_config(
        queue=f"""
        store = "postgresql"
        dsn = "{schema.dsn}"
        node = "test-node"
        bounce_sender = "mailer-daemon@mqd.test"
        """,
        relay="max_per_hour = 100",
    )
    drop(spool, make_message(to=("alice@example.net",)))
    drop(spool, make_message(to=("perm-bob@example.net",)))
    await run_once(config, host)
    smtp_server.wait_for(2)  # alice's and the bounce (perm-bob is refused at RCPT)
    with psycopg.connect(schema.dsn) as conn:
        [(sent,)] = conn.execute(
            "SELECT sum(n) FROM mqd_quota_count WHERE key = 'relay:sink'"
        ).fetchall()
        suppressed = conn.execute("SELECT address, kind FROM mqd_suppression").fetchall()
        nodes = conn.execute("SELECT node FROM mqd_node").fetchall()
    assert sent == 3  # the relay's three sends, the unused reservation given back at the stop
    assert suppressed == [("perm-bob@example.net", "bounce")]  # the fleet's list, at the stop
    assert nodes == []  # a stopped node is no longer counted for the per-second rates
