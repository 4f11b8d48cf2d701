"""``mqd.daemon.firstworker``: a file store's worker other than the first hands its keyed
messages over in worker 1, in batches (``handover_batch``: one control request for those that
arrive together), each answered as worker 1's own hand-over answers it, as ``handover_once``
answers it alone. Worker 1 here is a real control server with a recording hand-over."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mqd.admin.control import ControlServer, call
from mqd.config.load import load_config
from mqd.config.schema import Config, SourceConfig
from mqd.daemon.firstworker import (
    HANDOVER_BATCH,
    HANDOVER_ONCE,
    KeyedInFirstWorker,
    serving_handovers,
)
from mqd.errors import SubmissionError
from mqd.intake.source import Login, Submission
from mqd.queue.keys import Handed

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the Unix control socket")


class FirstWorker:
    """Worker 1's hand-over: keys remembered in memory; ``bad`` senders refused, ``boom``
    ones a bug. It counts the hand-overs under way at once (a batch's share a store batch)."""

    def __init__(self) -> None:
        self.keys: dict[str, Handed] = {}
        self.under_way = 0
        self.most_at_once = 0
        self.plain: list[Submission] = []
        self.keyed: list[Submission] = []

    def check_sender(self, source: SourceConfig, sender: str, login: Login | None) -> str | None:
        return None

    async def submit(self, source: SourceConfig, submission: Submission) -> str:
        self.plain.append(submission)
        return f"plain-{len(self.plain)}"

    def rejected(self, source: SourceConfig, **_: Any) -> str:
        return "rejected"

    async def submit_once(
        self,
        source: SourceConfig,
        submission: Submission,
        key: str,
        *,
        scope: str,
        keep_for: float,
        note: str = "",
    ) -> Handed:
        self.keyed.append(submission)
        self.under_way += 1
        self.most_at_once = max(self.most_at_once, self.under_way)
        try:
            await asyncio.sleep(0)  # as a store batch is written: the others join meanwhile
            if submission.sender.startswith("bad@"):
                raise SubmissionError("not allowed", stage="policy", permanent=True)
            if submission.sender.startswith("boom@"):
                raise RuntimeError("a bug")
            if (scope, key) in self.keys:
                first = self.keys[scope, key]
                return Handed(first.id, first.note, replayed=True)
            handed = Handed(f"q{len(self.keys) + 1}", note)
            self.keys[scope, key] = handed
            return handed
        finally:
            self.under_way -= 1


@pytest.fixture
def config(write_config: Callable[[str], Path], tmp_path: Path) -> Config:
    path = write_config(f"""
        [queue]
        dir = "{tmp_path / "q"}"
        workers = 2
        [[spool]]
        path = "{tmp_path / "spool"}"
        [relays.mem]
        plugin = "memory"
        [http]
        enabled = true
        [[submit]]
        token = "t0ken-for-the-first-worker-test"
    """)
    return load_config(path)


@pytest.fixture
async def first(config: Config) -> AsyncIterator[tuple[FirstWorker, list[str]]]:
    """Worker 1's control server: its hand-over, and the ops it was asked."""
    one = config.for_worker(1)
    one.queue.own_dir.mkdir(parents=True)
    handover = FirstWorker()
    ops: list[str] = []

    async def other(op: str, args: dict[str, Any]) -> Any:
        return "not a hand-over"

    serving = serving_handovers(other, lambda: one, handover)

    async def counted(op: str, args: dict[str, Any]) -> Any:
        ops.append(op)
        return await serving(op, args)

    server = ControlServer(one.queue.own_dir, counted)
    await server.start()
    try:
        yield handover, ops
    finally:
        await server.close()


def message(sender: str, n: int) -> Submission:
    return Submission(sender, ("rcpt@example.net",), f"Subject: {n}\r\n\r\nhi\r\n".encode())


async def test_keyed_hand_overs_arriving_together_go_as_one_request(
    config: Config, first: tuple[FirstWorker, list[str]]
) -> None:
    handover, ops = first
    second = config.for_worker(2)
    source = second.sources[0]
    keyed = KeyedInFirstWorker(FirstWorker(), second)

    async def once(sender: str, key: str) -> Handed | str:
        try:
            return await keyed.submit_once(
                source, message(sender, 0), key, scope="s", keep_for=60, note=key
            )
        except SubmissionError as exc:
            return f"{exc.stage} {exc.permanent}"

    senders = ["app@example.com"] * 6 + ["bad@example.com", "boom@example.com"]
    keys = ["k1", "k2", "k1", "k3", "k2", "k4", "k5", "k6"]
    answers = await asyncio.gather(*(once(s, k) for s, k in zip(senders, keys, strict=True)))
    assert ops == [HANDOVER_BATCH]
    assert handover.most_at_once == len(keys)  # handed over together in worker 1
    assert answers[:6] == [
        Handed("q1", "k1"),
        Handed("q2", "k2"),
        Handed("q1", "k1", replayed=True),
        Handed("q3", "k3"),
        Handed("q2", "k2", replayed=True),
        Handed("q4", "k4"),
    ]
    # A refusal is this one's alone; a bug of worker 1's is "try again", not the batch's end.
    assert answers[6:] == ["policy True", "queue False"]
    # Each as handover_once answers it: a repeat of a key, alone, is the first one's.
    args = {
        "source": source.name,
        "sender": "app@example.com",
        "recipients": ["rcpt@example.net"],
        "data": "",
        "trace": "",
        "peer": None,
        "key": "k3",
        "scope": "s",
        "keep_for": 60,
        "note": "k3",
    }
    alone = await call(config.for_worker(1).queue.own_dir, HANDOVER_ONCE, args)
    assert alone == {"id": "q3", "note": "k3", "replayed": True}
    # The submission arrives whole: with the headers its source read (not read again), and
    # its login, whose own allowed senders worker 1's policy checks too.
    read = {"subject": "0", "from": "app@example.com"}
    login = Login("shop", ("orders@example.com", "*@shop.example"))
    given = dataclasses.replace(
        message("app@example.com", 0), peer="192.0.2.7", headers=read, login=login
    )
    await keyed.submit_once(source, given, "k7", scope="s", keep_for=60)
    assert handover.keyed[-1] == given
    # Unkeyed hand-overs stay in the worker that took them.
    assert await keyed.submit(source, message("app@example.com", 1)) == "plain-1"
    assert ops == [HANDOVER_BATCH, HANDOVER_ONCE, HANDOVER_BATCH]


async def test_the_ones_that_arrive_while_a_batch_is_under_way_go_as_the_next(
    config: Config, first: tuple[FirstWorker, list[str]]
) -> None:
    _, ops = first
    second = config.for_worker(2)
    keyed = KeyedInFirstWorker(FirstWorker(), second)
    source = second.sources[0]

    async def once(n: int) -> Handed:
        return await keyed.submit_once(
            source, message("app@example.com", n), f"k{n}", scope="s", keep_for=60
        )

    tasks = [asyncio.create_task(once(n)) for n in range(300)]
    handed = await asyncio.gather(*tasks)
    assert sorted(int(h.id[1:]) for h in handed) == list(range(1, 301))
    # At most 256 a request: fewer requests than messages, however they gathered.
    assert 2 <= len(ops) < 300 and set(ops) == {HANDOVER_BATCH}


async def test_worker_1_not_answering_is_try_again(config: Config) -> None:
    second = config.for_worker(2)
    keyed = KeyedInFirstWorker(FirstWorker(), second)
    with pytest.raises(SubmissionError) as refused:
        await keyed.submit_once(
            second.sources[0], message("app@example.com", 0), "k", scope="s", keep_for=60
        )
    assert (refused.value.stage, refused.value.permanent) == ("queue", False)
    assert "worker 1" in refused.value.reason
