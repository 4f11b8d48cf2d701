"""Unit tests for the queue entry state (mqd.queue.entry) and the backoff (mqd.queue.backoff)."""

from __future__ import annotations

import json
import random

import pytest

from mqd.config.schema import RetryPolicy
from mqd.queue.backoff import JITTER_SHARE, Backoff
from mqd.queue.entry import (
    STATE_VERSION,
    QueueEntry,
    RcptStatus,
    RecipientState,
    new_message_id,
)


def make_entry(**overrides) -> QueueEntry:
    fields = {
        "id": "018f2a3b4c5d0123456789",
        "sender": "app@example.com",
        "recipients": [
            RecipientState("a@example.net"),
            RecipientState(
                "b@example.net", RcptStatus.DELIVERED, "250 2.0.0 OK", "2.0.0", "mx.example.net"
            ),
            RecipientState(
                "c@example.net", RcptStatus.FAILED, "550 5.1.1 no", "5.1.1", "mx", notified=True
            ),
            RecipientState("jörg@exämple.com", RcptStatus.FAILED, "550 5.1.1 no", "5.1.1"),
        ],
        "relay": "main",
        "source": "0123456789ab",
        "created_at": 1_700_000_000.25,
        "next_attempt_at": 1_700_000_300.5,
        "size": 1234,
        "attempts": 2,
        "last_attempt_at": 1_700_000_100.0,
        "last_reply": "451 4.7.1 greylisted",
        "is_report": False,
        "bounces": 1,
        "spool_name": "message-1.eml",
        "message_id": "<1@example.com>",
        "extra": {"provider_id": "abc", "nested": {"n": [1, 2]}},
    }
    fields.update(overrides)
    return QueueEntry(**fields)


# -- JSON round trip -------------------------------------------------------------------------------


def test_round_trip():
    entry = make_entry()
    again = QueueEntry.from_json(entry.to_json())
    assert again == entry
    assert all(isinstance(r.status, RcptStatus) for r in again.recipients)
    assert [r.address for r in again.pending] == ["a@example.net"]
    assert [r.address for r in again.unnotified_failures] == ["jörg@exämple.com"]
    assert again.has_failures and not again.is_done


def test_round_trip_of_minimal_entry():
    entry = QueueEntry(
        id="x1",
        sender="",
        recipients=[RecipientState("a@example.net")],
        relay="main",
        source="dsn",
        created_at=0.0,
        next_attempt_at=0.0,
    )
    again = QueueEntry.from_json(entry.to_json())
    assert again == entry
    assert again.last_attempt_at is None
    assert again.may_bounce is False


def test_to_json_is_compact_utf8_with_version():
    raw = make_entry().to_json()
    assert isinstance(raw, bytes)
    data = json.loads(raw.decode("utf-8"))
    assert data["version"] == STATE_VERSION
    assert data["recipients"][1]["status"] == "delivered"
    assert "jörg@exämple.com".encode() in raw  # not \u-escaped
    assert b"\n" not in raw


def test_round_trip_is_stable():
    raw = make_entry().to_json()
    assert QueueEntry.from_json(raw).to_json() == raw


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b" ",
        b"\n",
        b"\x00\x00\x00\x00",
        b"\xff\xfe\xfd",
        b"garbage",
        b"{",
        b"null",
        b"[]",
        b"42",
        b'"a string"',
        b"{}",
    ],
    ids=repr,
)
def test_from_json_rejects_garbage(raw):
    with pytest.raises(ValueError) as info:
        QueueEntry.from_json(raw)
    assert str(info.value)


@pytest.mark.parametrize("cut", [1, 2, 10, 50, 100, -50, -10, -2, -1])
def test_from_json_rejects_torn_data(cut):
    raw = make_entry().to_json()
    with pytest.raises(ValueError, match="JSON"):
        QueueEntry.from_json(raw[:cut])


def test_from_json_rejects_every_truncation():
    raw = make_entry().to_json()
    for end in range(len(raw)):
        with pytest.raises(ValueError):
            QueueEntry.from_json(raw[:end])


def _mutated(change) -> bytes:
    data = json.loads(make_entry().to_json())
    change(data)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d.pop("version"), "version None"),
        (lambda d: d.update(version=STATE_VERSION + 1), f"version {STATE_VERSION + 1}"),
        (lambda d: d.update(version=0), "version 0"),
        (lambda d: d.update(version="1"), "version '1'"),
    ],
)
def test_from_json_rejects_wrong_version(change, fragment):
    with pytest.raises(ValueError) as info:
        QueueEntry.from_json(_mutated(change))
    assert fragment in str(info.value)
    assert str(STATE_VERSION) in str(info.value)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop("id"),
        lambda d: d.pop("recipients"),
        lambda d: d.pop("created_at"),
        lambda d: d.update(id=""),
        lambda d: d.update(recipients=[]),
        lambda d: d.update(recipients="a@example.net"),
        lambda d: d.update(recipients=["a@example.net"]),
        lambda d: d.update(recipients=[{"address": "a@example.net"}]),
        lambda d: d.update(recipients=[{"address": "a@example.net", "status": "lost"}]),
        lambda d: d.update(recipients=[{"status": "pending"}]),
        lambda d: d.update(unexpected_field=1),
        lambda d: d["recipients"][0].update(unexpected_field=1),
    ],
)
def test_from_json_rejects_wrong_fields(change):
    with pytest.raises(ValueError):
        QueueEntry.from_json(_mutated(change))


