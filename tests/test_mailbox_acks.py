"""The mailbox's acks (``mqd.intake.mailbox.acks``): the deliveries answered in one turn of the
event loop are acked by one ``basic.ack`` with ``multiple`` when every delivery up to the last
has been answered, alone otherwise; a ``multiple`` never covers a delivery still being handed
over, nor one the consumer never saw. Messages and channel are recorded stand-ins (the real
broker's side: tests/test_mailbox.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from mqd.intake.mailbox.acks import Acks


class Channel:
    def __init__(self) -> None:
        #: (what, delivery tag, multiple) in the order written.
        self.frames: list[tuple[str, int, bool]] = []
        self.broken = False


class Delivery:
    """What ``Acks`` uses of an aio-pika ``IncomingMessage``."""

    def __init__(self, channel: Channel, tag: int) -> None:
        self.channel = channel
        self.delivery_tag = tag

    async def ack(self, multiple: bool = False) -> None:
        if self.channel.broken:
            raise ConnectionError("the channel closed")
        self.channel.frames.append(("ack", self.delivery_tag, multiple))

    async def reject(self, requeue: bool = False) -> None:
        self.channel.frames.append(("reject", self.delivery_tag, False))


def deliveries(acks: Acks, channel: Channel, *tags: int) -> list[Any]:
    found = [Delivery(channel, tag) for tag in tags]
    for delivery in found:
        acks.received(cast(Any, delivery))
    return found


def settled(channel: Channel) -> set[int]:
    """The delivery tags the broker counts as answered after ``channel``'s frames."""
    done: set[int] = set()
    for what, tag, multiple in channel.frames:
        done |= set(range(1, tag + 1)) if multiple else {tag}
        assert what == "ack" or not multiple
    return done


async def test_the_deliveries_answered_together_are_acked_by_one_frame() -> None:
    channel, acks = Channel(), Acks()
    found = deliveries(acks, channel, 1, 2, 3, 4, 5)
    await asyncio.gather(*(acks.ack(d) for d in found))
    assert channel.frames == [("ack", 5, True)]
    assert (acks.frames, acks.acked) == (1, 5)


async def test_a_delivery_still_handed_over_holds_no_ack_back_and_is_never_covered() -> None:
    channel, acks = Channel(), Acks()
    first, *rest = deliveries(acks, channel, 1, 2, 3, 4)
    await asyncio.gather(*(acks.ack(d) for d in rest))
    assert sorted(channel.frames) == [("ack", 2, False), ("ack", 3, False), ("ack", 4, False)]
    assert 1 not in settled(channel)
    await acks.ack(first)
    assert channel.frames[-1] == ("ack", 1, False)
    # Then the next ones together again.
    more = deliveries(acks, channel, 5, 6, 7)
    await asyncio.gather(*(acks.ack(d) for d in more))
    assert channel.frames[-1] == ("ack", 7, True)
    assert settled(channel) == set(range(1, 8))


async def test_a_rejected_delivery_is_passed_by_a_multiple_ack() -> None:
    channel, acks = Channel(), Acks()
    one, two, three = deliveries(acks, channel, 1, 2, 3)
    await two.reject()
    acks.answered(two)
    await asyncio.gather(acks.ack(one), acks.ack(three))
    assert channel.frames == [("reject", 2, False), ("ack", 3, True)]


async def test_a_delivery_the_consumer_never_saw_is_never_acked() -> None:
    channel, acks = Channel(), Acks()
    found = deliveries(acks, channel, 1, 2, 4, 5)  # 3 never reached it
    await asyncio.gather(*(acks.ack(d) for d in found))
    assert acks.gapped and 3 not in settled(channel)
    assert sorted(channel.frames) == [("ack", t, False) for t in (1, 2, 4, 5)]


async def test_each_ack_waits_for_its_frame_and_raises_when_it_fails() -> None:
    channel, acks = Channel(), Acks()
    found = deliveries(acks, channel, 1, 2, 3)
    channel.broken = True
    outcomes = await asyncio.gather(*(acks.ack(d) for d in found), return_exceptions=True)
    assert [type(o) for o in outcomes] == [ConnectionError] * 3
    assert channel.frames == []


@pytest.mark.parametrize("order", [[3, 1, 2], [2, 3, 1], [1, 3, 2]])
async def test_answered_in_any_order_each_is_acked_once_and_nothing_else(order: list[int]) -> None:
    channel, acks = Channel(), Acks()
    found = {d.delivery_tag: d for d in deliveries(acks, channel, 1, 2, 3, 4)}
    for tag in order:  # a turn of the loop each
        await acks.ack(found[tag])
        assert settled(channel) <= set(order[: order.index(tag) + 1])
    assert settled(channel) == {1, 2, 3}
    assert 4 not in settled(channel)
