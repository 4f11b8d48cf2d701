"""The RabbitMQ mailbox ([[mailbox]]) against the real broker on 127.0.0.1:5672 (guest/guest):
each test declares its own quorum queue with a dead-letter exchange and queue (uuid names) and
deletes them; the daemon runs in this process and relays to the memory relay.

Under CI=true these never skip (.ci/run starts RabbitMQ); otherwise they skip, saying why,
when the broker cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import subprocess
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import sourcerun
from amqpbroker import Broker, open_broker
from corehelpers import make_message

from mqd.admin.render import render_status
from mqd.admin.status import Status
from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.errors import ConfigError, MessageParseError
from mqd.events import Queued, Rejected
from mqd.intake.mailbox.envelope import submission_of
from mqd.intake.mailbox.source import MailboxSource
from mqd.plugins.host import PluginHost
from mqd.relays.memory import MemoryRelay
from mqd.testing.waiting import wait_until

MESSAGE = make_message(sender="app@news.example.com", to=("alice@example.net",))


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with open_broker() as broker:
        yield broker


@pytest.fixture
def mailbox_config(
    write_config: Callable[[str], Path],
    spool: Path,
    queue_dir: Path,
    broker: Broker,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Config]:
    monkeypatch.setenv("MQD_TEST_AMQP_PASSWORD", "guest")

    def make(extra: str = "") -> Config:
        text = f"""
            [queue]
            dir = "{queue_dir}"
            [[spool]]
            path = "{spool}"
            allowed_senders = ["*@example.com"]
            [relays.mem]
            plugin = "memory"
            [[mailbox]]
            url = "amqp://guest@127.0.0.1:5672/"
            password_env = "MQD_TEST_AMQP_PASSWORD"
            queue = "{broker.name}"
            relay = "mem"
            allowed_senders = ["*@news.example.com"]
            prefetch = 4
            reconnect_max = "1s"
        """
        return load_config(write_config(textwrap.dedent(text) + textwrap.dedent(extra)))

    return make


class Running(sourcerun.Running):
    @property
    def mailbox(self) -> MailboxSource:
        source = self.source
        assert isinstance(source, MailboxSource)
        return source

    @property
    def sent(self) -> list[Any]:
        return MemoryRelay.instances["mem"].sent


def running(config: Config, host: PluginHost) -> contextlib.AbstractAsyncContextManager[Running]:
    return sourcerun.running(config, host, Running)


async def until(condition: Callable[[], Any], timeout: float = 15) -> None:
    """Wait for ``condition`` (polled; a function or one returning an awaitable)."""
    await wait_until(condition, "the mailbox to get there", timeout)


async def test_a_published_message_is_relayed_and_acked(
    mailbox_config: Callable[..., Config], host: PluginHost, broker: Broker
) -> None:
    async with running(mailbox_config(), host) as mqd:
        await until(lambda: mqd.mailbox.connected)
        await broker.publish(MESSAGE)
        # The envelope from the AMQP headers: bob is a Bcc the application keeps to itself.
        await broker.publish(
            MESSAGE,
            headers={
                "x-mqd-from": "app@news.example.com",
                "x-mqd-to": ["alice@example.net", "bob@example.net"],
            },
        )
        await broker.publish(MESSAGE, headers={"x-mqd-to": "carol@example.net, dave@example.net"})
        await until(lambda: len(mqd.sent) == 3)
        envelopes = sorted((e.sender, tuple(e.recipients)) for e in mqd.sent)
        assert envelopes == [
            ("app@news.example.com", ("alice@example.net",)),
            ("app@news.example.com", ("alice@example.net", "bob@example.net")),
            ("app@news.example.com", ("carol@example.net", "dave@example.net")),
        ]
        await until(lambda: mqd.mailbox.accepted == 3)
        assert await broker.count() == 0
        queued = [e for e in mqd.events if isinstance(e, Queued)]
        assert {e.source for e in queued} == {"mailbox[0]"}


async def test_acked_only_once_durable(
    mailbox_config: Callable[..., Config], host: PluginHost, broker: Broker
) -> None:
    async with running(mailbox_config(), host) as mqd:
        store = mqd.daemon.store
        accept = store.accept
        attempts: list[int] = []

        async def full_disk(batch: Any) -> None:
            attempts.append(len(batch))
            raise OSError(28, "No space left on device")

        store.accept = full_disk  # type: ignore[method-assign]
        await until(lambda: mqd.mailbox.connected)
        await broker.publish(MESSAGE)
        await until(lambda: len(attempts) >= 1)
        # Nacked back to the queue, and the consumer pauses: it stays there, not acked.
        await until(lambda: _ready(broker, 1))
        first = len(attempts)
        assert mqd.sent == [] and mqd.mailbox.accepted == 0
        assert (await mqd.daemon.admin.status()).faults  # the store's fault is shown
        store.accept = accept  # type: ignore[method-assign]
        await until(lambda: len(mqd.sent) == 1 and mqd.mailbox.accepted == 1)
        assert first <= 2  # paused between tries, not a hot loop
        assert await broker.count() == 0


def _unacked(queue: str) -> int:
    """The deliveries of ``queue`` that a consumer holds, not acked (rabbitmqctl)."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    counts = dict(line.split("\t") for line in listed.splitlines() if "\t" in line)
    return int(counts[queue])


