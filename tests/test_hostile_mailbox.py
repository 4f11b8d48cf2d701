"""Hostile input through the RabbitMQ mailbox ([[mailbox]]): the real broker on 127.0.0.1:5672,
a queue of its own dead-lettering to a queue of its own (tests/amqpbroker.py), a real daemon in
this process, and the in-test SMTP sink as the relay's peer. Each case asserts the answer (the
delivery dead-lettered, with its reason in a ``rejected`` event) and that nothing from a sender
that is not allowed reaches the sink: an allowed message published last arrives alone.

Envelope headers of the wrong AMQP type, given twice, or holding line breaks; address tricks and
header spoofs; envelope lines in the body; a message_id reused for another message. The SMTP
path: tests/test_hostile_smtpd.py; HTTP: tests/test_hostile_submit.py.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from amqpbroker import Broker, open_broker
from corehelpers import make_message
from smtpserver import SMTPPeer
from sourcerun import Running, running, sink_holds_only

from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.plugins.host import PluginHost
from mqd.testing import wait_until

SENDER = "app@news.example.com"
MESSAGE = make_message(sender=SENDER, to=("alice@example.net",))


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with open_broker() as broker:
        yield broker


@pytest.fixture
def config(
    write_config: Callable[[str], Path],
    spool: Path,
    queue_dir: Path,
    broker: Broker,
    smtp_server: SMTPPeer,
    monkeypatch: pytest.MonkeyPatch,
) -> Config:
    monkeypatch.setenv("MQD_TEST_AMQP_PASSWORD", "guest")
    text = f"""
        [queue]
        dir = "{queue_dir}"
        max_message_size = "16KB"
        [[spool]]
        path = "{spool}"
        allowed_senders = ["*@example.com"]
        [relays.sink]
        plugin = "smtp"
        host = "127.0.0.1"
        port = {smtp_server.port}
        security = "none"
        [[mailbox]]
        url = "amqp://guest@127.0.0.1:5672/"
        password_env = "MQD_TEST_AMQP_PASSWORD"
        queue = "{broker.name}"
        relay = "sink"
        allowed_senders = ["*@news.example.com", "sales@shop.example"]
        reconnect_max = "1s"
    """
    return load_config(write_config(textwrap.dedent(text)))


@pytest.fixture
async def mqd(config: Config, host: PluginHost) -> AsyncIterator[Running]:
    async with running(config, host) as daemon:
        await wait_until(lambda: daemon.source.status().connected, "the mailbox connected", 15)
        yield daemon


async def refused_then_only_allowed(
    mqd: Running, broker: Broker, sink: SMTPPeer, refused: int
) -> list[str]:
    """Wait for ``refused`` deliveries in the dead-letter queue, publish an allowed message,
    and check it arrives alone. The rejected events' reasons, in order."""

    async def dead() -> bool:
        return await broker.count(broker.dlq) == refused

    await wait_until(dead, f"{refused} deliveries dead-lettered", 15)
    await broker.publish(MESSAGE, message_id="canary")
    await sink_holds_only(mqd, sink, {SENDER}, 1)
    assert mqd.source.status().refused == refused
    assert await broker.count() == 0
    return [e.reason for e in mqd.rejected]


#: AMQP envelope headers of a type that is not text (or a list of text), or text that is not
#: an address, and a word of the reason each is dead-lettered with.
WRONG_ENVELOPES = [
    ({"x-mqd-from": 7}, "not text"),
    ({"x-mqd-from": ["app@news.example.com"]}, "not text"),
    ({"x-mqd-from": {"a": "app@news.example.com"}}, "not text"),
    ({"x-mqd-from": True}, "not text"),
    ({"x-mqd-from": decimal.Decimal("1.5")}, "not text"),
    ({"x-mqd-from": datetime.datetime(2026, 1, 1)}, "not text"),
    ({"x-mqd-from": bytearray(b"\xff\xfeapp@news.example.com")}, "not text"),  # AMQP bytes
    ({"x-mqd-from": "app@news.example.com\r\nx-mqd-to: victim@evil.test"}, "line break"),
    ({"x-mqd-from": "app@news.example.com\x00"}, "line break or NUL"),
    ({"x-mqd-to": 7}, "not text"),
    ({"x-mqd-to": [7]}, "not text"),
    ({"x-mqd-to": [["alice@example.net"]]}, "not text"),
    ({"x-mqd-to": {"to": "alice@example.net"}}, "not text"),
    ({"x-mqd-to": ""}, "names no recipient"),
    ({"x-mqd-to": []}, "names no recipient"),
    ({"x-mqd-to": "alice@example.net\r\nvictim@evil.test"}, "line break"),
    ({"x-mqd-from": "app@news.example.com", "X-MQD-FROM": "evil@evil.test"}, "twice"),
    ({"x-mqd-to": "alice@example.net", "X-Mqd-To": "victim@evil.test"}, "twice"),
]


