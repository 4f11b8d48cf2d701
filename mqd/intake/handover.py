"""The one path into the queue for a message a source holds in memory (SMTP submission today):
the spools' sender policy, their routes, and the store's ``accept``, returning once the message
is durable.

The envelope the producer gave (SMTP's MAIL FROM and RCPT TO) is stored with the message as
leading ``X-Sender`` / ``X-Receiver`` lines, the pickup format a spool file may use, so a body
without a state file is rebuilt after a restart with the envelope it was accepted with
(``mqd.intake.entries.rebuilder`` knows the sources' keys); the lines are stripped before
relaying like any spool file's.

Hand-overs that arrive together are grouped: while the store writes a batch (each body
written and fsynced, then one fsync of its directory), the next ones gather, and go to the
store as the next batch. A batch waits for the disk far more than for the CPU, so up to
``WRITERS`` batches are written at once: the ones that arrive while one is written start
another, not a wait for the first. Each ``submit`` returns, or raises, with its own message's
outcome.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.config.accounts import account_for
from mqd.config.schema import Config, SourceConfig
from mqd.delivery.accounts import AccountLimits
from mqd.errors import MessageParseError, QueueError, SubmissionError
from mqd.events import EventSink, Queued, Rejected
from mqd.faults import Fault
from mqd.intake.entries import make_entry
from mqd.intake.routing import route_for
from mqd.intake.source import Login, Submission
from mqd.message.envelope import ParsedMessage, address_problem, parse_message
from mqd.message.headers import envelope_field, split_header
from mqd.message.sendat import send_at_of
from mqd.plugins.host import PluginHost
from mqd.producer.inject import envelope_lines
from mqd.queue.entry import message_id_maker
from mqd.queue.keys import Handed, HandoverKey
from mqd.queue.store import AcceptError, Incoming, QueueStore

__all__ = ["BATCH", "WRITERS", "Handover"]

log = logging.getLogger("mqd.intake")

#: At most this many hand-overs go to the store as one batch...
BATCH = 256
#: ...and at most this many batches are being written at once (stores take concurrent
#: ``accept`` calls: the spools' intake makes its own beside these).
WRITERS = 2


@dataclass
class _Waiting:
    item: Incoming
    done: asyncio.Future[Handed]
    source: str
    login: str | None
    peer: str | None


class Handover:
    """Implements ``mqd.intake.source.HandOver`` for every source of a daemon."""

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
        #: Counts the mail of accounts that refuse over their limits at hand-over.
        self.accounts = accounts
        self.store = store
        self.host = host
        self.emit = emit
        self.clock = clock
        self._waiting: list[_Waiting] = []
        self._writers: set[asyncio.Task[None]] = set()
        #: A writer has started and not taken its first batch yet: what comes now joins it.
        self._gathering = False
        self._new_id = message_id_maker(64)
        #: Set while the store cannot take hand-overs (each is answered "try again later"):
        #: said once, shown by ``mqd status``.
        self.fault = Fault("queueing from the sources", log, clock=clock, verb="is failing")

    # -- the policy -----------------------------------------------------------------------------

    def check_sender(self, source: SourceConfig, sender: str, login: Login | None) -> str | None:
        problem = address_problem(sender)
        if problem:
            return f"the sender {sender!r} is not usable: {problem}"
        return self._policy(ParsedMessage(sender=sender, recipients=()), source, login)

    def _policy(
        self, message: ParsedMessage, source: SourceConfig, login: Login | None
    ) -> str | None:
        """The spools' policy (``mqd_check_policy``) for ``source``, then, for a login with
        its own list, the same again with that list in the source's place: both must allow."""
        route = route_for(self.config, source, message.sender)
        refusal = self.host.check_policy(message, source, route[0], self.config)
        if refusal or login is None or not login.allowed_senders:
            return refusal
        as_login = dataclasses.replace(
            source,
            allowed_senders=login.allowed_senders,
            path=Path(f"{source.name} (login {login.name})"),
        )
        return self.host.check_policy(message, as_login, route[0], self.config)

    # -- the hand-over --------------------------------------------------------------------------

    async def submit(self, source: SourceConfig, submission: Submission) -> str:
        return (await self._submit(source, submission, None)).id

    async def submit_once(
        self,
        source: SourceConfig,
        submission: Submission,
        key: str,
        *,
        scope: str,
        keep_for: float,
        note: str = "",
    ) -> Handed:
        once = HandoverKey(scope, key, self.clock.time() + keep_for, note)
        return await self._submit(source, submission, once)

    async def _submit(
        self, source: SourceConfig, submission: Submission, key: HandoverKey | None
    ) -> Handed:
        now = self.clock.time()
        body = envelope_lines(submission.sender, submission.recipients) + submission.trace
        body += _without_envelope_lines(submission.data)
        max_size = self.config.queue.max_message_size
        if len(submission.data) > max_size:
            raise SubmissionError(
                f"the message is {len(submission.data)} bytes, more than "
                f"queue.max_message_size ({max_size} bytes)",
                stage="intake",
                permanent=True,
            )
        try:
            parsed = _parsed(body, submission)
        except MessageParseError as exc:
            raise SubmissionError(str(exc), stage="intake", permanent=True) from None
        refusal = self._policy(parsed, source, submission.login)
        if refusal:
            raise SubmissionError(refusal, stage="policy", permanent=True)
        # The rest as the spools' intake does it (mqd.intake.pipeline): the sender's account
        # (one that refuses over its limits says "later"), X-Mqd-Send-At, the entry.
        account = account_for(self.config.accounts, parsed.sender)
        if account is not None and self.accounts is not None:
            refusal = await self.accounts.check_in(account.name)
            if refusal:
                raise SubmissionError(refusal, stage="limit", permanent=False)
        try:
            send_at = send_at_of(parsed.headers, now, self.config.queue.send_later_horizon)
        except MessageParseError as exc:
            raise SubmissionError(str(exc), stage="intake", permanent=True) from None
        route = route_for(self.config, source, parsed.sender)
        entry_id = self._new_id()
        entry = make_entry(
            entry_id,
            source,
            f"{entry_id}.eml",
            len(body),
            parsed,
            route,
            now,
            now,
            send_at,
            account.name if account is not None else None,
        )
        waiting = _Waiting(
            Incoming(entry, body, key=key),
            asyncio.get_running_loop().create_future(),
            source.name,
            submission.login.name if submission.login else None,
            submission.peer,
        )
        self._waiting.append(waiting)
        if not self._gathering and len(self._writers) < WRITERS:
            self._gathering = True
            writer = asyncio.create_task(self._write(), name="mqd-handover")
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        # Shielded: a producer that goes away meanwhile does not take the batch down with it.
        return await asyncio.shield(waiting.done)

    def rejected(
        self,
        source: SourceConfig,
        *,
        stage: str,
        reason: str,
        name: str,
        sender: str | None,
        recipients: tuple[str, ...],
    ) -> str:
        entry_id = self._new_id()
        self.emit(
            Rejected(
                message_id=entry_id,
                time=self.clock.time(),
                stage=stage,
                reason=reason,
                spool=source.name,
                file=name,
                sender=sender,
                recipients=recipients,
            )
        )
        return entry_id

    async def _write(self) -> None:
        """Hand what waits to the store, a batch at a time, until nothing waits."""
        try:
            await asyncio.sleep(0)  # the hand-overs of this turn of the loop join the first batch
        finally:
            self._gathering = False
        while self._waiting:
            batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
            error: Exception | None
            repeats: dict[str, Handed] = {}
            try:
                repeats = await self.store.accept([w.item for w in batch])
            except AcceptError as exc:
                taken, error = set(exc.accepted), exc
            except (QueueError, OSError) as exc:
                taken, error = set(), exc
            except Exception as exc:  # a store's bug: its producers are answered all the same
                log.exception("the queue store failed to accept a batch")
                taken, error = set(), exc
            else:
                taken, error = {w.item.entry.id for w in batch}, None
            if error is None:
                self.fault.cleared()
            else:
                self.fault.failed(f"the queue cannot take messages: {error}")
            # Told before anything else is awaited: delivery may start as soon as this yields.
            for waiting in batch:
                entry_id, key = waiting.item.entry.id, waiting.item.key
                account = waiting.item.entry.account
                queued = entry_id in taken and entry_id not in repeats
                if not queued and account is not None and self.accounts is not None:
                    self.accounts.check_out(account)  # counted at check-in, sent nothing
                if entry_id in repeats:  # its key was handed over before: nothing queued
                    log.info(
                        "%s: handed over again (key %r): answered as then",
                        repeats[entry_id].id,
                        key and key.key,
                    )
                    waiting.done.set_result(repeats[entry_id])
                elif entry_id in taken:
                    self._queued(waiting)
                    waiting.done.set_result(Handed(entry_id, key.note if key else ""))
                else:
                    waiting.done.set_exception(
                        SubmissionError(
                            f"the queue cannot take messages now: {error}",
                            stage="queue",
                            permanent=False,
                        )
                    )

    def _queued(self, waiting: _Waiting) -> None:
        entry = waiting.item.entry
        log.info(
            "%s queued from=<%s> to=%s size=%d relay=%s source=%s%s%s",
            entry.id,
            entry.sender,
            ",".join(f"<{r.address}>" for r in entry.recipients),
            entry.size,
            ",".join(entry.relays),
            waiting.source,
            f" login={waiting.login}" if waiting.login else "",
            f" peer={waiting.peer}" if waiting.peer else "",
        )
        event = Queued.of(entry, self.clock.time())
        self.emit(
            dataclasses.replace(
                event, source=waiting.source, login=waiting.login, peer=waiting.peer
            )
        )


def _parsed(body: bytes, submission: Submission) -> ParsedMessage:
    """``parse_message(body)``: ``body`` is the submission's data behind its envelope lines
    (and its trace). Headers the source read already are not read again: only the envelope
    lines are, which give the same sender and recipients."""
    if submission.headers is None or submission.trace:
        return parse_message(body)
    lines = envelope_lines(submission.sender, submission.recipients)
    return dataclasses.replace(parse_message(lines), headers=submission.headers)


def _without_envelope_lines(data: bytes) -> bytes:
    """``data`` without leading ``X-Sender`` / ``X-Receiver`` fields: the envelope is the one
    the producer gave over the protocol, stated in front of it."""
    first_line_end = data.find(b"\n")
    if envelope_field(data if first_line_end < 0 else data[:first_line_end]) is None:
        return data  # the everyday case, told by its first line: no header block to split
    try:
        fields, _ = split_header(data)
    except MessageParseError:
        return data  # parse_message says what is wrong with it
    skip = 0
    for _name, raw in fields:
        if envelope_field(raw) is None:
            break
        skip += len(raw)
    return data[skip:]