async def _unacked_is(queue: str, count: int) -> bool:
    return await asyncio.to_thread(_unacked, queue) == count


async def test_a_delivery_is_held_unacked_while_the_store_writes_it(
    mailbox_config: Callable[..., Config], host: PluginHost, broker: Broker
) -> None:
    async with running(mailbox_config(), host) as mqd:
        store = mqd.daemon.store
        accept = store.accept
        entered, release = asyncio.Event(), asyncio.Event()

        async def held_accept(batch: Any) -> Any:
            entered.set()
            await release.wait()
            return await accept(batch)

        store.accept = held_accept  # type: ignore[method-assign]
        await until(lambda: mqd.mailbox.connected)
        await broker.publish(MESSAGE)
        await asyncio.wait_for(entered.wait(), 10)
        # The broker's counts are statistics, refreshed every few seconds: polled.
        await until(lambda: _unacked_is(broker.name, 1), timeout=30)
        assert mqd.mailbox.accepted == 0 and not release.is_set()
        release.set()
        await until(lambda: mqd.mailbox.accepted == 1)
        await until(lambda: _unacked_is(broker.name, 0), timeout=30)
        assert await broker.count() == 0 and len(mqd.sent) <= 1


async def _ready(broker: Broker, count: int) -> bool:
    return await broker.count() == count


async def test_the_same_message_id_twice_is_queued_once(
    mailbox_config: Callable[..., Config], host: PluginHost, broker: Broker, queue_dir: Path
) -> None:
    config = mailbox_config()
    async with running(config, host) as mqd:
        await until(lambda: mqd.mailbox.connected)
        await broker.publish(MESSAGE, message_id="order-17")
        await until(lambda: mqd.mailbox.accepted == 1)
        await broker.publish(MESSAGE, message_id="order-17")
        await broker.publish(MESSAGE, message_id="order-18")
        await until(lambda: mqd.mailbox.accepted == 2 and mqd.mailbox.duplicates == 1)
        await until(lambda: len(mqd.sent) == 2)
        assert await broker.count() == 0
    # Remembered on disk: a daemon started again acks a redelivery and queues nothing.
    async with running(config, host) as mqd:
        await until(lambda: mqd.mailbox.connected)
        await broker.publish(MESSAGE, message_id="order-17")
        await until(lambda: mqd.mailbox.duplicates == 1)
        assert await broker.count() == 0
        assert mqd.mailbox.accepted == 0 and mqd.mailbox.refused == 0
        assert not [e for e in mqd.events if isinstance(e, Queued)]


