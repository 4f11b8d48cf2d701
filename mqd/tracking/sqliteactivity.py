"""``Activity`` from the SQLite event store: a few aggregate statements over ``events`` (by its
``at`` index), each grouped by time bucket in SQL, so that a day of traffic comes back as a few
hundred rows, not as its events.

The bucket of an event is ``CAST((at - start) / step AS INTEGER)``: SQLite's cast truncates,
and ``at >= start`` keeps it from going below zero. (PostgreSQL's cast rounds: a PostgreSQL
store says ``FLOOR`` instead.)
"""

from __future__ import annotations

import sqlite3
from typing import Any

from mqd.tracking.activity import LATENCY_BOUNDS, OUTCOME_STATUSES, Activity, Window

__all__ = ["read_activity"]

_BUCKET = "CAST((e.at - :start) / :step AS INTEGER)"
_OUTCOME = (
    "CASE "
    + " ".join(
        f"WHEN e.status IN ({', '.join(repr(s) for s in statuses)}) THEN '{outcome}'"
        for outcome, statuses in OUTCOME_STATUSES.items()
    )
    + " END"
)
_STATUSES = ", ".join(repr(s) for statuses in OUTCOME_STATUSES.values() for s in statuses)
_IN_WINDOW = f"e.at >= :start AND e.at < :end AND e.status IN ({_STATUSES})"

# Constants only (statuses, bounds): every value is bound. Each message has one sender, so the
# per-sender counts summed are the counts by outcome (a message without its row, which pruning
# never leaves, counts by outcome alone).
_BY_SENDER = (
    f"SELECT {_BUCKET} AS b, m.sender, {_OUTCOME} AS outcome, "  # noqa: S608
    "COUNT(DISTINCT e.message), m.account FROM events e LEFT JOIN messages m ON m.id = e.message "
    f"WHERE {_IN_WINDOW} GROUP BY b, m.sender, m.account, outcome"
)
_BY_RELAY = (
    f"SELECT {_BUCKET} AS b, e.relay, {_OUTCOME} AS outcome, "  # noqa: S608
    f"COUNT(DISTINCT e.message) FROM events e WHERE {_IN_WINDOW} AND e.relay IS NOT NULL "
    "GROUP BY b, e.relay, outcome"
)
_BIN = (
    "CASE "
    + " ".join(f"WHEN lat < {bound!r} THEN {i}" for i, bound in enumerate(LATENCY_BOUNDS))
    + f" ELSE {len(LATENCY_BOUNDS)} END"
)
# Grouped by the dispatched event first, so that its latency is worked out once (a correlated
# subquery would be run again for every WHEN of the bins).
_LATENCY = (
    f"SELECT b, {_BIN} AS bin, COUNT(*) FROM ("  # noqa: S608
    f"SELECT {_BUCKET} AS b, e.at - MIN(a.at) AS lat FROM events e "
    "JOIN events a ON a.message = e.message AND a.status = 'accepted' "
    "WHERE e.at >= :start AND e.at < :end AND e.status = 'dispatched' GROUP BY e.seq"
    ") GROUP BY b, bin"
)


def read_activity(db: sqlite3.Connection, window: Window) -> Activity:
    """The traffic of ``window`` in the store ``db``."""
    params: dict[str, Any] = {"start": window.start, "end": window.end, "step": window.step}
    activity = Activity.empty(window)
    count = window.count

    def rows(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in db.execute(sql, params) if 0 <= int(row[0]) < count]

    by_sender = rows(_BY_SENDER)  # (a message has one sender and one account)
    for b, _, outcome, n, _account in by_sender:
        activity.outcomes[outcome][int(b)] += int(n)
    by_account = [(b, account, outcome, n) for b, _, outcome, n, account in by_sender if account]
    for series, totals, found in (
        (activity.relays, activity.relay_totals, rows(_BY_RELAY)),
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
    for b, bin_index, n in rows(_LATENCY):
        activity.latency[int(b)][int(bin_index)] += int(n)
    return activity
