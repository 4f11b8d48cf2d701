"""Parse the human units used in the config: durations ("5m", "1h30m") and sizes ("25MiB")."""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_duration", "parse_size"]

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_duration(value: object) -> float:
    """Seconds in ``value``: a number of seconds, or a string like "30s", "5m", "1h30m", "5d".

    Raises ValueError with a message fit for the user when the value is not a duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '30s' or '5m', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite duration like '30s' or '5m', got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text and _DURATION_PART.sub("", text) == "":
            total = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
            if math.isfinite(total):
                return total
        try:
            seconds = float(text)
        except ValueError:
            pass
        else:
            if seconds >= 0 and math.isfinite(seconds):
                return seconds
    raise ValueError(
        f"expected a duration like '30s', '5m', '1h' or '5d', got {value!r} "
        "(units: ms, s, m, h, d, w)"
    )


def parse_size(value: object) -> int:
    """Bytes in ``value``: an integer, or a string like "512KiB", "25MB", "1GiB"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if match and match.group(2) in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    raise ValueError(f"expected a size like '25MiB' or '512KB' or a number of bytes, got {value!r}")


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` in the units ``parse_duration`` reads."""
    if seconds == 0:
        return "0s"
    for unit in ("w", "d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds!r}s"  # repr is exact and, below 1e16, never in exponent notation