async def test_malformed_and_refused_messages_are_dead_lettered(
    mailbox_config: Callable[..., Config], host: PluginHost, broker: Broker
) -> None:
    async with running(mailbox_config(), host) as mqd:
        await until(lambda: mqd.mailbox.connected)
        await broker.publish(b"\x00\x01 not a message", message_id="garbage")
        evil = make_message(sender="mallory@evil.test", to=("alice@example.net",))
        await broker.publish(evil, message_id="evil")
        await broker.publish(MESSAGE, message_id="bad-to", headers={"x-mqd-to": 7})
        await until(lambda: mqd.mailbox.refused == 3)
        await until(lambda: _dead_count(broker, 3))
        assert mqd.sent == [] and mqd.mailbox.accepted == 0
        assert await mqd.daemon.store.queued() == 0
        rejected = {e.file: e for e in mqd.events if isinstance(e, Rejected)}
        assert set(rejected) == {"garbage", "evil", "bad-to"}
        assert rejected["evil"].stage == "policy" and rejected["evil"].spool == "mailbox[0]"
        assert rejected["evil"].sender == "mallory@evil.test"
        assert rejected["garbage"].stage == "intake"
        assert "x-mqd-to" in rejected["bad-to"].reason
        dead = await broker.dead()
        assert sorted(m.message_id or "" for m in dead) == ["bad-to", "evil", "garbage"]


async def test_an_account_over_its_limit_with_refuse_is_dead_lettered(
    mailbox_config: Callable[..., Config], host: PluginHost, broker: Broker
) -> None:
    extra = """
        [[account]]
        name = "trial"
        senders = ["*@news.example.com"]
        max_per_minute = 1
        over_limit = "refuse"
    """
    async with running(mailbox_config(extra), host) as mqd:
        await until(lambda: mqd.mailbox.connected)
        await broker.publish(MESSAGE, message_id="first")
        await until(lambda: mqd.mailbox.accepted == 1)
        await broker.publish(MESSAGE, message_id="second")
        await until(lambda: _dead_count(broker, 1))
        [rejected] = [e for e in mqd.events if isinstance(e, Rejected)]
        assert rejected.stage == "limit" and rejected.file == "second"
        assert mqd.mailbox.refused == 1 and await broker.count() == 0


async def _dead_count(broker: Broker, count: int) -> bool:
    return await broker.count(broker.dlq) == count


