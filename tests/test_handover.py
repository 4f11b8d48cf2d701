"""The hand-over's batches: what arrives together goes to the store as one batch; what arrives
while a batch is written starts another (up to ``WRITERS`` at once), then waits for the first
writer free; each producer is answered only once its own batch is durable."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from corehelpers import make_message

from mqd.config.load import load_config
from mqd.delivery.accounts import AccountLimits
from mqd.errors import SubmissionError
from mqd.events import Event, Queued
from mqd.intake.handover import WRITERS, Handover
from mqd.intake.source import Submission
from mqd.plugins.host import PluginHost
from mqd.queue.keys import Handed
from mqd.queue.memory import MemoryStore
from mqd.queue.store import Incoming
from mqd.testing import wait_until


class HeldStore(MemoryStore):
    """A memory store whose ``accept`` waits until the test lets each batch through."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.gates: list[asyncio.Event] = []
        self.durable: set[str] = set()

    async def accept(self, batch: Sequence[Incoming]) -> dict[str, Handed]:
        gate = asyncio.Event()
        self.batches.append([item.entry.recipients[0].address for item in batch])
        self.gates.append(gate)
        await gate.wait()
        repeats = await super().accept(batch)
        self.durable.update(item.entry.id for item in batch)
        return repeats


async def test_batches_written_at_once_and_each_answer_after_its_own(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path
) -> None:
    assert WRITERS == 2
    config = load_config(
        write_config(
            textwrap.dedent(
                f"""
                [queue]
                dir = "{queue_dir}"
                [[spool]]
                path = "{spool}"
                allowed_senders = ["*@example.com"]
                [relays.mem]
                plugin = "memory"
                [[smtpd]]
                listen = ["127.0.0.1:0"]
                allowed_senders = ["*@example.com"]
                """
            )
        )
    )
    [source] = config.sources
    store = HeldStore()
    events: list[Event] = []
    handover = Handover(config, store, PluginHost(entry_points=False), events.append)

    async def submit(to: str) -> str:
        data = make_message(sender="app@example.com", to=(to,))
        queue_id = await handover.submit(source, Submission("app@example.com", (to,), data))
        assert queue_id in store.durable  # never answered before its batch is durable
        return queue_id

    first = [asyncio.create_task(submit("a@example.net"))]
    await wait_until(lambda: len(store.batches) == 1, "the first batch at the store")
    # Arriving together while the first is written: a second batch, at once.
    second = [asyncio.create_task(submit(f"b{n}@example.net")) for n in range(3)]
    await wait_until(lambda: len(store.batches) == 2, "a second batch beside the first")
    # Both writers busy: these wait, and go together to the first writer free.
    third = [asyncio.create_task(submit(f"c{n}@example.net")) for n in range(2)]
    await asyncio.sleep(0)  # one turn of the loop: nothing may start (asserted below)
    assert len(store.batches) == 2 and not any(t.done() for t in first + second + third)
    store.gates[1].set()
    await asyncio.wait_for(asyncio.gather(*second), 10)
    assert not first[0].done()  # still in its own batch
    await wait_until(lambda: len(store.batches) == 3, "the waiting ones as one batch")
    store.gates[0].set()
    store.gates[2].set()
    ids = await asyncio.wait_for(asyncio.gather(*first, *third), 10)
    assert store.batches == [
        ["a@example.net"],
        ["b0@example.net", "b1@example.net", "b2@example.net"],
        ["c0@example.net", "c1@example.net"],
    ]
    assert len(set(ids)) == 3
    assert len([e for e in events if isinstance(e, Queued)]) == 6


