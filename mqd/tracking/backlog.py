"""``Backlog``: the events the tracker keeps, in order, while its store cannot be written.

A store that goes away for a while (PostgreSQL restarting, a disk full until someone makes room)
must not cost the timeline of the messages sent meanwhile: their events wait here and are
written, oldest first, when the store is back. The wait is bounded (``[tracking]
keep_while_paused`` events, and ``BYTES_PER_EVENT`` of their estimated size for each): past
it, new events are dropped and counted, and the first drop of a pause is said once. Keeping the
oldest and dropping the newest leaves what is kept a contiguous prefix of the stream, written
in the order it happened.

A batch whose commit failed where it may have gone through (the connection lost during
``COMMIT``) stays at the head ``in doubt`` with the store's token for it: the keeper asks the
store whether it committed before it writes it again, so that no event is written twice.

Only the keeper, on the tracker's writer thread, touches it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable

from mqd.tracking.records import Record

__all__ = ["BYTES_PER_EVENT", "MAX_BYTES", "MAX_EVENTS", "Backlog", "weight"]

# The tracker's logger: operators key on its name.
log = logging.getLogger("mqd.tracking.tracker")

#: Events kept while the store cannot be written, at most, by default (``[tracking]
#: keep_while_paused``: a PostgreSQL restart of a minute at 1,500 events a second fits).
MAX_EVENTS = 100_000
#: ... and their estimated size (``weight``), at most this much an event on average: 64 MiB for
#: the default, so that large events (long replies, big details) take no more than planned.
BYTES_PER_EVENT = 672
MAX_BYTES = MAX_EVENTS * BYTES_PER_EVENT
#: What a record costs in memory besides its strings (the object, its fields, the deque's slot).
_OVERHEAD = 400


def weight(record: Record) -> int:
    """An estimate of ``record``'s size in memory, in bytes (its strings and its detail)."""
    size = _OVERHEAD + len(record.message) + sum(len(r) for r in record.recipients)
    for text in (record.recipient, record.reply, record.sender, record.subject, record.relay):
        if text is not None:
            size += len(text)
    if record.detail:
        size += len(repr(record.detail))
    return size


class Backlog:
    """Records waiting for the store, oldest first, at most ``max_events`` and ``max_bytes``
    (default: ``BYTES_PER_EVENT`` for each of ``max_events``; 0 events: none is kept)."""

    def __init__(self, *, max_events: int = MAX_EVENTS, max_bytes: int | None = None) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes if max_bytes is not None else max_events * BYTES_PER_EVENT
        self._records: deque[tuple[Record, int]] = deque()
        self.bytes = 0
        #: The store's token for the head batch whose commit may have gone through, and how
        #: many records that batch was.
        self.doubt: object | None = None
        self.doubt_size = 0
        #: Records dropped past the bound since the last ``settle``, and in all.
        self.dropped = 0
        self.dropped_in_all = 0
        #: Records kept (not written at once) since the last ``settle``.
        self.kept = 0

    def __len__(self) -> int:
        return len(self._records)

    def add(self, records: Iterable[Record]) -> None:
        """Keep ``records`` behind the others; those past the bound are dropped and counted."""
        for record in records:
            size = weight(record)
            if len(self._records) >= self.max_events or self.bytes + size > self.max_bytes:
                if not self.dropped and self.max_events:  # (0: the pause said it drops)
                    log.warning(
                        "tracking: %d events (%.1f MiB) are kept until the event store can be "
                        "written, the most it keeps (%d events, %.0f MiB): further events are "
                        "dropped and counted until it works again",
                        len(self._records),
                        self.bytes / 2**20,
                        self.max_events,
                        self.max_bytes / 2**20,
                    )
                self.dropped += 1
                self.dropped_in_all += 1
                continue
            self._records.append((record, size))
            self.bytes += size
            self.kept += 1

    def head(self, count: int) -> list[Record]:
        """The oldest ``count`` records (fewer if there are not as many)."""
        return [self._records[i][0] for i in range(min(count, len(self._records)))]

    def pop(self, count: int) -> None:
        """Forget the oldest ``count`` records (written, or given up on)."""
        for _ in range(min(count, len(self._records))):
            _, size = self._records.popleft()
            self.bytes -= size
        self.doubt = None
        self.doubt_size = 0

    def settle(self) -> tuple[int, int]:
        """(kept, dropped) since the last call, the counts starting again from 0."""
        counts = (self.kept, self.dropped)
        self.kept = self.dropped = 0
        return counts