def test_entry_properties():
    entry = make_entry()
    assert entry.may_bounce
    assert not make_entry(is_report=True).may_bounce
    assert not make_entry(sender="").may_bounce
    done = make_entry(recipients=[RecipientState("a@x.test", RcptStatus.DELIVERED)])
    assert done.is_done and not done.has_failures


def test_new_message_ids_are_unique_and_sortable(monkeypatch):
    ids = [new_message_id() for _ in range(200)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 21 and int(i, 16) >= 0 for i in ids)
    times = iter([1_700_000_000.0, 1_700_000_000.001, 1_800_000_000.0])
    monkeypatch.setattr("mqd.queue.entry.time.time", lambda: next(times))
    ordered = [new_message_id() for _ in range(3)]
    assert ordered == sorted(ordered)


# -- Backoff ---------------------------------------------------------------------------------------

POLICY = RetryPolicy(initial=300.0, max=3600.0, lifetime=5 * 86400.0)


@pytest.fixture
def no_jitter(monkeypatch):
    """The random part of the delay at its minimum (tenacity draws it from ``random``)."""
    monkeypatch.setattr(random, "random", lambda: 0.0)
    monkeypatch.setattr(random, "uniform", lambda a, b: a)


@pytest.fixture
def full_jitter(monkeypatch):
    """The random part of the delay at its maximum."""
    monkeypatch.setattr(random, "random", lambda: 1.0)
    monkeypatch.setattr(random, "uniform", lambda a, b: b)


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        (0, 300.0),  # treated like the first attempt
        (1, 300.0),
        (2, 600.0),
        (3, 1200.0),
        (4, 2400.0),
        (5, 3600.0),  # 4800 capped
        (6, 3600.0),
        (20, 3600.0),
        (1000, 3600.0),
        (100_000, 3600.0),
    ],
)
def test_delay_without_jitter(no_jitter, attempts, expected):
    assert Backoff(POLICY).delay(attempts) == pytest.approx(expected)


@pytest.mark.parametrize(("attempts", "base"), [(1, 300.0), (3, 1200.0), (5, 3600.0), (99, 3600.0)])
def test_delay_with_full_jitter(full_jitter, attempts, base):
    assert Backoff(POLICY).delay(attempts) == pytest.approx(base + 300.0 * JITTER_SHARE)


def test_jitter_is_at_most_a_tenth_of_initial():
    assert pytest.approx(0.1) == JITTER_SHARE
    backoff = Backoff(POLICY)
    for attempts in range(1, 12):
        base = min(POLICY.initial * 2 ** (attempts - 1), POLICY.max)
        for _ in range(50):
            delay = backoff.delay(attempts)
            assert base <= delay <= base + POLICY.initial * 0.1 + 1e-9


def test_delay_grows_from_initial():
    policy = RetryPolicy(initial=1.0, max=1000.0, lifetime=10.0)
    backoff = Backoff(policy)
    delays = [backoff.delay(n) for n in range(1, 12)]
    for n, delay in enumerate(delays, start=1):
        base = min(2.0 ** (n - 1), 1000.0)
        assert base <= delay <= base + 0.1
    assert delays[-1] >= 1000.0


def test_delay_when_max_equals_initial(no_jitter):
    backoff = Backoff(RetryPolicy(initial=60.0, max=60.0, lifetime=600.0))
    assert [backoff.delay(n) for n in (1, 2, 10)] == [60.0, 60.0, 60.0]


def test_delay_is_a_float():
    assert isinstance(Backoff(POLICY).delay(1), float)


@pytest.mark.parametrize(
    ("age", "expired"),
    [
        (0.0, False),
        (1.0, False),
        (POLICY.lifetime - 1.0, False),
        (POLICY.lifetime, True),
        (POLICY.lifetime + 1.0, True),
        (-10.0, False),  # a clock that went backwards never expires a message
    ],
)
def test_expired(age, expired):
    created = 1_700_000_000.0
    assert Backoff(POLICY).expired(created, created + age) is expired


def test_ids_made_for_a_batch_are_distinct_and_carry_their_time() -> None:
    import time

    from mqd.queue.entry import id_time, message_id_maker

    before = time.time()
    make = message_id_maker(500)
    ids = [make() for _ in range(500)]
    assert len(set(ids)) == 500
    assert all(len(i) == 21 and int(i, 16) >= 0 for i in ids)
    assert all(before - 0.001 <= (id_time(i) or 0) <= time.time() for i in ids)
