"""The questions asked of the event store, shared by ``mqd history``, the API and the web view.

Each takes a store and returns JSON-ready dicts: a message summary (``id``, ``message_id``,
``sender``, ``status``, ``created_at``, ``updated_at``, ``recipients``), or a history (a
summary plus its ``events`` in the order they happened).
"""

from __future__ import annotations

import re
from typing import Any

from mqd.tracking.store import BAD, EventStore
from mqd.tracking.vocabulary import Status

__all__ = ["failures", "history", "message", "recent", "recipient"]

_QUEUE_ID = re.compile(r"[0-9a-f]{21}(b\d+)?")


def _with_events(store: EventStore, summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for summary in summaries:
        summary["events"] = store.events_of(summary["id"])
    return summaries


def history(store: EventStore, key: str, limit: int = 20) -> list[dict[str, Any]]:
    """The histories of the messages ``key`` names, newest first: mqd's queue id, a Message-ID
    (with or without its angle brackets), or an address (the sender's or a recipient's)."""
    key = key.strip()
    if not key:
        return []
    if key.startswith("<") and key.endswith(">"):
        found = store.messages("message_id = ?", (key,), limit)
    elif _QUEUE_ID.fullmatch(key):
        found = store.messages("id = ?", (key,), limit)
    elif "@" in key:
        address = key.lower()
        found = store.messages(
            "message_id = ? OR LOWER(sender) = ? "
            "OR id IN (SELECT message FROM recipients WHERE address = ?)",
            (f"<{key}>", address, address),
            limit,
        )
    else:
        found = store.messages("id = ? OR message_id = ?", (key, f"<{key}>"), limit)
    return _with_events(store, found)


def message(store: EventStore, key: str) -> dict[str, Any] | None:
    """One message's history by queue id or Message-ID; None if unknown."""
    key = key.strip()
    bracketed = key if key.startswith("<") else f"<{key}>"
    found = store.messages("id = ? OR message_id = ?", (key, bracketed), 1)
    return _with_events(store, found)[0] if found else None


def recipient(store: EventStore, address: str, limit: int = 50) -> list[dict[str, Any]]:
    """Messages to ``address``, newest first."""
    return store.messages(
        "id IN (SELECT message FROM recipients WHERE address = ?)", (address.lower(),), limit
    )


def recent(store: EventStore, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
    """The newest messages, all or those showing ``status``."""
    if status is None:
        return store.messages("1 = 1", (), limit)
    return store.messages("status = ?", (Status(status).value,), limit)


_BAD = sorted(s.value for s in BAD)
_MARKS = ", ".join("?" for _ in _BAD)
# Placeholders only: the statuses are bound as values.
_WENT_WRONG = (
    f"(status IN ({_MARKS}) OR id IN "  # noqa: S608
    f"(SELECT message FROM recipients WHERE status IN ({_MARKS})))"
)


def failures(
    store: EventStore, since: float | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Messages that went wrong (a recipient bounced, dropped or complained; the message was
    rejected or failed), newest first, since ``since`` if given."""
    where = _WENT_WRONG
    args: list[Any] = [*_BAD, *_BAD]
    if since is not None:
        where += " AND updated_at >= ?"
        args.append(since)
    return store.messages(where, args, limit)