@pytest.mark.parametrize(("headers", "reason"), WRONG_ENVELOPES, ids=repr)
async def test_envelope_headers_of_the_wrong_type_are_dead_lettered(
    mqd: Running, broker: Broker, smtp_server: SMTPPeer, headers: dict[str, Any], reason: str
) -> None:
    await broker.publish(MESSAGE, message_id="wrong", headers=headers)
    [why] = await refused_then_only_allowed(mqd, broker, smtp_server, 1)
    assert reason in why, why
    [rejected] = mqd.rejected
    assert (rejected.stage, rejected.file, rejected.spool) == ("intake", "wrong", "mailbox[0]")


#: (AMQP headers, the message): a sender the lists do not allow, in the envelope or in the
#: headers recipients read, and the stage that refuses it.
SPOOFS = [
    ({"x-mqd-from": "evil@evil.test"}, MESSAGE, "policy"),
    ({"x-mqd-from": SENDER}, make_message(sender="ceo@evil.test"), "policy"),
    ({}, make_message(sender=f'"{SENDER}" <ceo@evil.test>'), "policy"),
    ({}, make_message(sender=SENDER, extra_headers=("From: ceo@evil.test",)), "intake"),
    ({"x-mqd-from": SENDER}, make_message(extra_headers=("From: ceo@evil.test",)), "intake"),
    ({}, make_message(sender=SENDER, envelope=("evil@evil.test", ("a@example.net",))), "policy"),
    ({}, make_message(sender=SENDER, extra_headers=("Sender: ceo@evil.test",)), "policy"),
    ({"x-mqd-from": "<@news.example.com:evil@evil.test>"}, MESSAGE, "intake"),
    ({"x-mqd-from": '"app@news.example.com"@evil.test'}, MESSAGE, "policy"),
    ({"x-mqd-from": "app%news.example.com@evil.test"}, MESSAGE, "policy"),
    ({"x-mqd-from": "app@evil.test@news.example.com"}, MESSAGE, "intake"),
    ({"x-mqd-from": "\u017fales@shop.example"}, MESSAGE, "policy"),
    ({"x-mqd-from": "app@news.ex\u0430mple.com"}, MESSAGE, "policy"),
    ({"x-mqd-from": "app\u200b@news.example.com"}, MESSAGE, "intake"),
    ({"x-mqd-from": "<>"}, MESSAGE, "intake"),  # the null sender: never a producer's
    ({"x-mqd-from": ""}, MESSAGE, "intake"),
    ({}, make_message(body="x" * 20_000), "intake"),  # over queue.max_message_size
]


@pytest.mark.parametrize(("headers", "message", "stage"), SPOOFS, ids=repr)
async def test_a_sender_not_allowed_is_dead_lettered_and_never_relayed(
    mqd: Running,
    broker: Broker,
    smtp_server: SMTPPeer,
    headers: dict[str, Any],
    message: bytes,
    stage: str,
) -> None:
    await broker.publish(message, message_id="spoof", headers=headers)
    [why] = await refused_then_only_allowed(mqd, broker, smtp_server, 1)
    [rejected] = mqd.rejected
    assert rejected.stage == stage, why
    [dead] = await broker.dead()
    assert dead.message_id == "spoof" and dead.body == message  # kept whole for the operator
    death = dead.headers["x-death"]
    assert isinstance(death, list) and death[0]["reason"] == "rejected"


async def test_envelope_lines_in_the_body_never_change_the_envelope(
    mqd: Running, broker: Broker, smtp_server: SMTPPeer
) -> None:
    """With the envelope in AMQP headers, the body's leading X-Sender / X-Receiver lines are
    dropped, and nobody they name gets anything."""
    body = make_message(sender=SENDER, envelope=("evil@evil.test", ("victim@evil.test",)))
    headers = {"x-mqd-from": SENDER, "x-mqd-to": ["alice@example.net"]}
    await broker.publish(body, message_id="lines", headers=headers)
    await sink_holds_only(mqd, smtp_server, {SENDER}, 1)
    [received] = smtp_server.messages
    assert received.rcpt_tos == ["alice@example.net"]
    assert b"evil.test" not in received.data


async def test_a_message_id_reused_for_another_message_is_dead_lettered(
    mqd: Running, broker: Broker, smtp_server: SMTPPeer
) -> None:
    """The same message_id again with the same message is a redelivery (acked, nothing
    queued); with another message it is not, and acking it would lose that message: it is
    dead-lettered saying why, as the submit API refuses a reused Idempotency-Key (422)."""
    await broker.publish(MESSAGE, message_id="order-17")
    await asyncio.to_thread(smtp_server.wait_for, 1)
    await broker.publish(MESSAGE, message_id="order-17")  # a redelivery
    other = make_message(sender=SENDER, to=("bob@example.net",), subject="another")
    await broker.publish(other, message_id="order-17")
    await wait_until(lambda: mqd.source.status().refused == 1, "the reused id refused", 15)

    async def dead_lettered() -> bool:
        return await broker.count(broker.dlq) == 1

    await wait_until(dead_lettered, "the reused id dead-lettered", 15)
    [dead] = await broker.dead()
    assert dead.body == other
    assert "order-17" in mqd.rejected[0].reason
    await mqd.drained()
    assert [m.rcpt_tos for m in smtp_server.messages] == [["alice@example.net"]]
