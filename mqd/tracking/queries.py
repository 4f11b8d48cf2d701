"""The questions asked of the event store, shared by ``mqd history``, the API and the web view.

Each takes an ``EventStore`` and returns ``MessageSummary`` values, or ``MessageHistory``
values (a summary plus its ``events`` in the order they happened): ``mqd.tracking.answers``.
What a key means (a queue id, a Message-ID, an address) is decided here, once, for every
store.
"""

from __future__ import annotations

import re

from mqd.tracking.answers import MessageHistory, MessageSummary
from mqd.tracking.eventstore import EventStore
from mqd.tracking.vocabulary import Status

__all__ = ["failures", "history", "message", "of_account", "recent", "recipient"]

_QUEUE_ID = re.compile(r"[0-9a-f]{21}(b\d+)?")


def _with_events(store: EventStore, summaries: list[MessageSummary]) -> list[MessageHistory]:
    return [MessageHistory.of(summary, store.events_of(summary.id)) for summary in summaries]


def history(store: EventStore, key: str, limit: int = 20) -> list[MessageHistory]:
    """The histories of the messages ``key`` names, newest first: mqd's queue id, a Message-ID
    (with or without its angle brackets), or an address (the sender's or a recipient's)."""
    key = key.strip()
    if not key:
        return []
    if key.startswith("<") and key.endswith(">"):
        found = store.find_messages(message_ids=[key], limit=limit)
    elif _QUEUE_ID.fullmatch(key):
        found = store.find_messages(ids=[key], limit=limit)
    elif "@" in key:
        # An address, or a Message-ID without its brackets (it looks like one).
        found = store.find_messages(
            message_ids=[f"<{key}>"], sender=key, recipient=key, limit=limit
        )
    else:
        found = store.find_messages(ids=[key], message_ids=[f"<{key}>"], limit=limit)
    return _with_events(store, found)


def message(store: EventStore, key: str) -> MessageHistory | None:
    """One message's history by queue id or Message-ID; None if unknown."""
    key = key.strip()
    bracketed = key if key.startswith("<") else f"<{key}>"
    found = store.find_messages(ids=[key], message_ids=[bracketed], limit=1)
    return _with_events(store, found)[0] if found else None


def recipient(store: EventStore, address: str, limit: int = 50) -> list[MessageSummary]:
    """Messages to ``address``, newest first."""
    return store.find_messages(recipient=address, limit=limit)


def recent(
    store: EventStore, limit: int = 50, status: str | None = None, account: str | None = None
) -> list[MessageSummary]:
    """The newest messages, all or those showing ``status`` (ValueError if it is not one), of
    ``account`` only if given (the history per user of a sending platform)."""
    wanted = None if status is None else Status(status)
    return store.recent_messages(status=wanted, account=account, limit=limit)


def failures(
    store: EventStore, since: float | None = None, limit: int = 50
) -> list[MessageSummary]:
    """Messages that went wrong (a recipient bounced, dropped or complained; the message was
    rejected or failed), newest first, since ``since`` if given."""
    return store.failed_messages(since=since, limit=limit)


def of_account(
    store: EventStore, account: str, key: str | None = None, limit: int = 20
) -> list[MessageHistory]:
    """The newest messages of ``account`` with their events: the history per user of a sending
    platform; of those ``key`` names (as ``history`` takes it) when given."""
    if key is not None:
        return [h for h in history(store, key, limit) if h.account == account]
    summaries = store.recent_messages(account=account, limit=limit)
    found = [message(store, summary.id) for summary in summaries]
    return [h for h in found if h is not None]
