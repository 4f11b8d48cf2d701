"""The AMQP message_ids a mailbox handed over, remembered durably for a while: a redelivery of
one (the broker never saw our ack: a connection lost between the hand-over and the ack, a
producer that published twice) is acked and queues nothing.

A file in the queue directory, ``mailbox/<key>.ids``, one ``<expiry> <message_id>`` line per
id, appended and fsynced before the delivery is acked; rewritten without the expired lines
when it has grown to twice what is live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from urllib.parse import quote, unquote

from mqd.fsutil import atomic_write, fsync_dirs, make_dirs

__all__ = ["SeenIds"]

log = logging.getLogger("mqd.mailbox")

#: Below this many lines the file is never rewritten.
COMPACT_FLOOR = 1000
#: How often (seconds) the expired ids are dropped from memory.
PRUNE_EVERY = 600.0


class SeenIds:
    def __init__(self, path: Path, window: float) -> None:
        self.path = path
        self.window = window
        self._ids: dict[str, float] = {}
        self._lines = 0
        self._next_prune = 0.0
        self._lock = asyncio.Lock()
        self._pending: list[tuple[str, asyncio.Future[None]]] = []

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        make_dirs(self.path.parent)
        now = time.time()
        self._ids.clear()
        self._lines = 0
        try:
            text = self.path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            expiry, _, quoted = line.partition(" ")
            try:
                until = float(expiry)
            except ValueError:
                continue  # a line torn by a crash mid-write
            self._lines += 1
            if until > now and quoted:
                self._ids[unquote(quoted)] = until

    def __contains__(self, message_id: str) -> bool:
        until = self._ids.get(message_id)
        return until is not None and until > time.time()

    async def remember(self, message_id: str) -> None:
        """Remember ``message_id``, durably once this returns (ids remembered together share
        one write and fsync). Raises OSError when it cannot be written."""
        done = asyncio.get_running_loop().create_future()
        self._pending.append((message_id, done))
        async with self._lock:
            if not done.done():
                batch, self._pending = self._pending, []
                try:
                    await asyncio.to_thread(self._append, [mid for mid, _ in batch])
                except OSError as exc:
                    for _, waiting in batch:
                        waiting.set_exception(exc)
                else:
                    for _, waiting in batch:
                        waiting.set_result(None)
        await done

    def _append(self, message_ids: list[str]) -> None:
        until = time.time() + self.window
        lines = "".join(f"{until:.0f} {quote(mid, safe='')}\n" for mid in message_ids)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, lines.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._lines == 0:
            fsync_dirs([self.path.parent])  # the file is new
        for mid in message_ids:
            self._ids[mid] = until
        self._lines += len(message_ids)
        now = time.time()
        if now >= self._next_prune:  # the expired ones go from memory now and then
            self._next_prune = now + PRUNE_EVERY
            self._ids = {mid: until for mid, until in self._ids.items() if until > now}
        if self._lines > max(COMPACT_FLOOR, 2 * len(self._ids)):
            with contextlib.suppress(OSError):  # the appended lines stand
                self._compact()

    def _compact(self) -> None:
        now = time.time()
        self._ids = {mid: until for mid, until in self._ids.items() if until > now}
        text = "".join(f"{until:.0f} {quote(mid, safe='')}\n" for mid, until in self._ids.items())
        atomic_write(self.path, text.encode("ascii"))
        self._lines = len(self._ids)