def _close_connection(marker: str) -> None:
    """Close, from the broker's side, the connection whose name holds ``marker``."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    pids = [line.split("\t", 1)[0] for line in listed.splitlines() if marker in line]
    assert pids, f"no connection named {marker} in {listed}"
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "test: closed by the broker"],
            check=True,
            timeout=60,
            capture_output=True,
        )


async def test_a_dropped_connection_is_reconnected(
    mailbox_config: Callable[..., Config],
    host: PluginHost,
    broker: Broker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mqd.mailbox")
    async with running(mailbox_config(), host) as mqd:
        await until(lambda: mqd.mailbox.connected)
        await broker.publish(MESSAGE)
        await until(lambda: len(mqd.sent) == 1)
        await asyncio.to_thread(_close_connection, broker.name)
        await until(lambda: mqd.mailbox.broker.failures >= 1)
        await until(lambda: mqd.mailbox.connected, timeout=30)
        assert mqd.mailbox.last_error is None
        await broker.publish(MESSAGE)
        await until(lambda: len(mqd.sent) == 2 and mqd.mailbox.accepted == 2)
    # Said once that it is down, and once that it is back.
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "mqd.mailbox"]
    down = [m for level, m in said if level == logging.ERROR]
    back = [m for level, m in said if "resumed" in m]
    assert len(down) == 1 and "cannot consume" in down[0] and "closed by the broker" in down[0]
    assert len(back) == 1


async def test_a_reload_restarts_the_consumer_with_the_ids_it_remembered(
    mailbox_config: Callable[..., Config], host: PluginHost, broker: Broker
) -> None:
    config = mailbox_config()
    async with running(config, host) as mqd:
        await until(lambda: mqd.mailbox.connected)
        await broker.publish(MESSAGE, message_id="before")
        await until(lambda: mqd.mailbox.accepted == 1)
        old = mqd.mailbox
        assert config.source is not None
        config.source.write_text(config.source.read_text() + "heartbeat = 20\n")
        summary = await mqd.daemon.reload()
        assert "mailbox[0]" in summary
        assert mqd.mailbox is not old and old._task is None  # stopped, its deliveries answered
        await until(lambda: mqd.mailbox.connected)
        assert mqd.mailbox.settings.heartbeat == 20
        await broker.publish(MESSAGE, message_id="before")
        await broker.publish(MESSAGE, message_id="after")
        await until(lambda: mqd.mailbox.accepted == 1 and mqd.mailbox.duplicates == 1)
        assert len([e for e in mqd.events if isinstance(e, Queued)]) == 2
        await until(lambda: len(mqd.sent) == 1)  # the reloaded relay's: "after"


async def test_status_shows_the_mailbox(
    mailbox_config: Callable[..., Config], host: PluginHost, broker: Broker
) -> None:
    config = mailbox_config("[metrics]\nenabled = true\nport = 0\n")
    async with running(config, host) as mqd:
        await until(lambda: mqd.mailbox.connected)
        await broker.publish(MESSAGE)
        await broker.publish(make_message(sender="mallory@evil.test"))
        await until(lambda: mqd.mailbox.accepted == 1 and mqd.mailbox.refused == 1)
        status = await mqd.daemon.admin.status()
        [source] = status.sources
        assert source.name == "mailbox[0]" and source.kind == "mailbox"
        assert source.connected is True and source.last_error is None
        assert source.listening == [f"amqp://127.0.0.1:5672/ queue {broker.name}"]
        assert (source.accepted, source.refused) == (1, 1)
        assert Status.from_dict(status.to_dict()) == status
        text = "\n".join(render_status(status.to_dict()))
        assert f"mailbox[0]: amqp://127.0.0.1:5672/ queue {broker.name}; connected, " in text
        assert "1 accepted, 1 refused" in text
        assert mqd.daemon.metrics is not None
        scrape = (await mqd.daemon.servers.metrics.render()).decode()  # type: ignore[union-attr]
        assert 'mqd_source_connections{source="mailbox[0]"} 1.0' in scrape
        assert 'mqd_source_messages_total{outcome="accepted",source="mailbox[0]"} 1.0' in scrape


async def test_an_unreachable_broker_is_shown_and_retried(
    write_config: Callable[[str], Path],
    queue_dir: Path,
    spool: Path,
    host: PluginHost,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket_closed_port() as port:
        config = load_config(
            write_config(
                f"""
                [queue]
                dir = "{queue_dir}"
                [[spool]]
                path = "{spool}"
                allowed_senders = ["*@example.com"]
                [relays.mem]
                plugin = "memory"
                [[mailbox]]
                url = "amqp://guest@127.0.0.1:{port}/"
                queue = "mail"
                reconnect_max = "1s"
                """
            )
        )
        async with running(config, host) as mqd:
            await until(lambda: mqd.mailbox.broker.failures >= 2)
            [source] = (await mqd.daemon.admin.status()).sources
            assert source.connected is False and source.last_error
            text = "\n".join(render_status((await mqd.daemon.admin.status()).to_dict()))
            assert "NOT CONNECTED" in text and "last error:" in text
        errors = [
            r for r in caplog.records if r.name == "mqd.mailbox" and r.levelno >= logging.ERROR
        ]
        assert len(errors) == 1  # said once, not at every retry


async def test_a_queue_that_does_not_exist_yet_is_waited_for(
    write_config: Callable[[str], Path],
    queue_dir: Path,
    spool: Path,
    host: PluginHost,
    broker: Broker,
) -> None:
    name = f"{broker.name}.later"
    config = load_config(
        write_config(
            f"""
            [queue]
            dir = "{queue_dir}"
            [[spool]]
            path = "{spool}"
            allowed_senders = ["*@example.com"]
            [relays.mem]
            plugin = "memory"
            [[mailbox]]
            url = "amqp://guest@127.0.0.1/"
            password_file = "{write_config("guest", name="amqp-password")}"
            queue = "{name}"
            allowed_senders = ["*@news.example.com"]
            reconnect_max = "1s"
            """
        )
    )
    async with running(config, host) as mqd:
        await until(lambda: mqd.mailbox.broker.failures >= 1)
        assert "NOT_FOUND" in (mqd.mailbox.last_error or "")
        await broker.channel.declare_queue(name, durable=True)
        try:
            await until(lambda: mqd.mailbox.connected)
            await broker.channel.default_exchange.publish(
                aio_pika.Message(MESSAGE, message_id="late"), routing_key=name
            )
            await until(lambda: len(mqd.sent) == 1)
        finally:
            await broker.channel.queue_delete(name)


@contextlib.contextmanager
def socket_closed_port() -> Any:
    """A port on 127.0.0.1 nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield port


