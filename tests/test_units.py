"""Unit tests for mqd.config.units: durations and sizes as written in the config."""

from __future__ import annotations

import math

import pytest

from mqd.config.units import format_duration, parse_duration, parse_size

# -- parse_duration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("5d", 432000.0),
        ("2w", 1209600.0),
        ("250ms", 0.25),
        ("1ms", 0.001),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1d2h3m4s", 86400 + 7200 + 180 + 4),
        ("1.5h", 5400.0),
        ("0.5s", 0.5),
        ("  5m  ", 300.0),
        ("5M", 300.0),
        ("1H30M", 5400.0),
        ("1m1ms", 60.001),
        ("90", 90.0),
        ("2.5", 2.5),
    ],
)
def test_parse_duration_strings(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("value", "seconds"), [(0, 0.0), (30, 30.0), (1.5, 1.5), (86400, 86400.0)])
def test_parse_duration_numbers_are_seconds(value, seconds):
    result = parse_duration(value)
    assert result == seconds
    assert isinstance(result, float)


def test_ms_is_not_read_as_minutes_then_seconds():
    assert parse_duration("5ms") == pytest.approx(0.005)
    assert parse_duration("5m") == 300.0


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "abc",
        "5x",
        "5 years",
        "m5",
        "5m3",
        "h",
        "-5s",
        "-5",
        "5m-3s",
        "1.5.5m",
        "1,5h",
        "nan",
        [],
        None,
        {"m": 5},
    ],
)
def test_parse_duration_rejects_garbage_with_helpful_message(value):
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    message = str(info.value)
    assert repr(value) in message
    assert "'30s'" in message  # shows an example of what is expected


def test_parse_duration_message_lists_units():
    with pytest.raises(ValueError, match=r"units: ms, s, m, h, d, w"):
        parse_duration("5 fortnights")


@pytest.mark.parametrize("value", [-1, -0.5])
def test_parse_duration_negative_number(value):
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_duration_rejects_booleans(value):
    # bool is an int in Python; "true" is never a duration.
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, "inf", "infinity"])
def test_parse_duration_rejects_non_finite_values(value):
    # TOML allows `nan` and `inf` as floats. A NaN retry delay or scan interval passes every
    # "<= 0" check and then makes every schedule comparison false; neither is a duration.
    with pytest.raises(ValueError):
        parse_duration(value)


# -- format_duration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0, "0s"),
        (1, "1s"),
        (30, "30s"),
        (59, "59s"),
        (60, "1m"),
        (90, "90s"),
        (300, "5m"),
        (3600, "1h"),
        (5400, "90m"),
        (86400, "1d"),
        (432000, "5d"),
        (604800, "1w"),
        (1209600, "2w"),
        (0.25, "250ms"),
        (0.001, "1ms"),
        (1.5, "1.5s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "text",
    ["0s", "1s", "30s", "5m", "1h", "1h30m", "5d", "1w", "250ms", "1.5s", "3600.1s", "90s", "7d1s"],
)
def test_format_then_parse_round_trips_from_text(text):
    seconds = parse_duration(text)
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "seconds",
    [0.0, 0.5, 1.0, 1.5, 42.0, 59.0, 61.0, 3599.0, 3601.0, 86399.0, 86401.0, 1e6, 7 * 86400 + 1],
)
def test_parse_of_format_is_exact(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("seconds", [100000.5, 1209600.5, 1234567.25])
def test_format_duration_of_large_fractional_values_round_trips(seconds):
    # "14d0.5s" is a valid duration; `mqd config check` must print it back in a form that
    # parse_duration reads and that means the same number of seconds.
    text = format_duration(seconds)
    assert parse_duration(text) == seconds


def test_format_duration_is_shortest_for_whole_units():
    for seconds, text in [(120, "2m"), (7200, "2h"), (172800, "2d")]:
        assert format_duration(seconds) == text
        assert len(text) <= len(f"{seconds}s")


# -- parse_size ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1234, 1234),
        ("0", 0),
        ("1234", 1234),
        ("10b", 10),
        ("10B", 10),
        ("1k", 1000),
        ("1kb", 1000),
        ("1KB", 1000),
        ("512KiB", 512 * 1024),
        ("512 KiB", 512 * 1024),
        ("25MB", 25_000_000),
        ("25M", 25_000_000),
        ("25MiB", 25 * 1024 * 1024),
        ("1GiB", 1024**3),
        ("2GB", 2_000_000_000),
        ("2g", 2_000_000_000),
        ("1.5KiB", 1536),
        ("0.5MiB", 512 * 1024),
        ("  25MiB  ", 25 * 1024 * 1024),
    ],
)
def test_parse_size(value, size):
    result = parse_size(value)
    assert result == size
    assert isinstance(result, int)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "MiB",
        "-5",
        "-5MiB",
        "5TB",
        "5 parsecs",
        "5MiBs",
        "1e3",
        "5,000",
        -1,
        1.5,
        True,
        False,
        None,
        ["25MiB"],
    ],
)
def test_parse_size_rejects_garbage_with_helpful_message(value):
    with pytest.raises(ValueError) as info:
        parse_size(value)
    message = str(info.value)
    assert repr(value) in message
    assert "25MiB" in message
