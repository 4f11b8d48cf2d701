"""The mailbox's acks: several deliveries in one ``multiple`` ack, in delivery order, never
past a delivery that is still being handed over."""

from __future__ import annotations

from typing import Any, cast

from mqd.intake.mailbox.acks import Acks


class Delivery:
    def __init__(self, tag: int, sent: list[tuple[int, bool]]) -> None:
        self.delivery_tag = tag
        self.sent = sent

    async def ack(self, multiple: bool = False) -> None:
        self.sent.append((self.delivery_tag, multiple))


async def test_acks_go_in_runs_and_never_past_one_under_way() -> None:
    sent: list[tuple[int, bool]] = []
    acks = Acks()
    d = {tag: cast(Any, Delivery(tag, sent)) for tag in range(1, 9)}
    await acks.durable(d[2])
    await acks.durable(d[3])
    assert sent == [] and acks.waiting == 2  # 1 is still being handed over
    await acks.durable(d[1])
    assert sent == [(3, True)]  # 1, 2 and 3 in one ack
    await acks.durable(d[5])
    await acks.answered_alone(d[4])  # rejected on its own: 5 waits no more
    assert sent == [(3, True), (5, True)]
    await acks.answered_alone(d[6])
    assert sent == [(3, True), (5, True)] and acks.answered_to == 6  # nothing of its own to ack
    await acks.durable(d[8])
    assert acks.answered(d[8]) and not acks.answered(d[7])
    await acks.durable(d[7])
    assert sent[-1] == (8, True) and acks.waiting == 0
