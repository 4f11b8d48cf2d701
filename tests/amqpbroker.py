"""A queue of its own on the RabbitMQ of 127.0.0.1:5672 (guest/guest) for a test: a quorum
queue dead-lettering to a queue of its own, deleted after. Under CI=true it never skips;
otherwise it skips, saying why, when the broker cannot be reached."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

__all__ = ["URL", "Broker", "open_broker"]

URL = "amqp://guest:guest@127.0.0.1:5672/"


class Broker:
    """A queue of its own (quorum, dead-lettering to ``dlq``) on the test's channel."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, name: str) -> None:
        self.channel = channel
        self.name = name
        self.dlx = f"{name}.dlx"
        self.dlq = f"{name}.dlq"

    async def publish(
        self, body: bytes, *, message_id: str | None = None, headers: dict[str, Any] | None = None
    ) -> None:
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id or uuid.uuid4().hex,
            headers=headers or {},
        )
        await self.channel.default_exchange.publish(message, routing_key=self.name)

    async def count(self, queue: str | None = None) -> int:
        """The messages ready in ``queue`` (passive declare; unacked ones are not counted)."""
        declared = await self.channel.declare_queue(queue or self.name, passive=True)
        count = declared.declaration_result.message_count
        assert count is not None
        return count

    async def dead(self) -> list[aio_pika.abc.AbstractIncomingMessage]:
        queue = await self.channel.get_queue(self.dlq)
        found = []
        while (message := await queue.get(fail=False)) is not None:
            await message.ack()
            found.append(message)
        return found


@contextlib.asynccontextmanager
async def open_broker() -> AsyncIterator[Broker]:
    try:
        connection = await aio_pika.connect(URL, timeout=5)
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"RabbitMQ is not reachable on 127.0.0.1:5672 ({exc})")
    name = f"mqd-test-{uuid.uuid4().hex}"
    async with connection:
        channel = await connection.channel()
        broker = Broker(channel, name)
        dlx = await channel.declare_exchange(broker.dlx, aio_pika.ExchangeType.FANOUT)
        dlq = await channel.declare_queue(broker.dlq)
        await dlq.bind(dlx)
        await channel.declare_queue(
            name,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-dead-letter-exchange": broker.dlx},
        )
        try:
            yield broker
        finally:
            await channel.queue_delete(name)
            await channel.queue_delete(broker.dlq)
            await channel.exchange_delete(broker.dlx)
