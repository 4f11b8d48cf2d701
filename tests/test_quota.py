"""Unit tests for mqd.delivery.quota: per-second token buckets and rolling hour/day windows, on fake
clocks (a wall clock for the windows, a monotonic one for the bucket)."""

from __future__ import annotations

import json
import logging

import pytest
from corehelpers import FakeClock as Clock

from mqd.config.schema import QuotaConfig
from mqd.delivery.quota import Hold, Quota, dump_quotas, load_quotas

#: A wall-clock time at the start of a minute (minute number 28_000_000).
T0 = 28_000_000 * 60.0


@pytest.fixture
def wall() -> Clock:
    return Clock(T0)


@pytest.fixture
def mono() -> Clock:
    return Clock(50.0)


@pytest.fixture
def quota(wall, mono):
    def make(name: str = "ses", **limits: float) -> Quota:
        return Quota(name, QuotaConfig(**limits), clock=wall, monotonic=mono)

    return make


def take_all(q: Quota, n: int) -> list[Hold | None]:
    return [q.take() for _ in range(n)]


# -- no limits -------------------------------------------------------------------------------------


def test_without_limits_everything_passes_and_nothing_is_counted(quota, wall):
    q = quota()
    assert not q.config.limited
    assert take_all(q, 1000) == [None] * 1000
    assert q.holds == 0
    assert q.sent_within(86400) == 0
    assert q.dirty is False
    assert q.to_json() == {"minutes": {}}


@pytest.mark.parametrize(
    "limits",
    [{"max_per_second": 1.0}, {"max_per_hour": 1}, {"max_per_day": 1}],
)
def test_any_limit_makes_the_config_limited(limits):
    assert QuotaConfig(**limits).limited


# -- per second ------------------------------------------------------------------------------------


def test_per_second_allows_a_burst_of_one_seconds_worth(quota):
    q = quota(max_per_second=10)
    assert take_all(q, 10) == [None] * 10
    hold = q.take()
    assert hold == Hold(pytest.approx(0.1), "per-second")
    assert q.holds == 1


def test_per_second_refills_at_the_rate(quota, mono):
    q = quota(max_per_second=2)
    assert take_all(q, 2) == [None, None]
    assert q.take() == Hold(pytest.approx(0.5), "per-second")
    mono.advance(0.25)
    assert q.take() == Hold(pytest.approx(0.25), "per-second")
    mono.advance(0.25)
    assert q.take() is None
    assert q.take() == Hold(pytest.approx(0.5), "per-second")
    assert q.holds == 3


def test_per_second_burst_never_exceeds_capacity_after_a_long_idle(quota, mono):
    q = quota(max_per_second=3)
    mono.advance(3600.0)
    assert take_all(q, 4) == [None, None, None, Hold(pytest.approx(1 / 3), "per-second")]


def test_fractional_rate_below_one_holds_a_capacity_of_one(quota, mono):
    q = quota(max_per_second=0.5)  # one message every two seconds
    assert q.take() is None
    assert q.take() == Hold(pytest.approx(2.0), "per-second")
    mono.advance(1.0)
    assert q.take() == Hold(pytest.approx(1.0), "per-second")
    mono.advance(1.0)
    assert q.take() is None
    assert q.take() == Hold(pytest.approx(2.0), "per-second")


def test_fractional_rate_above_one_bursts_its_whole_tokens(quota):
    q = quota(max_per_second=2.5)
    assert take_all(q, 2) == [None, None]
    # 0.5 of a token left: the next one is 0.5 / 2.5 s away
    assert q.take() == Hold(pytest.approx(0.2), "per-second")


def test_a_per_second_hold_takes_no_token(quota, mono):
    q = quota(max_per_second=1)
    assert q.take() is None
    hold = q.take()
    assert hold is not None
    mono.advance(hold.seconds)
    # had the hold consumed a token, this one would still be held
    assert q.take() is None


def test_per_second_follows_the_monotonic_clock_not_the_wall_clock(quota, wall):
    q = quota(max_per_second=1)
    assert q.take() is None
    wall.advance(3600.0)
    assert q.take() == Hold(pytest.approx(1.0), "per-second")


# -- per hour / per day ----------------------------------------------------------------------------


def test_per_hour_admits_exactly_the_limit(quota, wall):
    q = quota(max_per_hour=3)
    wall.advance(10.0)  # 10 s into the minute
    assert take_all(q, 3) == [None] * 3
    hold = q.take()
    # The minute's sends leave the window one hour after the minute ends: 50 s + 1 h from now.
    assert hold == Hold(3650.0, "per-hour")
    assert q.sent_within(3600) == 3
    assert q.holds == 1


