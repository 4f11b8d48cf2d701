"""The event store writes a batch set-wise (each message's and recipient's row once): whatever the
batch, the tables must end as they would with each event recorded on its own."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from mqd.tracking import sqlite as store_module
from mqd.tracking.batch import chunks as power_chunks
from mqd.tracking.records import Record
from mqd.tracking.sqlite import SQLiteStore
from mqd.tracking.vocabulary import Status

RECIPIENT_STATUSES = [
    Status.DEFERRED,
    Status.DISPATCHED,
    Status.DELIVERED,
    Status.OPENED,
    Status.CLICKED,
    Status.BOUNCED,
    Status.DROPPED,
    Status.COMPLAINED,
]
FINAL_STATUSES = [Status.REJECTED, Status.FAILED, Status.DELETED]


def story(rng: random.Random, messages: int = 6) -> list[Record]:
    """Interleaved lives of a few messages: claimed, queued, then recipients' events (some late,
    some with nothing to say), a provider's events (one reported twice), now and then a final
    message-level event."""
    lives: list[list[Record]] = []
    t = 1_000_000.0
    for m in range(messages):
        key = f"msg{m}"
        addresses = [f"R{i}@Example.net" for i in range(rng.randint(1, 3))]
        life = [Record(key, Status.ACCEPTED, t, detail={"file": f"{m}.eml"})]
        sender = rng.choice(["a@example.com", "", None])
        if sender is not None or rng.random() < 0.5:
            life.append(
                Record(
                    key,
                    Status.QUEUED,
                    t + 0.1,
                    sender=sender,
                    message_id=rng.choice([f"<{m}@example.com>", None]),
                    recipients=tuple(addresses),
                )
            )
        for n in range(rng.randint(0, 8)):
            if rng.random() < 0.1:
                final = rng.choice(FINAL_STATUSES)  # a refusal says who sent it
                sender = (
                    rng.choice(["z@example.org", "", None]) if final is Status.REJECTED else None
                )
                life.append(Record(key, final, t + n, sender=sender, detail={"n": n}))
                continue
            provider = rng.random() < 0.3
            life.append(
                Record(
                    key,
                    rng.choice(RECIPIENT_STATUSES),
                    t + rng.uniform(-2, 10),  # providers report late and out of order
                    source="sendgrid" if provider else "mqd",
                    recipient=rng.choice(addresses).swapcase(),
                    relay=rng.choice(["smtp", None]),
                    provider_id=rng.choice([f"P{m}", None]),
                    reply=rng.choice(["250 ok", "451 later", None]),
                    event_key=f"sendgrid:{m}-{n}" if provider else None,
                    message_id=rng.choice([f"<{m}-{n}@example.com>", None, None, None]),
                )
            )
            if provider and rng.random() < 0.2:
                life.append(life[-1])  # a duplicate delivery of the webhook
        lives.append(life)
        t += 1
    records: list[Record] = []
    while any(lives):
        life = rng.choice([life for life in lives if life])
        records.append(life.pop(0))
    return records


def tables(store: SQLiteStore) -> dict[str, list[tuple[Any, ...]]]:
    db = store._db
    return {
        "messages": [tuple(r) for r in db.execute("SELECT * FROM messages ORDER BY id")],
        "recipients": [
            tuple(r) for r in db.execute("SELECT * FROM recipients ORDER BY message, address")
        ],
        "events": [tuple(r) for r in db.execute("SELECT * FROM events ORDER BY seq")],
    }


def batches(records: list[Record], rng: random.Random) -> list[list[Record]]:
    cuts = sorted(rng.sample(range(1, len(records)), k=min(4, len(records) - 1)))
    return [records[a:b] for a, b in zip([0, *cuts], [*cuts, len(records)], strict=True)]


@pytest.mark.parametrize("seed", range(40))
def test_a_batch_ends_where_its_events_one_by_one_end(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    records = story(rng)
    one_by_one = SQLiteStore(tmp_path / "one.sqlite3")
    for record in records:
        one_by_one.record([record])
    expected = tables(one_by_one)
    assert expected["recipients"], "the story should reach some recipients"

    whole = SQLiteStore(tmp_path / "whole.sqlite3")
    whole.record(records)
    assert tables(whole) == expected

    # Batches as the tracker makes them (mqd's own events together, a provider's apart, in
    # order), with few rows to a statement, so that a batch takes several.
    monkeypatch.setattr(store_module, "ROWS_PER_STATEMENT", 2)
    cut = SQLiteStore(tmp_path / "cut.sqlite3")
    for batch in batches(records, rng):
        for _, run in itertools.groupby(batch, key=lambda r: r.event_key is None):
            cut.record(list(run))
    assert tables(cut) == expected


def test_a_duplicate_provider_event_in_one_batch_is_new_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.sqlite3")
    store.record([Record("m", Status.QUEUED, 1.0, sender="a@x", recipients=("b@y",))])
    event = Record("m", Status.OPENED, 2.0, source="ses", recipient="b@y", event_key="ses:1")
    assert store.record([event, event]) == [event]
    assert store.record([event]) == []
    assert tables(store)["recipients"][0][2] == "opened"


def test_the_last_final_event_is_what_a_message_shows(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.sqlite3")
    store.record([Record("m", Status.QUEUED, 1.0, sender="a@x", recipients=("b@y",))])
    store.record(
        [
            Record("m", Status.FAILED, 2.0),
            Record("m", Status.DELIVERED, 3.0, recipient="b@y"),
            Record("m", Status.DELETED, 4.0),
        ]
    )
    assert tables(store)["messages"] == [("m", None, "a@x", "deleted", 1.0, 4.0, None, None, None)]


def test_statements_take_a_few_sizes_of_batch() -> None:
    """Each size of statement is prepared and cached apart: any batch is cut into powers of two
    up to the largest, so that a few sizes serve every batch."""
    sizes: set[int] = set()
    for n in range(300):
        chunks = list(power_chunks(list(range(n)), 64))
        assert [item for chunk in chunks for item in chunk] == list(range(n))
        sizes.update(len(chunk) for chunk in chunks)
    assert sizes == {1, 2, 4, 8, 16, 32, 64}