async def test_a_repeated_key_gives_back_the_account_send_it_counted(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path
) -> None:
    config = load_config(
        write_config(
            textwrap.dedent(
                f"""
                [queue]
                dir = "{queue_dir}"
                [[spool]]
                path = "{spool}"
                allowed_senders = ["*@shop.example"]
                [relays.mem]
                plugin = "memory"
                [[smtpd]]
                listen = ["127.0.0.1:0"]
                allowed_senders = ["*@shop.example"]
                [[account]]
                name = "shop"
                senders = ["*@shop.example"]
                max_per_minute = 2
                over_limit = "refuse"
                """
            )
        )
    )
    [source] = config.sources
    accounts = AccountLimits(config)
    store = MemoryStore()
    handover = Handover(
        config, store, PluginHost(entry_points=False), lambda event: None, accounts=accounts
    )

    async def once(key: str, to: str) -> Handed:
        data = make_message(sender="orders@shop.example", to=(to,))
        submission = Submission("orders@shop.example", (to,), data)
        return await handover.submit_once(source, submission, key, scope="t", keep_for=60.0)

    first = await once("order-1", "a@example.net")
    again = await once("order-1", "a@example.net")  # a retried request: counted, then given back
    assert again.replayed and again.id == first.id
    other = await once("order-2", "b@example.net")  # the limit of 2 still has room for it
    assert not other.replayed and other.id != first.id
    with pytest.raises(SubmissionError, match="account shop reached its per-minute limit"):
        await once("order-3", "c@example.net")


def _envelope_lines_dropped_by_splitting(data: bytes) -> bytes:
    """What the hand-over drops, by the full header split (its way before the first-line check)."""
    from mqd.errors import MessageParseError
    from mqd.message.headers import envelope_field, split_header

    try:
        fields, _ = split_header(data)
    except MessageParseError:
        return data
    skip = 0
    for _name, raw in fields:
        if envelope_field(raw) is None:
            break
        skip += len(raw)
    return data[skip:]


@pytest.mark.parametrize(
    "data",
    [
        b"From: a@example.com\r\nTo: b@example.net\r\n\r\nbody\r\n",
        b"X-Sender: <x@example.com>\r\nX-Receiver: <y@example.net>\r\nFrom: a@example.com\r\n\r\nb",
        b"x-receiver: y@example.net\nSubject: s\n\nbody\n",
        b"X-Sender : x@example.com\r\nFrom: a@example.com\r\n\r\n",
        b"X-Sender: x@example.com\r\n folded@example.com\r\nTo: b@example.net\r\n\r\n",
        b" X-Sender: x@example.com\r\nTo: b@example.net\r\n\r\n",
        b"not a header line\r\nX-Sender: x@example.com\r\n\r\n",
        b"\r\nX-Sender: x@example.com\r\n",
        b"X-Sender: x@example.com",
        b"From: a@example.com",
        b"X-Sender: x@example.com\r\nnot a header line\r\n\r\n",
        b"",
    ],
)
def test_envelope_lines_are_dropped_as_the_full_split_drops_them(data: bytes) -> None:
    from mqd.intake.handover import _without_envelope_lines

    assert _without_envelope_lines(data) == _envelope_lines_dropped_by_splitting(data)


@pytest.mark.parametrize(
    "data",
    [
        b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n",
        b"From: A <a@example.com>\nTo: b@example.net, c@example.net\nCc: b@example.net\n"
        b"Subject: =?utf-8?q?caf=C3=A9?=\n folded\nMessage-ID: <1@x>\nX-Mqd-Send-At: +1h\n\nb\n",
        b"X-Sender: <x@example.com>\r\nX-Receiver: <y@example.net>\r\nFrom: a@example.com\r\n"
        b"From: evil@example.org\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-"
        b"b7ad6b7169203331-01\r\nContent-Type: multipart/report; report-type=delivery-status\r\n"
        b"\r\n",
        b"From: a@example.com\r\nTo: bad address@example.net, ok@example.net\r\n\r\n",
    ],
)
def test_headers_a_source_read_are_not_read_again_and_give_the_same(data: bytes) -> None:
    from mqd.intake.handover import _parsed, _without_envelope_lines
    from mqd.intake.mailbox.envelope import submission_of
    from mqd.message.envelope import parse_message
    from mqd.producer.inject import envelope_lines

    submission = submission_of(data, {}, None)
    assert submission.headers is not None
    body = envelope_lines(submission.sender, submission.recipients)
    body += _without_envelope_lines(submission.data)
    assert _parsed(body, submission) == parse_message(body)
