"""``Activity`` from an event store's tables: a few aggregate statements over the events (by
their ``at`` index), each grouped by time bucket in SQL, so that a day of traffic comes back as a
few hundred rows, not as its events.

The statements are written once for both stores (``statements``): SQLite's names its tables
``events`` and ``messages`` and binds ``:start``; PostgreSQL's ``mqd_track_event`` and
``mqd_track_message`` with ``%(start)s``. The bucket of an event is its time from the window's
start over the step, truncated: SQLite's ``CAST(... AS INTEGER)`` truncates, PostgreSQL's cast
rounds, so it says ``FLOOR``; ``at >= start`` keeps it from going below zero either way.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, NamedTuple

from mqd.tracking.activity import LATENCY_BOUNDS, OUTCOME_STATUSES, Activity, Window

__all__ = ["ActivitySQL", "collect", "read_activity", "statements"]

_OUTCOME = (
    "CASE "
    + " ".join(
        f"WHEN e.status IN ({', '.join(repr(s) for s in statuses)}) THEN '{outcome}'"
        for outcome, statuses in OUTCOME_STATUSES.items()
    )
    + " END"
)
_STATUSES = ", ".join(repr(s) for statuses in OUTCOME_STATUSES.values() for s in statuses)
_BIN = (
    "CASE "
    + " ".join(f"WHEN lat < {bound!r} THEN {i}" for i, bound in enumerate(LATENCY_BOUNDS))
    + f" ELSE {len(LATENCY_BOUNDS)} END"
)


class ActivitySQL(NamedTuple):
    """The three statements of one store's dialect."""

    by_sender: str
    by_relay: str
    latency: str


def statements(
    *, events: str, messages: str, mark: Callable[[str], str], bucket: str
) -> ActivitySQL:
    """The statements for the tables ``events`` and ``messages``, with ``mark(name)`` binding a
    parameter and ``bucket`` (``{at}``, ``{start}`` and ``{step}`` in it) truncating to an
    integer."""
    start, end, step = mark("start"), mark("end"), mark("step")
    b = bucket.format(at="e.at", start=start, step=step)
    in_window = f"e.at >= {start} AND e.at < {end} AND e.status IN ({_STATUSES})"
    # Constants only (statuses, bounds, table names): every value is bound. Each message has one
    # sender, so the per-sender counts summed are the counts by outcome (a message without its
    # row, which pruning never leaves, counts by outcome alone).
    by_sender = (
        f"SELECT {b} AS b, m.sender, {_OUTCOME} AS outcome, "  # noqa: S608
        f"COUNT(DISTINCT e.message), m.account FROM {events} e "
        f"LEFT JOIN {messages} m ON m.id = e.message "
        f"WHERE {in_window} GROUP BY b, m.sender, m.account, outcome"
    )
    by_relay = (
        f"SELECT {b} AS b, e.relay, {_OUTCOME} AS outcome, "  # noqa: S608
        f"COUNT(DISTINCT e.message) FROM {events} e WHERE {in_window} AND e.relay IS NOT NULL "
        "GROUP BY b, e.relay, outcome"
    )
    # Grouped by the dispatched event first, so that its latency is worked out once (a
    # correlated subquery would be run again for every WHEN of the bins).
    latency = (
        f"SELECT b, {_BIN} AS bin, COUNT(*) FROM ("  # noqa: S608
        f"SELECT {b} AS b, e.at - MIN(a.at) AS lat FROM {events} e "
        f"JOIN {events} a ON a.message = e.message AND a.status = 'accepted' "
        f"WHERE e.at >= {start} AND e.at < {end} AND e.status = 'dispatched' GROUP BY e.seq"
        ") AS d GROUP BY b, bin"
    )
    return ActivitySQL(by_sender, by_relay, latency)


_SQLITE = statements(
    events="events",
    messages="messages",
    mark=lambda name: f":{name}",
    bucket="CAST(({at} - {start}) / {step} AS INTEGER)",
)


def collect(window: Window, sql: ActivitySQL, run: Callable[[str], list[Any]]) -> Activity:
    """The traffic of ``window``, ``run(statement)`` giving each statement's rows (bound to the
    window's ``start``, ``end`` and ``step``)."""
    activity = Activity.empty(window)
    count = window.count

    def rows(statement: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in run(statement) if 0 <= int(row[0]) < count]

    by_sender = rows(sql.by_sender)  # (a message has one sender and one account)
    for b, _, outcome, n, _account in by_sender:
        activity.outcomes[outcome][int(b)] += int(n)
    by_account = [(b, account, outcome, n) for b, _, outcome, n, account in by_sender if account]
    for series, totals, found in (
        (activity.relays, activity.relay_totals, rows(sql.by_relay)),
        (activity.senders, activity.sender_totals, [row[:4] for row in by_sender]),
        (activity.accounts, activity.account_totals, by_account),
    ):
        for b, key, outcome, n in found:
            if key is None:
                continue
            counts = totals.setdefault(str(key), {})
            counts[outcome] = counts.get(outcome, 0) + int(n)
            line = series.setdefault(str(key), [0] * count)
            if outcome == "delivered":
                line[int(b)] += int(n)
    for b, bin_index, n in rows(sql.latency):
        activity.latency[int(b)][int(bin_index)] += int(n)
    return activity


def read_activity(db: sqlite3.Connection, window: Window) -> Activity:
    """The traffic of ``window`` in the SQLite store ``db``."""
    params: dict[str, Any] = {"start": window.start, "end": window.end, "step": window.step}
    return collect(window, _SQLITE, lambda sql: db.execute(sql, params).fetchall())
