"""The file store's hand-over keys (``mqd.queue.keys``): a journal in the queue directory,
``handover-keys``, and its index in memory, rebuilt from it at start.

A keyed batch is accepted in three steps (step 1 one batch at a time; the batches' writes may
overlap, as unkeyed ones do, but a batch holding a key that one under way holds waits for it):

1. a ``+ <expires> <id> <scope> <key> <note>`` line for each new key, appended and fsynced;
2. the entries written (``FileStore``'s accept: their bodies durable);
3. a ``= <id> ...`` line confirming those queued, appended; then ``accept`` returns.

So a key is on disk before its entry is. The confirming lines are fsynced before an entry
leaves the queue (``sync_confirmed``, which the store's removals call first, a few deliveries'
worth at a time), not at step 3: until then the entries are queued, which makes their records
count. At start a confirmed record counts; one that is not counts when its entry is queued (its
body made it), and is dropped when it is not (a crash between 1 and 2: the entry was never
durable, and its producer, never answered, sends it again).

Expired records are dropped when the journal is read and when it is rewritten (once it has
grown to twice what is live; a ``.`` line there confirms every record above it).

The keys an older mqd kept apart are carried over at start, then removed: the submit API's
(``submit-keys.<scope>.<n>.json``: ``{key: [expires, fingerprint, id, message_id]}``) and the
mailboxes' (``mailbox/<key>.ids``: ``<expires> <message_id>`` lines, without queue ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import quote, unquote

from mqd.clock import Clock
from mqd.fsutil import atomic_write, fsync_dirs
from mqd.queue.keys import Handed, HandoverKey, KeyIndex, split_batch
from mqd.queue.store import AcceptError, Incoming

__all__ = ["KeyJournal"]

log = logging.getLogger("mqd.queue")

#: Below this many lines the journal is never rewritten.
COMPACT_FLOOR = 1000
#: The queue id a key carried over from an older mailbox file answers with (it kept none).
UNKNOWN_ID = "(queued before the upgrade)"


def _q(text: str) -> str:
    return quote(text, safe="") or "%"  # (quote never gives a lone "%": it is the empty text)


def _uq(text: str) -> str:
    return "" if text == "%" else unquote(text)


def _record(key: HandoverKey, entry_id: str) -> str:
    return f"+ {key.expires:.3f} {_q(entry_id)} {_q(key.scope)} {_q(key.key)} {_q(key.note)}\n"


def _confirming(keyed: Sequence[tuple[HandoverKey, str]]) -> str:
    """The line confirming these records (by entry id: a ``.`` would confirm records of a crash
    left above it too)."""
    return "= " + " ".join(_q(entry_id) for _, entry_id in keyed) + "\n"


class KeyJournal:
    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock
        self.index = KeyIndex()
        self._lines = 0
        self._lock = asyncio.Lock()
        #: The keys of the batches under way (after step 1, before their outcome), each with
        #: what is set once its batch is done.
        self._under_way: dict[tuple[str, str], asyncio.Event] = {}
        #: Confirming lines appended, and how many of them are known durable.
        self._confirmed = 0
        self._synced = 0

    # -- start ----------------------------------------------------------------------------------

    def load(self, queued: Callable[[str], bool]) -> list[str]:
        """Read the journal (blocking); ``queued(id)``: whether an entry is in the queue.
        Returns notes for the operator."""
        self.index = KeyIndex()
        self._lines = 0
        try:
            text = self.path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return []
        now = self.clock.time()
        pending: dict[str, HandoverKey] = {}
        confirmed: list[tuple[HandoverKey, str]] = []
        for line in text.splitlines():
            kind, _, rest = line.partition(" ")
            self._lines += 1
            if kind == "+":
                parts = rest.split(" ")
                if len(parts) != 5:
                    continue  # a line torn by a crash mid-write
                expires, entry_id, scope, name, note = parts
                with contextlib.suppress(ValueError):
                    key = HandoverKey(_uq(scope), _uq(name), float(expires), _uq(note))
                    pending[_uq(entry_id)] = key
            elif kind == "=":
                for confirmed_id in map(_uq, rest.split()):
                    if confirmed_id in pending:
                        confirmed.append((pending.pop(confirmed_id), confirmed_id))
            elif kind == ".":
                confirmed.extend((key, pending_id) for pending_id, key in pending.items())
                pending.clear()
        kept = [(key, entry_id) for entry_id, key in pending.items() if queued(entry_id)]
        for known, entry_id in confirmed + kept:
            if known.expires > now:
                self.index.put(known, entry_id)
        dropped = len(pending) - len(kept)
        if dropped:
            return [f"{dropped} hand-over key(s) of messages not queued before a crash forgotten"]
        return []

    def carry_over(self) -> list[str]:
        """Take in the key files of an older mqd, then remove them (blocking)."""
        directory = self.path.parent
        found: list[tuple[HandoverKey, str]] = []
        files = sorted(directory.glob("submit-keys.*.json"))
        for path in files:
            scope = path.name.split(".")[1]
            with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
                for key, (expires, fingerprint, entry_id, message_id) in json.loads(
                    path.read_bytes()
                ).items():
                    note = f"{fingerprint} {message_id}"
                    found.append((HandoverKey(f"submit.{scope}", key, expires, note), entry_id))
        mailbox = sorted(directory.glob("mailbox/*.ids"))
        for path in mailbox:
            with contextlib.suppress(OSError):
                for line in path.read_text(encoding="ascii", errors="replace").splitlines():
                    expires, _, quoted = line.partition(" ")
                    with contextlib.suppress(ValueError):
                        key = HandoverKey(f"mailbox.{path.stem}", unquote(quoted), float(expires))
                        found.append((key, UNKNOWN_ID))
        if not files and not mailbox:
            return []
        now = self.clock.time()
        live = [(key, entry_id) for key, entry_id in found if key.expires > now]
        self._append("".join(_record(key, entry_id) for key, entry_id in live) + _confirming(live))
        for key, entry_id in live:
            self.index.put(key, entry_id)
        for path in files + mailbox:
            path.unlink()
        return [f"{len(live)} hand-over key(s) of an older mqd carried over into {self.path}"]

    # -- a batch --------------------------------------------------------------------------------

    async def accept(
        self,
        batch: Sequence[Incoming],
        queue: Callable[[Sequence[Incoming]], Awaitable[None]],
    ) -> dict[str, Handed]:
        """Accept ``batch`` through ``queue`` (the store's accept), its keys recorded around it."""
        names = {(i.key.scope, i.key.key) for i in batch if i.key is not None}
        while True:
            await self._lock.acquire()
            waits = [self._under_way[n] for n in names if n in self._under_way]
            if not waits:
                break
            self._lock.release()  # a repeat of a key under way: answered once that is done
            await asyncio.gather(*(wait.wait() for wait in waits))
        try:
            now = self.clock.time()
            # (Rewritten only while no batch is under way: the index lacks their keys yet.)
            if self.index.prune(now) and not self._under_way:
                await asyncio.to_thread(self._compact_if_grown)
            fresh, repeats = split_batch(((i, i.entry.id, i.key) for i in batch), self.index, now)
            keyed = [(i.key, i.entry.id) for i in fresh if i.key is not None]
            if keyed:
                lines = "".join(_record(key, entry_id) for key, entry_id in keyed)
                try:
                    await asyncio.to_thread(self._append, lines)
                except OSError as exc:
                    problem = f"cannot write the hand-over keys {self.path}: {exc}"
                    raise AcceptError(problem) from exc
            done = asyncio.Event()
            for key, _ in keyed:
                self._under_way[(key.scope, key.key)] = done
        finally:
            self._lock.release()
        try:
            await queue(fresh)
        except AcceptError as exc:
            accepted = set(exc.accepted)
            await self._confirm([(k, i) for k, i in keyed if i in accepted])
            raise
        else:
            await self._confirm(keyed)
        finally:
            for key, _ in keyed:
                self._under_way.pop((key.scope, key.key), None)
            done.set()
        return repeats

    async def _confirm(self, keyed: list[tuple[HandoverKey, str]]) -> None:
        if not keyed:
            return
        line = _confirming(keyed)
        try:  # on the event loop: a short write without its fsync (sync_confirmed does that)
            self._append(line, sync=False)
        except OSError as exc:  # queued: their records count at start while they are queued
            log.warning("cannot confirm hand-over keys in %s: %s", self.path, exc)
        else:
            self._confirmed += 1
        for key, entry_id in keyed:
            self.index.put(key, entry_id)

    def sync_confirmed(self) -> None:
        """Make the confirming lines appended so far durable (blocking; any thread): called
        before an entry leaves the queue, so that its key outlives it. Cheap when they are."""
        confirmed = self._confirmed
        if confirmed == self._synced:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._synced = max(self._synced, confirmed)

    def _append(self, text: str, *, sync: bool = True) -> None:
        new = self._lines == 0
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, text.encode("ascii"))
            if sync or new:
                os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dirs([self.path.parent])
        self._lines += text.count("\n")

    def _compact_if_grown(self) -> None:
        if self._lines <= max(COMPACT_FLOOR, 2 * len(self.index)):
            return
        text = "".join(
            _record(HandoverKey(scope, key, r.expires, r.note), r.id)
            for (scope, key), r in self.index
        )
        try:
            atomic_write(self.path, (text + ".\n").encode("ascii"))
        except OSError as exc:  # the journal stands as it was
            log.warning("cannot rewrite the hand-over keys %s: %s", self.path, exc)
            return
        self._lines = len(self.index) + 1