def test_per_hour_admits_again_once_the_oldest_minute_leaves(quota, wall):
    q = quota(max_per_hour=3)
    wall.advance(10.0)
    take_all(q, 3)
    hold = q.take()
    assert hold is not None
    wall.advance(hold.seconds - 1)
    assert q.take() == Hold(1.0, "per-hour")
    wall.advance(1.0)  # now exactly at the start of minute 61
    assert take_all(q, 3) == [None] * 3
    assert q.take() == Hold(3660.0, "per-hour")  # and the window is full again


def test_per_hour_wait_is_for_the_oldest_minute(quota, wall):
    q = quota(max_per_hour=3)
    assert q.take() is None  # minute 0
    wall.advance(10 * 60)
    assert take_all(q, 2) == [None, None]  # minute 10
    wall.advance(20 * 60 + 30)  # minute 30, 30 s in
    hold = q.take()
    # minute 0 ends at T0 + 60 and leaves the window at T0 + 60 + 3600
    assert hold == Hold(T0 + 60 + 3600 - wall.now, "per-hour")
    assert hold.seconds == 60 + 3600 - (30 * 60 + 30)
    wall.advance(hold.seconds)
    assert q.take() is None  # one slot, freed by minute 0
    assert q.take() == Hold(T0 + 11 * 60 + 3600 - wall.now, "per-hour")  # now minute 10's turn


def test_per_hour_wait_is_at_least_a_second(quota, wall):
    q = quota(max_per_hour=1)
    q.take()
    wall.advance(3600 + 59.5)
    assert q.take() == Hold(1.0, "per-hour")


def test_per_day_window(quota, wall):
    q = quota(max_per_day=2)
    wall.advance(30.0)
    assert take_all(q, 2) == [None, None]
    wall.advance(5 * 3600)
    hold = q.take()
    assert hold == Hold(60 + 86400 - 30 - 5 * 3600, "per-day")
    wall.advance(hold.seconds)
    assert q.take() is None


def test_hour_is_checked_before_day(quota, wall):
    q = quota(max_per_hour=2, max_per_day=3)
    assert take_all(q, 2) == [None, None]
    assert q.take().limit == "per-hour"
    wall.advance(3600 + 60)
    assert q.take() is None
    hold = q.take()
    assert hold is not None
    assert hold.limit == "per-day"
    assert hold.seconds == 60 + 86400 - (3600 + 60)


def test_a_window_hold_counts_nothing(quota, wall):
    q = quota(max_per_hour=2)
    take_all(q, 2)
    q.dirty = False
    saved = q.to_json()
    holds = [q.take() for _ in range(5)]
    assert all(isinstance(h, Hold) for h in holds)
    assert q.holds == 5
    assert q.sent_within(3600) == 2
    assert q.to_json() == saved
    assert q.dirty is False


def test_a_window_hold_takes_no_per_second_token(quota, wall, mono):
    q = quota(max_per_second=1, max_per_hour=1)
    assert q.take() is None
    mono.advance(1.0)
    assert q.take() == Hold(3660.0, "per-hour")
    wall.advance(3600 + 60)  # the window empties; the monotonic clock does not move
    assert q.take() is None  # the token refilled above was not spent on the held message


def test_the_per_second_limit_is_checked_first(quota):
    q = quota(max_per_second=1, max_per_hour=1)
    q.take()
    assert q.take() == Hold(pytest.approx(1.0), "per-second")


def test_counting_marks_the_quota_dirty(quota):
    q = quota(max_per_day=10)
    assert q.dirty is False
    q.take()
    assert q.dirty is True


def test_per_second_only_counts_no_minutes(quota):
    q = quota(max_per_second=100)
    take_all(q, 5)
    assert q.sent_within(3600) == 0
    assert q.dirty is False


def test_sent_within_counts_whole_minutes_outwards(quota, wall):
    q = quota(max_per_day=100)
    wall.advance(10.0)
    take_all(q, 2)  # minute 0
    wall.advance(60.0)
    take_all(q, 3)  # minute 1, at 70 s
    wall.advance(60.0)  # 130 s
    assert q.sent_within(1) == 0  # minute 2 is empty
    assert q.sent_within(15) == 3  # reaches into minute 1
    assert q.sent_within(75) == 5  # reaches into minute 0
    assert q.sent_within(3600) == 5


# -- persistence -----------------------------------------------------------------------------------


