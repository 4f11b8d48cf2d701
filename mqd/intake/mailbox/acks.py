"""The acks of one AMQP channel's deliveries, sent together.

The deliveries a store batch made durable are answered in the same turn of the event loop:
their acks go as one ``basic.ack`` with ``multiple`` set, carrying the highest delivery tag, when
every delivery up to it has been answered (acked now, or rejected or nacked already, which
``multiple`` leaves as they are). An ack whose earlier deliveries are still being handed over
goes alone, so a slow one holds up no other's. Each ``ack`` returns once its ack is written, as
``IncomingMessage.ack`` does, or raises as it would.

A channel numbers its deliveries 1, 2, 3 ...: one that never reached the consumer (a gap in the
tags) would be acked by a ``multiple`` above it without being queued, so after a gap every ack
goes alone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage

__all__ = ["Acks"]

log = logging.getLogger("mqd.mailbox")

#: A delivery to ack: its tag, itself, and what its ``ack`` waits on.
_Ready = tuple[int, "AbstractIncomingMessage", asyncio.Future[None]]


class Acks:
    """One channel's deliveries under way, and the acks waiting for this turn of the loop."""

    def __init__(self) -> None:
        #: Delivery tags received and not answered yet, in order (a dict keeps it).
        self._open: dict[int, None] = {}
        #: Deliveries to ack at the end of this turn of the loop, by tag.
        self._ready: dict[int, _Ready] = {}
        self._last = 0
        #: A delivery tag was skipped: no ``multiple`` ack is sent on this channel any more.
        self.gapped = False
        self._flushing = False
        self._sending: set[asyncio.Task[None]] = set()
        #: ``basic.ack`` frames sent, and deliveries acked by them.
        self.frames = 0
        self.acked = 0

    def received(self, message: AbstractIncomingMessage) -> None:
        """A delivery reached the consumer: it holds ``multiple`` acks below it back."""
        tag = message.delivery_tag
        if tag is None:
            return
        if tag != self._last + 1 and not self.gapped:
            self.gapped = True
            log.debug("delivery tag %d after %d: acks go one at a time", tag, self._last)
        self._last = max(self._last, tag)
        self._open[tag] = None

    def answered(self, message: AbstractIncomingMessage) -> None:
        """The delivery was rejected or nacked (its frame written): ``multiple`` may pass it."""
        if message.delivery_tag is not None:
            self._open.pop(message.delivery_tag, None)

    async def ack(self, message: AbstractIncomingMessage) -> None:
        """Ack ``message`` with the others of this turn of the loop (see the module)."""
        tag = message.delivery_tag
        if tag is None or tag not in self._open:  # (not received here: alone, as it was)
            await message.ack()
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._ready[tag] = (tag, message, done)
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)  # after the other deliveries answered this turn
        await done

    def _flush(self) -> None:
        self._flushing = False
        first: list[_Ready] = []
        if not self.gapped:
            for tag in self._open:
                if tag not in self._ready:
                    break
                first.append(self._ready.pop(tag))
        alone = list(self._ready.values())
        self._ready.clear()
        for tag, _, _ in first + alone:
            del self._open[tag]
        for group in ([first] if first else []) + [[one] for one in alone]:
            task = asyncio.ensure_future(self._send(group))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, group: list[_Ready]) -> None:
        _, last, _ = group[-1]
        try:
            await last.ack(multiple=len(group) > 1)
        except Exception as exc:  # each waiter says it: the broker delivers them again
            for _, _, done in group:
                if not done.done():
                    done.set_exception(exc)
            return
        self.frames += 1
        self.acked += len(group)
        for _, _, done in group:
            if not done.done():
                done.set_result(None)
