"""Queued bodies not read yet in this run, oldest first.

A message accepted and never attempted has no state file: its body is its whole record. At
start-up the daemon does not read all such bodies at once, and while ``queue.active_limit``
never-attempted messages are held it does not keep more of those it takes in from a spool: they
are listed here, an id and a spool key each (~150 bytes, against ~1.4 kB for a read entry), and
read oldest first a little ahead of the deliveries. Start-up time and memory then follow the
limit, not the size of the queue (what Postfix's active queue limit does for its queue manager).
"""

from __future__ import annotations

import collections
import sys

from mqd.queue.entry import id_time

__all__ = ["Backlog"]


class Backlog:
    def __init__(self) -> None:
        #: Ids in the order they are to be read (ids sort by creation time). An id taken out of
        #: turn (``take_id``) stays here and is skipped when its turn comes.
        self._order: collections.deque[str] = collections.deque()
        #: id -> the key of the spool it came from (its directory in the queue).
        self._source: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._source)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._source

    def add(self, source: str, ids: list[str]) -> None:
        """List ``ids`` (sorted) from spool key ``source`` after those already listed."""
        source = sys.intern(source)
        self._order.extend(ids)
        self._source.update(dict.fromkeys(ids, source))

    def add_each(self, items: list[tuple[str, str]]) -> None:
        """List (source, id) pairs (sorted by id) after those already listed."""
        for source, entry_id in items:
            self._order.append(entry_id)
            self._source[entry_id] = sys.intern(source)

    def source_of(self, entry_id: str) -> str | None:
        return self._source.get(entry_id)

    def take(self, count: int) -> list[tuple[str, str]]:
        """Up to ``count`` of the oldest, as (spool key, id), out of the backlog."""
        taken: list[tuple[str, str]] = []
        order, source = self._order, self._source
        while order and len(taken) < count:
            entry_id = order.popleft()
            key = source.pop(entry_id, None)
            if key is not None:
                taken.append((key, entry_id))
        return taken

    def put_back(self, taken: list[tuple[str, str]]) -> None:
        """Return what ``take`` gave (a read that failed): first in line again, in order."""
        for key, entry_id in reversed(taken):
            self._order.appendleft(entry_id)
            self._source[entry_id] = key

    def take_id(self, entry_id: str) -> str | None:
        """Take one id out of turn (an administrator asked for it); its spool key, or None."""
        key = self._source.pop(entry_id, None)
        if not self._source:
            self._order.clear()
        return key

    def items(self) -> list[tuple[str, str]]:
        """(spool key, id) of every one, oldest first, leaving them listed."""
        source = self._source
        return [(source[i], i) for i in self._order if i in source]

    def starting_with(self, prefix: str) -> list[str]:
        return [entry_id for entry_id in self._source if entry_id.startswith(prefix)]

    def oldest(self) -> str | None:
        for entry_id in self._order:
            if entry_id in self._source:
                return entry_id
        return None

    def oldest_created(self) -> float | None:
        """When the oldest was taken in (from its id), or None when the backlog is empty."""
        oldest = self.oldest()
        return None if oldest is None else id_time(oldest) or 0.0
