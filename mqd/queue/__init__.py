"""The durable queue: entry state, the store behind an interface, and the retry schedule."""

from .entry import QueueEntry, RcptStatus, RecipientState, new_message_id
from .filestore import DSN_SOURCE, FileStore
from .schedule import Backoff
from .store import QueueStore, Recovery

__all__ = [
    "DSN_SOURCE",
    "Backoff",
    "FileStore",
    "QueueEntry",
    "QueueStore",
    "RcptStatus",
    "RecipientState",
    "Recovery",
    "new_message_id",
]
