"""A channel's acks, several deliveries in one ``basic.ack`` (``multiple=True``).

A delivery that is durable (or a redelivery of one) is not acked on its own: the acks go out
in delivery order, one ``multiple`` ack for the longest run of answered deliveries since the
last, so a window of deliveries handed over in one batch costs one frame rather than a frame
each. An ack with ``multiple`` covers every delivery of the channel up to its tag: it is sent
only once each of them is durable here or was answered on its own (rejected, nacked back), so
it never acks a delivery that is not queued. A delivery tag is the channel's count of its
deliveries (AMQP 0-9-1: from 1, one more for each), which is what makes the run checkable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage

__all__ = ["Acks"]


class Acks:
    """The acks of one channel's deliveries (a new channel, after a reconnect, has its own)."""

    def __init__(self) -> None:
        #: Every delivery up to this tag is answered (acked, or rejected / nacked alone).
        self.answered_to = 0
        #: Answered deliveries after it, in no order yet: the message to ack, or None for one
        #: answered on its own.
        self._finished: dict[int, AbstractIncomingMessage | None] = {}

    @property
    def waiting(self) -> int:
        """Durable deliveries not acked yet: an earlier one is still being handed over."""
        return sum(1 for message in self._finished.values() if message is not None)

    def answered(self, message: AbstractIncomingMessage) -> bool:
        """Whether ``message`` was given to ``durable`` or ``answered_alone``."""
        tag = _tag(message)
        return tag <= self.answered_to or tag in self._finished

    async def durable(self, message: AbstractIncomingMessage) -> None:
        """``message`` may be acked: acks it with every delivery before it that may, when
        none of those is still being handed over. Raises what the ack raises (the connection
        lost: the broker delivers them all again)."""
        self._finished[_tag(message)] = message
        await self._flush()

    async def answered_alone(self, message: AbstractIncomingMessage) -> None:
        """``message`` was rejected or nacked on its own: the deliveries after it that wait
        for it may go."""
        self._finished[_tag(message)] = None
        await self._flush()

    async def _flush(self) -> None:
        last: AbstractIncomingMessage | None = None
        tag = self.answered_to + 1
        while tag in self._finished:
            message = self._finished.pop(tag)
            if message is not None:
                last = message
            self.answered_to = tag
            tag += 1
        if last is not None:
            await last.ack(multiple=True)


def _tag(message: AbstractIncomingMessage) -> int:
    tag = message.delivery_tag
    if tag is None:  # only with no_ack, which the mailbox never consumes with
        raise ValueError("a delivery without a delivery tag cannot be acked")
    return tag