def test_a_password_in_the_url_is_refused(
    write_config: Callable[[str], Path], queue_dir: Path, spool: Path
) -> None:
    path = write_config(
        f"""
        [queue]
        dir = "{queue_dir}"
        [[spool]]
        path = "{spool}"
        [relays.mem]
        plugin = "memory"
        [[mailbox]]
        url = "amqp://guest:guest@127.0.0.1/"
        queue = "mail"
        """
    )
    config = load_config(path)
    with pytest.raises(ConfigError) as refused:
        MailboxSource(config.sources[0], config, None)  # type: ignore[arg-type]
    assert refused.value.key is not None and "url" in str(refused.value)
    assert "password_file" in str(refused.value) and "guest:guest" not in str(refused.value)


def test_the_envelope_from_amqp_headers_or_the_message() -> None:
    given = submission_of(
        MESSAGE,
        {"X-Mqd-From": b"<app@news.example.com>", "x-mqd-to": [b"a@x.test", "<b@x.test>"]},
        None,
    )
    assert (given.sender, given.recipients) == ("app@news.example.com", ("a@x.test", "b@x.test"))
    split = submission_of(MESSAGE, {"x-mqd-to": " a@x.test,b@x.test , "}, "app")
    assert (split.sender, split.recipients, split.peer) == (
        "app@news.example.com",  # the From header's
        ("a@x.test", "b@x.test"),
        "app",
    )
    read = submission_of(MESSAGE, {}, None)
    assert (read.sender, read.recipients) == ("app@news.example.com", ("alice@example.net",))
    for headers in ({"x-mqd-to": ""}, {"x-mqd-to": 7}, {"x-mqd-from": "a@x.test\r\nBcc: b"}):
        with pytest.raises(MessageParseError):
            submission_of(MESSAGE, headers, None)


def test_without_aio_pika_the_table_is_refused_saying_why(
    write_config: Callable[[str], Path],
    queue_dir: Path,
    spool: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = load_config(
        write_config(
            f"""
            [queue]
            dir = "{queue_dir}"
            [[spool]]
            path = "{spool}"
            [relays.mem]
            plugin = "memory"
            [[mailbox]]
            url = "amqp://guest@127.0.0.1/"
            queue = "mail"
            """
        )
    )
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "aio_pika" else find_spec(name, *a),
    )
    with pytest.raises(ConfigError) as refused:
        MailboxSource(config.sources[0], config, None)  # type: ignore[arg-type]
    assert refused.value.key == "mailbox[0]" and "aio-pika" in str(refused.value)
