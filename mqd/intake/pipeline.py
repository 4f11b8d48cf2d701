"""From a claimed file to the queue: read it safely, parse it, check the sender, hand the batch to
the store, refuse what must be refused.

A batch is claimed (renamed into the claim area), read and parsed on the event loop, checked
against policy there (plugins run there) and handed to the store, which takes the files over by
a rename. Worker threads fsync each body meanwhile: only the fsyncs leave the loop, since every
system call a worker thread makes gives up the GIL and must win it back from the busy loop (with
the renames, opens, reads and parsing in a thread too, a drain of 10,000 messages ran at
0.65-0.75x the rate on an ext4 with a journal).

Delivery does not wait for those fsyncs (on POSIX; Windows neither renames nor deletes an open
file, so there it does): a producer fsyncs a file before renaming it into the spool (the producer
contract), so the body is durable already and the claim is a rename, which a crash either undoes
(the file is back in the spool or in the claim area, both taken again) or keeps. A message sent
before a crash may then be sent again after it: at-least-once, as after any crash between the
relay's reply and the state update. One batch's fsyncs are in flight at a time.

When the store cannot take a batch (a full disk, a store that is down), the files wait in the
claim area: intake pauses (``fault``), says so once, and takes them again, a batch at a time,
before anything new (``take_waiting``). When the failed folder cannot take a refused file, that
file waits there too (``refusing``) while good mail goes on. Nothing is put back into the spool
and claimed again in a loop. Refused mail never gets a bounce: it was
never accepted, and a bounce would be backscatter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.config.accounts import account_for
from mqd.config.schema import Config
from mqd.delivery.accounts import AccountLimits
from mqd.errors import MessageParseError, QueueError, QueueUnavailableError, SpoolError
from mqd.events import Claimed as ClaimedEvent  # not the claimed file: intake.spool.Claimed
from mqd.events import EventSink, Queued, Rejected
from mqd.faults import Fault
from mqd.intake.entries import make_entry
from mqd.intake.reading import Read, fsync_and_close, read_claimed_file
from mqd.intake.routing import route_for
from mqd.intake.spool import Claimed, Spool
from mqd.message.content import decoded_header
from mqd.message.sendat import send_at_of
from mqd.plugins.host import PluginHost
from mqd.queue.entry import message_id_maker
from mqd.queue.failed import FailedRecipient, FailureRecord
from mqd.queue.store import AcceptError, Incoming, QueueStore, Refused

__all__ = ["BATCH", "Intake"]

log = logging.getLogger("mqd.intake")

#: At most this many files (and about this many bytes) are claimed, read and handed to the
#: store at once.
BATCH = 256
BATCH_BYTES = 32 * 1024 * 1024
#: Whether a batch goes to the store while its fsyncs run (not on Windows, where a file still
#: open for its fsync can be neither renamed into the queue nor deleted once delivered).
SEND_WHILE_SYNCING = os.name == "posix"
#: A batch's bodies are fsynced in up to this many worker threads at once...
SYNC_THREADS = 4
#: ...each taking at least this many (a thread more costs a hand-over of the GIL or two).
SYNC_CHUNK = 32


class Intake:
    def __init__(
        self,
        config: Config,
        store: QueueStore,
        host: PluginHost,
        emit: EventSink,
        *,
        accounts: AccountLimits | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.store = store
        #: Counts the mail of accounts that refuse over their limits at hand-over.
        self.accounts = accounts
        self.host = host
        self.emit = emit
        self.clock = clock
        #: Paused while the store cannot take what was claimed.
        self.fault = Fault("intake from the spools", log, clock=clock)
        #: Set while files cannot be claimed (a spool made read-only): said once, not per file.
        self.claiming = Fault("claiming", log, clock=clock, verb="is failing")
        #: Set while the failed folder cannot take refused files: they wait in the claim area
        #: (never back into the spool to be claimed again at once), good mail goes on.
        self.refusing = Fault("refusing messages", log, clock=clock)
        #: The last batch's fsyncs, while they run.
        self._syncing: asyncio.Future[None] | None = None

    async def take_names(self, spool: Spool, names: Sequence[str]) -> int:
        """Claim ``names`` from ``spool`` and queue what is acceptable, its fsyncs still running
        (see the module's docstring). Files another process claimed first are skipped silently.
        Returns how many were queued."""
        queued = 0
        rest = list(names)
        while rest:
            await self.settle()  # one batch's fsyncs at a time: its files are open till they end
            reads, rest = self._claim(spool, rest)
            opened = [read for read in reads if read.fd is not None]
            if opened:
                self._syncing = asyncio.ensure_future(self._fsync(opened))
                if not SEND_WHILE_SYNCING:
                    await self.settle()
            queued += await self._finish(reads)
        return queued

    async def take_waiting(self, spool: Spool) -> int:
        """Queue the files claimed from ``spool`` that are still in the claim area (a crash, or
        a fault, came between the claim and the store), a batch at a time: a failure leaves
        the rest where they are for the next try. Returns how many were queued."""
        waiting = await asyncio.to_thread(spool.waiting)
        queued = 0
        max_size = self.config.queue.max_message_size
        for start in range(0, len(waiting), BATCH):
            batch = waiting[start : start + BATCH]
            reads = await asyncio.to_thread(_read_all, batch, max_size)
            queued += await self._finish(reads, told=True)
            if self.fault.active:
                break
        return queued

    async def settle(self) -> None:
        """Wait for the last batch's fsyncs (before the next batch, and before stopping)."""
        syncing, self._syncing = self._syncing, None
        if syncing is not None:
            # Shielded: a cancelled wait must not cancel them (their threads would run on).
            await asyncio.shield(syncing)

    def _claim(self, spool: Spool, names: list[str]) -> tuple[list[Read], list[str]]:
        """Claim and read ``names`` on the event loop (renames and reads of files just written
        are quick), leaving each file in the claim area open for its fsync; stops after
        ``BATCH`` files or ``BATCH_BYTES``, and returns the names not tried yet."""
        reads: list[Read] = []
        new_id = message_id_maker(min(len(names), BATCH))
        max_size = self.config.queue.max_message_size
        size = 0
        try:
            for index, name in enumerate(names):
                if len(reads) >= BATCH or size >= BATCH_BYTES:
                    return reads, names[index:]
                try:
                    claimed = spool.claim(name, new_id())
                except SpoolError as exc:  # the spool cannot be written: the rest would fail too
                    why = getattr(exc.__cause__, "strerror", None) or str(exc)
                    self.claiming.failed(f"cannot claim files from {spool.path}: {why}")
                    return reads, []
                if claimed is not None:
                    if self.claiming.active:
                        self.claiming.cleared()
                    # Across filesystems the store copies the bytes durably: no fsync here.
                    keep_open = not spool.claims_across
                    reads.append(read_claimed_file(claimed, max_size, keep_open=keep_open))
                    size += reads[-1].size
        except BaseException:
            for read in reads:
                read.close()
            raise
        return reads, []

    async def _fsync(self, reads: list[Read]) -> None:
        """Fsync and close the bodies ``_claim`` left open (refused ones too: they are kept in
        the failed folder). A large batch is split over a few worker threads: the disk takes
        several flushes at a time (256 bodies: 0.15 s one after the other, 0.06 s in four
        threads, on an ext4 with a journal)."""
        fds = [fd for read in reads if (fd := read.take_fd()) is not None]
        size = max(SYNC_CHUNK, -(-len(fds) // SYNC_THREADS))
        chunks = [fds[at : at + size] for at in range(0, len(fds), size)]
        outcomes = await asyncio.gather(
            *(asyncio.to_thread(fsync_and_close, chunk) for chunk in chunks),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, OSError):
                # The batch is delivered all the same (its data is in the page cache, and
                # another fsync of the same file could not promise more: the kernel reports a
                # failed writeback once); say so, and take no more files for a while.
                log.error(
                    "cannot fsync %d message(s) just claimed (%s): they are delivered all the "
                    "same, but until then a crash may lose them",
                    len(reads),
                    outcome,
                )
                self.fault.failed(f"cannot fsync claimed messages ({outcome})")
                return
            if isinstance(outcome, BaseException):
                raise outcome

    # -- to the store -----------------------------------------------------------------------------

    async def _finish(self, reads: list[Read], told: bool = False) -> int:
        """Check, then hand to the store; ``told``: their claims were told already (files
        taken again from the claim area)."""
        now = self.clock.time()
        accepted: list[Incoming] = []
        refused: list[Read] = []
        for read in reads:
            claimed = read.claimed
            spool = claimed.spool
            if not told:
                self.emit(
                    ClaimedEvent(
                        message_id=claimed.entry_id,
                        time=now,
                        file=claimed.original_name,
                        spool=str(spool.path),
                    )
                )
            if read.parsed is not None and read.error is None:
                route = route_for(self.config, spool, read.parsed.sender)
                refusal = self.host.check_policy(read.parsed, spool, route[0], self.config)
                account = account_for(self.config.accounts, read.parsed.sender)
                if not refusal and account is not None and self.accounts is not None:
                    refusal = await self.accounts.check_in(account.name)
                horizon = self.config.queue.send_later_horizon
                if refusal:
                    read.error, read.stage = refusal, "policy"
                else:
                    try:
                        send_at = send_at_of(read.parsed.headers, now, horizon)
                    except MessageParseError as exc:  # an X-Mqd-Send-At it cannot keep
                        read.error, read.stage = str(exc), "intake"
                    else:
                        entry = make_entry(
                            claimed.entry_id,
                            spool,
                            claimed.original_name,
                            read.size,
                            read.parsed,
                            route,
                            now,
                            now,
                            send_at,
                            account.name if account is not None else None,
                        )
                        accepted.append(Incoming(entry, read.data or b"", claimed.path))
                        continue
            refused.append(read)
        queued, accepted_all = await self._accept(accepted)
        if accepted and accepted_all:
            self.fault.cleared()
        # Told before anything else is awaited: once the store has them, delivery may start
        # (and tell its events) as soon as this coroutine lets the loop run.
        for item in queued:  # (taken again from the claim area too: it was never queued)
            entry = item.entry
            log.info(
                "%s queued from=<%s> to=%s size=%d relay=%s file=%s",
                entry.id,
                entry.sender,
                ",".join(f"<{r.address}>" for r in entry.recipients),
                entry.size,
                ",".join(entry.relays),
                entry.spool_name,
            )
            self.emit(Queued.of(entry, self.clock.time()))
        if refused and await self._refuse(refused):
            self.refusing.cleared()
        return len(queued)

    async def _accept(self, accepted: list[Incoming]) -> tuple[list[Incoming], bool]:
        """Hand ``accepted`` to the store; returns those it took and whether it took them all,
        and removes the claimed files it copied rather than took over."""
        if not accepted:
            return [], True
        try:
            await self.store.accept(accepted)
        except AcceptError as exc:
            taken = [item for item in accepted if item.entry.id in set(exc.accepted)]
            self.fault.failed(
                f"the queue cannot take messages: {exc}", progress=bool(taken), kind=_kind(exc)
            )
        except (QueueError, OSError) as exc:
            self.fault.failed(f"the queue cannot take messages: {exc}", kind=_kind(exc))
            return [], False
        else:
            taken = accepted
        for item in taken:  # the store took them over, or copied them
            if item.file is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.file)
        return taken, len(taken) == len(accepted)

    async def _refuse(self, refused: list[Read]) -> bool:
        """Refused files into the failed folder with the reason; when it cannot take them they
        wait in the claim area (never back into the spool to be claimed again at once)."""
        items = [
            Refused(r.claimed.entry_id, self._record(r), r.data, r.claimed.path) for r in refused
        ]
        try:
            await self.store.refuse(items)
        except (QueueError, OSError) as exc:
            self.refusing.failed(f"the failed folder cannot take refused messages: {exc}")
            return False
        for read in refused:
            claimed = read.claimed
            log.warning(
                "%s rejected file=%s spool=%s: %s (moved to the failed folder, no bounce sent)",
                claimed.entry_id,
                claimed.original_name,
                claimed.spool.path,
                read.error,
            )
            record = self._record(read)
            self.emit(
                Rejected(
                    message_id=claimed.entry_id,
                    time=self.clock.time(),
                    stage=record.stage,
                    reason=record.reason,
                    spool=str(claimed.spool.path),
                    file=claimed.original_name,
                    sender=record.sender,
                    recipients=tuple(r.address for r in record.recipients),
                    subject=record.subject,
                )
            )
        return True

    @staticmethod
    def _record(read: Read) -> FailureRecord:
        parsed = read.parsed
        return FailureRecord(
            stage=read.stage,
            reason=read.error or "",
            spool=str(read.claimed.spool.path),
            file=read.claimed.original_name,
            sender=parsed.sender if parsed is not None else None,
            recipients=tuple(FailedRecipient(a, "refused") for a in parsed.recipients)
            if parsed is not None
            else (),
            subject=decoded_header(parsed.headers.get("subject")) or None
            if parsed is not None
            else None,
        )


def _read_all(batch: list[Claimed], max_size: int) -> list[Read]:
    return [read_claimed_file(claimed, max_size, keep_open=False) for claimed in batch]


def _kind(exc: BaseException) -> str | None:
    """ "unreachable" for a queue database out of reach (its wording changes from try to try:
    said once), else None (each reason said)."""
    for cause in (exc, exc.__cause__):
        if isinstance(cause, QueueUnavailableError):
            return "unreachable"
    return None
