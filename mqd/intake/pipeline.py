"""From spool file to queue entry: claim, open safely, parse, check policy, persist.

A batch is claimed (renamed), read and parsed on the event loop, then checked against policy
there (plugins run there) and handed to delivery, while worker threads fsync each body and, once,
their directory (no state file is written until a message is first deferred). Refused files go
to failed/ with the reason in one more hop, taken only when there are any. Only the fsyncs leave
the loop: every system call a worker thread makes gives up the GIL and must win it back from the
busy loop. With the renames, opens, reads and parsing in the hop too, a drain of 10,000 messages
ran at 0.65-0.75x the rate on an ext4 with a journal, and on one without spent 20-25% more CPU
per message in 40% more context switches.

Delivery does not wait for those fsyncs (on POSIX; Windows neither renames nor deletes an open
file, so there it does): a producer fsyncs a file before renaming it into the spool (the producer
contract), so the body is durable already and the claim is one rename, which a crash either
undoes (the file is back in the spool) or keeps. The fsyncs make the claim durable, and the body
too when a producer skipped its fsync; a first attempt that starts before they end changes no
crash's outcome, only how soon mail goes out: a message sent before a crash may be sent again
after it (at-least-once, as after any crash between the relay's reply and the state update).
One batch's fsyncs are in flight at a time. When they fail, the batch is delivered anyway (its
data is still in the page cache, and another fsync of the same file could not promise more: the
kernel reports a failed writeback once), the error is logged and intake pauses a scan interval.

Refused mail never gets a bounce: it was never accepted, and a bounce would be backscatter.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mqd.config.schema import Config
from mqd.errors import SpoolError
from mqd.events import Event, EventKind, EventSink
from mqd.intake.routing import route_for
from mqd.intake.spool import Claimed, Spool, open_claimed, read_claimed
from mqd.message.envelope import ParsedMessage, is_delivery_report, parse_message
from mqd.plugins.host import PluginHost
from mqd.queue.entry import QueueEntry, RcptStatus, RecipientState, id_time, message_id_maker
from mqd.queue.file.store import DSN_SOURCE, KEEP_BODY_MAX, FileStore

__all__ = ["Intake", "entry_from_body", "make_entry", "queued_entries"]

log = logging.getLogger("mqd.intake")

#: Recovered bodies read, parsed and queued per worker-thread hop.
RECOVERY_BATCH = 512


def _sync_all() -> bool:
    """Flush every filesystem's dirty data at once (POSIX ``sync``), so that bodies recovered at
    start-up need no fsync each (100,000 of them cost ~25 s of fsyncs). False where there is no
    ``os.sync`` (Windows): each body is fsynced as it is read."""
    sync = getattr(os, "sync", None)
    if sync is None:
        return False
    sync()
    return True


@dataclass
class _Read:
    claimed: Claimed
    size: int = 0
    parsed: ParsedMessage | None = None
    error: str | None = None
    stage: str = "intake"
    #: The content, when small enough for the store to keep for the first delivery.
    data: bytes | None = None
    #: The file, still open for its fsync (claimed on the event loop, synced off it).
    fd: int | None = None


#: Whether a batch goes to delivery while its fsyncs run (not on Windows, where a file still
#: open for its fsync can be neither renamed into failed/ nor deleted once delivered).
SEND_WHILE_SYNCING = os.name == "posix"

#: A batch's bodies are fsynced in up to this many worker threads at once...
SYNC_THREADS = 4
#: ...each taking at least this many (a thread more costs a hand-over of the GIL or two).
SYNC_CHUNK = 32


def _close(reads: list[_Read]) -> None:
    """Close the files ``reads`` still hold open (each once)."""
    for read in reads:
        if read.fd is not None:
            fd, read.fd = read.fd, None
            os.close(fd)


class Intake:
    def __init__(self, config: Config, store: FileStore, host: PluginHost, emit: EventSink) -> None:
        self.config = config
        self.store = store
        self.host = host
        self.emit = emit
        #: Set when the queue could not be written (files went back into their spool, or, when
        #: only a batch's fsyncs failed, are delivered all the same); the daemon then waits a
        #: scan interval before taking files again (no busy loop on a full disk).
        self.write_failed = False
        #: Whether recovered bodies are durable already (None: not synced yet this start).
        self._synced: bool | None = None
        #: The last batch's fsyncs, while they run.
        self._syncing: asyncio.Future[None] | None = None

    async def take_names(self, spool: Spool, names: list[str]) -> list[QueueEntry]:
        """Claim ``names`` from ``spool`` and queue what is acceptable, its fsyncs still running
        (see the module's docstring). Files another process claimed first are skipped
        silently."""
        await self.settle()  # one batch's fsyncs at a time: its files are open until they end
        reads: list[_Read] = []
        if not spool.claims_by_copy:
            reads, names = self._claim_and_open(spool, names)
            if reads:
                self._syncing = asyncio.ensure_future(self._sync_opened(reads))
                if not SEND_WHILE_SYNCING:
                    await self.settle()
        if names:  # across filesystems each claim is a copy and its fsyncs: all off the loop
            reads += await asyncio.to_thread(self._claim_and_read, spool, names)
        return await self._finish(reads)

    async def settle(self) -> None:
        """Wait for the last batch's fsyncs (before the next batch, and before stopping)."""
        syncing, self._syncing = self._syncing, None
        if syncing is not None:
            # Shielded: a cancelled wait must not cancel them (their threads would run on).
            await asyncio.shield(syncing)

    async def take_claimed(self, claimed: list[Claimed]) -> list[QueueEntry]:
        """Queue files already claimed: bodies recovered with no state file (accepted and never
        deferred, or claimed by an intake a crash interrupted). They keep the age their id
        records."""
        accepted: list[QueueEntry] = []
        if claimed and self._synced is None:  # once per start: one sync for all the bodies
            self._synced = await asyncio.to_thread(_sync_all)
        synced = bool(self._synced)
        # In batches: all of a large queue's bodies read at once would be held at once.
        for start in range(0, len(claimed), RECOVERY_BATCH):
            batch = claimed[start : start + RECOVERY_BATCH]
            reads = await asyncio.to_thread(self._read_recovered, batch, not synced)
            accepted += await self._finish(reads, recovered=True)
        return accepted

    def _read_recovered(self, claimed: list[Claimed], sync: bool) -> list[_Read]:
        return self._make_durable([self._read(c, sync) for c in claimed])

    def _claim_and_open(self, spool: Spool, names: list[str]) -> tuple[list[_Read], list[str]]:
        """Claim and read ``names`` (on the event loop: renames and reads of files just written
        are quick), leaving each file open for ``_sync_opened``. Stops when a claim finds the
        spool on another filesystem than the queue, and returns the names not yet tried."""
        reads: list[_Read] = []
        try:
            return self._claim(spool, names, reads, keep_open=True)
        except BaseException:  # the claimed ones wait in the queue for recovery at start-up
            _close(reads)
            raise

    def _claim(
        self, spool: Spool, names: list[str], reads: list[_Read], keep_open: bool
    ) -> tuple[list[_Read], list[str]]:
        """Claim and read ``names`` into ``reads``; with ``keep_open``, stop as soon as the
        spool turns out to need copies, and return the names not yet tried."""
        new_id = message_id_maker(len(names))
        for index, name in enumerate(names):
            try:
                claimed = spool.claim(name, new_id())
            except SpoolError as exc:
                log.error("%s", exc)
                continue
            if claimed is not None:
                reads.append(self._read(claimed, keep_open=keep_open))
            if keep_open and spool.claims_by_copy:
                return reads, names[index + 1 :]
        return reads, []

    async def _sync_opened(self, reads: list[_Read]) -> None:
        """Fsync the bodies ``_claim_and_open`` left open (rejected ones too: they are kept in
        failed/) and their directories, and close them. A large batch is split over a few
        worker threads: the disk takes several flushes at a time (256 bodies: 0.15 s one after
        the other, 0.06 s in four threads, on an ext4 with a journal)."""
        fds = [read.fd for read in reads if read.fd is not None]
        for read in reads:  # the threads own the descriptors now, and close them
            read.fd = None
        bodies = [read.claimed.path for read in reads]  # for their directories
        size = max(SYNC_CHUNK, -(-len(fds) // SYNC_THREADS))
        chunks = [fds[at : at + size] for at in range(0, len(fds), size)] or [[]]
        outcomes = await asyncio.gather(
            asyncio.to_thread(self._fsync_all, chunks[0], bodies),  # the directories with the first
            *(asyncio.to_thread(self._fsync_all, chunk, []) for chunk in chunks[1:]),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, OSError):
                log.error(
                    "cannot fsync in the queue directory %s (%s): the %d message(s) claimed "
                    "with it are delivered all the same, but until then a crash may lose them; "
                    "taking no more files for a scan interval",
                    self.store.messages_dir,
                    outcome,
                    len(reads),
                )
                self.write_failed = True
                return
            if isinstance(outcome, BaseException):
                raise outcome

    def _fsync_all(self, fds: list[int], bodies: list[Path]) -> None:
        """Fsync and close ``fds``, then fsync the directories of ``bodies``."""
        try:
            for fd in fds:
                os.fsync(fd)
        finally:
            for fd in fds:
                os.close(fd)
        if bodies:
            self.store.sync_claimed(bodies)

    def _claim_and_read(self, spool: Spool, names: list[str]) -> list[_Read]:
        """Claim, read and fsync ``names`` in one worker-thread hop (claims that copy)."""
        reads, _ = self._claim(spool, names, [], keep_open=False)
        return self._make_durable(reads)

    def _make_durable(self, reads: list[_Read]) -> list[_Read]:
        """Fsync the directories the batch was claimed into, in the same worker-thread hop as
        the claims and reads: with the bodies already fsynced, the batch then survives a crash
        (recovery takes it in again, policy included), so accepting it later on the event loop
        needs no more I/O. If the fsync fails, the files go back into their spool."""
        try:
            self.store.sync_claimed([read.claimed.path for read in reads])
        except OSError as exc:
            return self._cannot_write(reads, exc)
        return reads

    def _cannot_write(self, reads: list[_Read], exc: OSError) -> list[_Read]:
        log.error(
            "cannot write the queue directory %s (%s): %d message(s) go back into their "
            "spool and are taken again at the next scan",
            self.store.messages_dir,
            exc,
            len(reads),
        )
        self.write_failed = True
        _close(reads)  # (Windows renames no open file)
        for read in reads:
            self._unclaim(read)
        return []

    def _read(self, claimed: Claimed, sync: bool = True, keep_open: bool = False) -> _Read:
        """Read and parse a claimed file; fsynced first (``sync``), or left open in ``read.fd``
        for the caller to fsync (``keep_open``)."""
        read = _Read(claimed)
        max_size = self.config.queue.max_message_size
        try:
            if keep_open:
                data, read.fd = open_claimed(claimed.path, max_size)
            else:
                data = read_claimed(claimed.path, max_size, sync=sync)
            read.size = len(data)
            read.parsed = parse_message(data)
            if read.size <= KEEP_BODY_MAX:
                read.data = data
        except SpoolError as exc:  # MessageParseError included
            read.error = str(exc)
        except Exception as exc:  # a bug must not lose the file: it goes to failed/ too
            log.exception("unexpected error reading %s", claimed.path)
            read.error = f"mqd could not read it: {exc!r}"
        return read

    async def _finish(self, reads: list[_Read], recovered: bool = False) -> list[QueueEntry]:
        now = time.time()
        accepted: list[QueueEntry] = []
        rejected: list[_Read] = []
        for read in reads:
            spool = read.claimed.spool
            if not recovered:  # a recovered body's claim was told when it was claimed
                self.emit(
                    Event(
                        EventKind.CLAIMED,
                        read.claimed.entry_id,
                        {"file": read.claimed.original_name, "spool": str(spool.path)},
                    )
                )
            route: tuple[str, ...] = ()
            if read.parsed is not None:
                route = route_for(self.config, spool, read.parsed.sender)
                refusal = self.host.check_policy(read.parsed, spool, route[0], self.config)
                if refusal:
                    read.error, read.stage = refusal, "policy"
            if read.error is not None or read.parsed is None:
                rejected.append(read)
            else:
                created = min((recovered and id_time(read.claimed.entry_id)) or now, now)
                accepted.append(
                    make_entry(read.claimed, read.size, read.parsed, route, created, now)
                )
        accepted_reads = [r for r in reads if r.error is None and r.parsed is not None]
        self.store.add_claimed(accepted)  # durable, or being made so (the module's docstring)
        if rejected:
            rejected = await asyncio.to_thread(self._reject, rejected)
        for read in rejected:
            self._log_rejection(read)
        kept = {r.claimed.entry_id: r.data for r in accepted_reads if r.data is not None}
        for entry in accepted:
            body = kept.get(entry.id)
            if body is not None:
                self.store.keep_body(entry.id, body)
            if recovered:
                # Its "queued" was told (logged, and recorded by tracking) when it was first
                # taken in; telling 100,000 of them again at every start costs seconds. The
                # daemon logs how many it recovered. (Tracking is best-effort across a crash
                # anyway: its last ~0.1 s of events are lost with it.)
                continue
            log.info(
                "%s queued from=<%s> to=%s size=%d relay=%s file=%s",
                entry.id,
                entry.sender,
                ",".join(f"<{r.address}>" for r in entry.recipients),
                entry.size,
                ",".join(entry.relays),
                entry.spool_name,
            )
            self.emit(Event(EventKind.QUEUED, entry.id, entry.summary()))
        return accepted

    def _reject(self, rejected: list[_Read]) -> list[_Read]:
        """Move refused files to failed/ with the reason; one that cannot be moved goes back
        into its spool. Returns those moved."""
        moved = []
        for read in rejected:
            try:
                self.store.reject_sync(read.claimed.entry_id, read.claimed.path, self._reason(read))
            except OSError as exc:
                log.error("cannot move %s to failed/: %s", read.claimed.path, exc)
                self._unclaim(read)
            else:
                moved.append(read)
        return moved

    @staticmethod
    def _unclaim(read: _Read) -> None:
        claimed = read.claimed
        back = claimed.spool.path / claimed.original_name
        try:
            os.rename(claimed.path, back)
        except OSError as exc:  # e.g. claimed across filesystems: recovery takes it at start-up
            log.error(
                "cannot put %s back into the spool (%s); it stays at %s and is taken in when "
                "mqd next starts",
                claimed.original_name,
                exc,
                claimed.path,
            )

    @staticmethod
    def _reason(read: _Read) -> dict[str, Any]:
        reason: dict[str, Any] = {
            "stage": read.stage,
            "reason": read.error,
            "spool": str(read.claimed.spool.path),
            "file": read.claimed.original_name,
        }
        if read.parsed is not None:
            reason["sender"] = read.parsed.sender
            reason["recipients"] = list(read.parsed.recipients)
        return reason

    def _log_rejection(self, read: _Read) -> None:
        claimed = read.claimed
        log.warning(
            "%s rejected file=%s spool=%s: %s (moved to %s, no bounce sent)",
            claimed.entry_id,
            claimed.original_name,
            claimed.spool.path,
            read.error,
            self.store.failed_dir / f"{claimed.entry_id}.eml",
        )
        self.emit(Event(EventKind.REJECTED, claimed.entry_id, self._reason(read)))


def make_entry(
    claimed: Claimed,
    size: int,
    parsed: ParsedMessage,
    route: tuple[str, ...],
    created: float,
    now: float,
) -> QueueEntry:
    """The new queue entry of a claimed, parsed message."""
    recipients = [RecipientState(address) for address in parsed.recipients]
    recipients += [
        RecipientState(
            address,
            RcptStatus.FAILED,
            reply=f"553 5.1.3 invalid recipient address: {problem}",
            status_code="5.1.3",
        )
        for address, problem in parsed.invalid_recipients
    ]
    return QueueEntry(
        id=claimed.entry_id,
        sender=sys.intern(parsed.sender),  # a few senders, thousands of messages each
        recipients=recipients,
        relay=route[0],
        route=list(route) if len(route) > 1 else [],
        source=claimed.spool.key,
        created_at=created,
        next_attempt_at=now,
        size=size,
        is_report=is_delivery_report(parsed.headers),
        spool_name=claimed.original_name,
        message_id=parsed.headers.get("message-id", ""),
    )


def entry_from_body(config: Config, path: Path) -> QueueEntry | None:
    """The entry a queued body with no state file stands for (a message accepted and not yet
    attempted), read without changing anything: for looking at a stopped daemon's queue. None
    when its spool is no longer configured or it cannot be read (the daemon would set it aside
    in failed/ when it next starts). Policy is not checked again here."""
    spool = next((s for s in config.spools if s.key == path.parent.name), None)
    if spool is None:
        return None
    try:
        data = read_claimed(path, config.queue.max_message_size, sync=False)
        parsed = parse_message(data)
    except (OSError, SpoolError):
        return None
    claimed = Claimed(spool, path.stem, path, path.name)
    created = id_time(path.stem) or path.stat().st_mtime
    return make_entry(
        claimed, len(data), parsed, route_for(config, spool, parsed.sender), created, created
    )


def queued_entries(config: Config) -> list[QueueEntry]:
    """Every entry in ``config``'s queue, read without a lock and without changing anything
    (tests and tools looking at a stopped daemon's queue), oldest first: the state files, and
    the bodies accepted with none yet; of every worker of ``queue.workers``."""
    entries = {}
    for directory in config.queue.worker_dirs:  # every worker's, with queue.workers
        store = FileStore(directory)
        for path in store.state_dir.glob("*.json"):
            entry = QueueEntry.from_json(path.read_bytes())
            entries[entry.id] = entry
        for body in store.messages_dir.glob("*/*.eml"):
            if body.stem not in entries and body.parent.name != DSN_SOURCE:
                found = entry_from_body(config, body)
                if found is not None:
                    entries[found.id] = found
    return sorted(entries.values(), key=lambda entry: (entry.created_at, entry.id))