def test_to_json_and_load_round_trip(quota, wall):
    q = quota(max_per_hour=5)
    take_all(q, 2)
    wall.advance(120.0)
    take_all(q, 3)
    data = json.loads(json.dumps(q.to_json()))
    assert data == {"minutes": {str(int(T0 // 60)): 2, str(int(T0 // 60) + 2): 3}}
    again = quota(max_per_hour=5)
    again.load(data)
    assert again.to_json() == q.to_json()
    assert again.sent_within(3600) == 5
    assert again.take() == q.take()  # both full, held for the same time


def test_old_minutes_are_forgotten(quota, wall):
    q = quota(max_per_day=100)
    take_all(q, 4)
    wall.advance(2 * 86400)
    q.take()
    assert q.to_json() == {"minutes": {str(int(wall.now // 60)): 1}}


def test_load_forgets_minutes_older_than_a_day(quota, wall):
    q = quota(max_per_day=100)
    old = int(T0 // 60) - 2 * 1440
    recent = int(T0 // 60) - 30
    q.load({"minutes": {str(old): 50, str(recent): 7, str(recent + 1): 0}})
    assert q.to_json() == {"minutes": {str(recent): 7}}
    assert q.sent_within(86400) == 7


def test_loaded_counts_apply_to_the_limit(quota, wall):
    q = quota(max_per_hour=10)
    q.load({"minutes": {str(int(T0 // 60) - 5): 10}})
    hold = q.take()
    assert hold == Hold((int(T0 // 60) - 4) * 60 + 3600 - T0, "per-hour")


def test_load_replaces_the_counts(quota):
    q = quota(max_per_hour=10)
    take_all(q, 3)
    q.load({"minutes": {}})
    assert q.sent_within(3600) == 0


@pytest.mark.parametrize(
    "data",
    [
        {"minutes": {"not-a-minute": 1}},
        {"minutes": {"28000000": "many"}},
        {"minutes": {"28000000": None}},
        {"minutes": "garbage"},
        {"minutes": 5},
        ["not", "a", "mapping"],
    ],
)
def test_malformed_saved_counts_are_ignored_with_a_warning(quota, caplog, data):
    q = quota(max_per_hour=10)
    take_all(q, 2)
    before = q.to_json()
    with caplog.at_level(logging.WARNING, logger="mqd.quota"):
        q.load(data)
    assert q.to_json() == before
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "relay ses" in record.getMessage()
    assert "ignoring unreadable saved quota counts" in record.getMessage()


def test_dump_quotas_saves_only_relays_with_hour_or_day_windows(quota):
    quotas = {
        "hourly": quota("hourly", max_per_hour=10),
        "daily": quota("daily", max_per_day=10),
        "fast": quota("fast", max_per_second=5),
        "free": quota("free"),
    }
    for q in quotas.values():
        q.take()
    data = json.loads(dump_quotas(quotas))
    minute = str(int(T0 // 60))
    assert data == {
        "version": 1,
        "relays": {"daily": {"minutes": {minute: 1}}, "hourly": {"minutes": {minute: 1}}},
    }


def test_load_quotas_restores_each_relays_counts(quota):
    saved = {"a": quota("a", max_per_hour=10), "b": quota("b", max_per_day=10)}
    take_all(saved["a"], 3)
    take_all(saved["b"], 1)
    raw = dump_quotas(saved)
    fresh = {
        "a": quota("a", max_per_hour=10),
        "b": quota("b", max_per_day=10),
        "c": quota("c", max_per_day=10),  # new since the save: starts empty
    }
    load_quotas(fresh, raw)
    assert [fresh[n].sent_within(3600) for n in "abc"] == [3, 1, 0]


def test_load_quotas_ignores_relays_no_longer_configured_and_bad_entries(quota, caplog):
    fresh = {"a": quota("a", max_per_hour=10), "b": quota("b", max_per_hour=10)}
    minute = str(int(T0 // 60))
    raw = json.dumps(
        {"version": 1, "relays": {"a": "not a table", "b": {"minutes": {minute: 4}}, "gone": {}}}
    ).encode()
    with caplog.at_level(logging.WARNING, logger="mqd"):
        load_quotas(fresh, raw)
    assert fresh["a"].sent_within(3600) == 0
    assert fresh["b"].sent_within(3600) == 4
    assert caplog.records == []


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'"relays"',
        b'{"version": 1}',
        b'{"version": 1, "relays": []}',
        b'{"version": 1, "relays": "a"}',
    ],
)
def test_load_quotas_ignores_bad_data_with_a_warning(quota, caplog, raw):
    quotas = {"a": quota("a", max_per_hour=10)}
    take_all(quotas["a"], 2)
    with caplog.at_level(logging.WARNING, logger="mqd.quota"):
        load_quotas(quotas, raw)
    assert quotas["a"].sent_within(3600) == 2
    [record] = caplog.records
    assert "ignoring the saved quota counts" in record.getMessage()
