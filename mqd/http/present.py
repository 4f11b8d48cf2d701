"""How the list and message pages show a message's facts: times as people say them ("in 3 min",
"2 h ago", the exact time in the tooltip and in ``<time datetime>``), the Subject, the sender
(a bounce's ``<>`` is never confused with a file that is not a message), and each recipient
with its own last reply.

Every function returns HTML with every value escaped (``mqd.http.html.e``). The API keeps the
machine values (seconds since the epoch); only the pages are made human.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from mqd.http.html import badge, e
from mqd.tracking.answers import RecipientStatus

__all__ = [
    "detail_html",
    "moment",
    "recipients_html",
    "relative",
    "relay_health",
    "sender_html",
    "subject_html",
]

_UNITS = ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))


def _span(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h``, ``2 d``: one unit, rounded down (``1 h 30 min`` above
    an hour and below a day, where the minutes still matter)."""
    seconds = int(abs(seconds))
    if 3600 <= seconds < 86400 and seconds % 3600 >= 60:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    for size, unit in _UNITS:
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return "0 s"


def relative(timestamp: float, now: float) -> str:
    """``timestamp`` from ``now``: "just now", "in 3 min", "2 h ago"."""
    delta = timestamp - now
    if abs(delta) < 2:
        return "just now"
    return f"in {_span(delta)}" if delta > 0 else f"{_span(delta)} ago"


def _valid(timestamp: object) -> float | None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        return None
    if not 0 < timestamp < 32503680000:  # before the year 3000: a time, not a counter
        return None
    return float(timestamp)


def moment(timestamp: object, now: float | None = None) -> str:
    """``<time>`` saying when ``timestamp`` (seconds since the epoch) is from ``now``, with the
    ISO time (UTC) in ``datetime`` and the local time in its tooltip; "" for no time."""
    value = _valid(timestamp)
    if value is None:
        return ""
    now = time.time() if now is None else now
    iso = datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    local = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(value))
    return f'<time datetime="{e(iso)}" title="{e(local)}">{e(relative(value, now))}</time>'


def subject_html(subject: str | None) -> str:
    """The Subject (already decoded); "(no subject)" when it has none."""
    if not subject:
        return '<span class="muted">(no subject)</span>'
    return e(subject)


def sender_html(sender: str | None, not_a_message: str | None = None) -> str:
    """The envelope sender. ``not_a_message`` (why the file could not be read as a message)
    wins: such a file has no sender, it is not a bounce. ``""`` is the null sender of a
    bounce; None is a sender nobody knows."""
    if not_a_message:
        return f'<span class="st st-bad">not a message</span> {e(not_a_message)}'
    if sender is None:
        return '<span class="muted">unknown</span>'
    if sender == "":
        return "&lt;&gt; (a bounce)"
    return e(sender)


def recipients_html(recipients: Sequence[RecipientStatus], now: float | None = None) -> str:
    """Each recipient with its own status and its own last reply (never another's)."""
    items = []
    for r in recipients:
        reply = f' <span class="muted">{e(r.reply)}</span>' if r.reply else ""
        items.append(f"<li>{e(r.address)} {badge(r.status)}{reply}</li>")
    return f'<ul class="plain">{"".join(items)}</ul>'


def detail_html(detail: object, now: float | None = None) -> str:
    """An event's details as ``key=value`` pairs; a time (a key ending in ``_at``) as a
    ``moment``, never as raw seconds."""
    if not isinstance(detail, Mapping):
        return ""
    now = time.time() if now is None else now
    parts = []
    for key, value in detail.items():
        if value in (None, "", [], {}):
            continue
        name = str(key)
        if name.endswith("_at") and _valid(value) is not None:
            label = name[:-3].replace("_", " ")
            parts.append(f"{e(label)} {moment(value, now)}")
            continue
        if isinstance(value, list | tuple):
            value = " ".join(str(item) for item in value)
        elif isinstance(value, Mapping):
            value = json.dumps(value, sort_keys=True)
        parts.append(f"{e(name)}={e(value)}")
    return ", ".join(parts)


_HEALTH_KIND = {"healthy": "good", "degraded": "wait", "failing": "bad", "idle": "info"}


def relay_health(relay: Mapping[str, object]) -> str:
    """A relay's health from the status document (``RelayStatus.health``), with its circuit
    when that is not simply closed."""
    health = str(relay.get("health"))
    circuit = relay.get("circuit")
    text = health + (f" (circuit {circuit})" if circuit in ("open", "half-open") else "")
    return f'<span class="st st-{_HEALTH_KIND.get(health, "other")}">{e(text)}</span>'
