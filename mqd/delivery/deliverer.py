"""One delivery attempt of one leased queue entry, and what follows from its outcome.

Per recipient: delivered (2xx) is final and never sent again; transient (4xx, timeout, lost
connection) waits for the next attempt on the backoff schedule until the queue lifetime runs
out (then it fails with 4.4.7); permanent (5xx) fails at once. Failed recipients get one DSN,
queued with the entry's update from ``<>`` (idempotently: its id derives from the bounced
entry), unless the message came from ``<>`` or is a report itself. An entry whose recipients are
all final leaves the queue: completed when every one was delivered, failed otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.config.schema import Config
from mqd.delivery.guards import Guards
from mqd.delivery.route import Walk, walk_route
from mqd.delivery.suppression import Suppression
from mqd.events import (
    Attempted,
    Bounced,
    Completed,
    Deferred,
    Delivered,
    EventSink,
    Failed,
    Suppressed,
)
from mqd.message.classify import classify_reply
from mqd.message.content import subject_of
from mqd.message.reply import Outcome
from mqd.message.tracecontext import child_traceparent
from mqd.plugins.host import PluginHost
from mqd.queue.backoff import Backoff
from mqd.queue.entry import DSN_SOURCE, QueueEntry, RcptStatus, RecipientState
from mqd.queue.failed import FailedRecipient, FailureRecord
from mqd.queue.store import Bounce, Lease, LeaseLost, QueueStore
from mqd.relays.base import Relay

__all__ = ["Deliverer"]

log = logging.getLogger("mqd.delivery")


class Deliverer:
    def __init__(
        self,
        config: Config,
        store: QueueStore,
        relays: Mapping[str, Relay],
        host: PluginHost,
        emit: EventSink,
        *,
        guards: Guards | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.store = store
        self.relays = relays
        self.host = host
        self.emit = emit
        self.clock = clock
        self.guards = guards or Guards(config, clock=clock)
        self.backoff = Backoff(config.queue.retry)
        self.hostname = config.queue.hostname

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.hostname = config.queue.hostname
        self.backoff = Backoff(config.queue.retry)
        self.guards.reconfigure(config)

    async def attempt(self, lease: Lease) -> None:
        """Try the pending recipients of the leased entry once along its route, then record and
        act on the outcome.

        When no relay of the route may take the message now (unhealthy, or held by a quota) it
        is released without the attempt being counted. Cancellation (shutdown) before the relay
        answered leaves the entry untouched: a cancelled attempt is not counted. An entry
        deleted while it was being taken (its lease revoked) is not sent.
        """
        entry = lease.entry
        pending = entry.pending
        body = None
        if pending and self.config.suppression.enabled:
            pending = self._suppress(entry, pending)
            if not pending:  # every one left is suppressed: nothing to send
                await self.finish(lease, entry)
                return
        if pending:
            account = entry.account
            over = await self.guards.admit_account(account) if account else None
            if over is not None:  # its account's limit: paced, as a relay's quota paces
                await self.store.release(lease, not_before=self.clock.time() + over[0])
                log.info(
                    "%s held: %s; next look in %.0fs (not counted as an attempt)",
                    entry.id,
                    over[1],
                    over[0],
                )
                return
            started = self.clock.monotonic()
            started_at = self.clock.time()
            try:
                walk = await walk_route(
                    entry,
                    pending,
                    self.relays,
                    self.guards,
                    load_body=lambda: self.store.body(entry),
                    dispatching=lambda: self.store.dispatching(lease),
                    hostname=self.hostname,
                    clock=self.clock,
                )
            except LeaseLost:
                self._uncount(account)
                log.info("%s was deleted or held before it was sent: not sent", entry.id)
                return
            except BaseException:  # cancelled (a stop) before any relay answered: not sent
                self._uncount(account)
                raise
            body = walk.body
            if not walk.tried:
                self._uncount(account)
                await self.store.release(lease, not_before=self.clock.time() + walk.wait)
                log.info(
                    "%s held: %s; next look in %.0fs (not counted as an attempt)",
                    entry.id,
                    "; ".join(walk.held),
                    walk.wait,
                )
                return
            self._record(entry, pending, walk, self.clock.monotonic() - started, started_at)
        await self.finish(lease, entry, body)

    def _suppress(self, entry: QueueEntry, pending: list[RecipientState]) -> list[RecipientState]:
        """Mark the recipients on the suppression list as suppressed (no send, no DSN); return
        the others."""
        now = self.clock.time()
        left = []
        for rcpt in pending:
            item = self.guards.suppressions.check(entry.account, rcpt.address, now)
            if item is None:
                left.append(rcpt)
                continue
            rcpt.status, rcpt.notified = RcptStatus.SUPPRESSED, True
            rcpt.reply = f"suppressed ({item.kind}): {item.reason}"
            log.info("%s to=<%s> suppressed: %s", entry.id, rcpt.address, rcpt.reply)
            self.emit(
                Suppressed(
                    message_id=entry.id,
                    time=now,
                    recipient=rcpt.address,
                    reply=rcpt.reply,
                    relay=None,
                    suppression=item.kind,
                    since=item.since,
                )
            )
        return left

    def _note_bounce(self, entry: QueueEntry, rcpt: RecipientState, now: float) -> None:
        """A permanent failure for the address itself (5.1.x: no such mailbox, bad domain)
        suppresses it for the message's account; other 5xx (policy, content) do not."""
        code = rcpt.status_code or ""
        if not self.config.suppression.enabled or not code.startswith("5.1."):
            return
        self.guards.suppressions.add(
            Suppression(
                address=rcpt.address,
                account=entry.account or "",
                kind="bounce",
                reason=rcpt.reply or code,
                since=now,
                until=self.config.suppression.until("bounce", now),
            )
        )

    def _uncount(self, account: str | None) -> None:
        """The account's count taken for a delivery that did not go out after all."""
        if account:
            self.guards.give_back_account(account)

    def _record(
        self,
        entry: QueueEntry,
        pending: list[RecipientState],
        walk: Walk,
        elapsed: float,
        started_at: float,
    ) -> None:
        now = self.clock.time()
        waiting_since = entry.last_attempt_at or entry.created_at
        entry.attempts += 1
        entry.last_attempt_at = now
        self.emit(
            Attempted(
                message_id=entry.id,
                time=now,
                attempt=entry.attempts,
                started=started_at,
                waiting_since=waiting_since,
                calls=tuple(walk.calls),
                traceparent=entry.traceparent or None,
            )
        )
        deferred: list[RecipientState] = []
        for rcpt in pending:
            answer = walk.answers[rcpt.address]
            reply = answer.reply
            outcome = classify_reply(reply)
            rcpt.reply, rcpt.status_code = str(reply), reply.status
            rcpt.remote, rcpt.relay = answer.remote, answer.relay
            if outcome is Outcome.DELIVERED:
                rcpt.status = RcptStatus.DELIVERED
            elif outcome is Outcome.PERMANENT:
                rcpt.status = RcptStatus.FAILED
                self._note_bounce(entry, rcpt, now)
            else:
                deferred.append(rcpt)
            entry.last_reply = str(reply)
            self._log_attempt(entry, rcpt, outcome, elapsed, answer.provider_id)
        if not deferred:
            return
        # A message sent later lives from its scheduled time, not from its acceptance.
        born = max(entry.created_at, entry.send_at or 0.0)
        given_up = self.backoff.give_up_reason(entry.attempts, born, now)
        if given_up is not None:
            for rcpt in deferred:
                rcpt.status = RcptStatus.FAILED
                rcpt.reply = f"{given_up}; last reply: {rcpt.reply}"
                rcpt.status_code = "4.4.7"
                log.warning("%s to=<%s> expired: %s", entry.id, rcpt.address, rcpt.reply)
            return
        # The far end's Retry-After is a floor under the backoff.
        entry.next_attempt_at = now + max(self.backoff.delay(entry.attempts), walk.retry_after)
        for rcpt in deferred:
            self.emit(
                Deferred(
                    message_id=entry.id,
                    time=now,
                    recipient=rcpt.address,
                    reply=rcpt.reply,
                    relay=rcpt.relay,
                    next_attempt_at=entry.next_attempt_at,
                )
            )

    def _log_attempt(
        self,
        entry: QueueEntry,
        rcpt: RecipientState,
        outcome: Outcome,
        elapsed: float,
        provider_id: str | None,
    ) -> None:
        level = logging.INFO if outcome is Outcome.DELIVERED else logging.WARNING
        log.log(
            level,
            "%s from=<%s> to=<%s> relay=%s attempt=%d delay=%.3fs outcome=%s reply=%s",
            entry.id,
            entry.sender,
            rcpt.address,
            rcpt.relay,
            entry.attempts,
            elapsed,
            outcome.value,
            rcpt.reply,
            extra={
                "mqd": {
                    "id": entry.id,
                    "sender": entry.sender,
                    "recipient": rcpt.address,
                    "relay": rcpt.relay,
                    "attempt": entry.attempts,
                    "outcome": outcome.value,
                    "reply": rcpt.reply,
                    "elapsed": round(elapsed, 4),
                }
            },
        )
        if outcome is Outcome.DELIVERED:
            now = self.clock.time()
            self.emit(
                Delivered(
                    message_id=entry.id,
                    time=now,
                    recipient=rcpt.address,
                    reply=rcpt.reply,
                    relay=rcpt.relay,
                    provider_id=provider_id,
                    elapsed=round(elapsed, 4),
                    age=round(now - entry.created_at, 3),
                )
            )

    async def finish(self, lease: Lease, entry: QueueEntry, body: bytes | None = None) -> None:
        """Bounce new failures, then save, fail or complete the entry (durably)."""
        failures = entry.unnotified_failures
        bounce = None
        if failures:
            if entry.may_bounce:
                # The failures are durable before the DSN is queued: a crash in between finds
                # them on restart and bounces them (never sends to them again), and the DSN's
                # id, derived from the entry, tells recovery whether it was already queued.
                await self.store.checkpoint(lease, entry)
            bounce = await self._bounce(entry, failures, body)
        if not entry.is_done:
            await self.store.save(lease, entry, bounce=bounce)
        elif entry.has_failures:
            await self.store.fail(lease, entry, self._failure_record(entry), bounce=bounce)
            log.warning("%s failed: moved to the failed folder", entry.id)
            self.emit(Failed.of(entry, self.clock.time()))
        else:
            await self.store.complete(lease, entry)
            self.emit(Completed.of(entry, self.clock.time()))

    async def _bounce(
        self, entry: QueueEntry, failures: list[RecipientState], body: bytes | None
    ) -> Bounce | None:
        """The DSN for ``failures`` (None when none may be sent); marks them notified."""
        bounce = None
        dsn_id = None
        if entry.may_bounce:
            original = body if body is not None else await self.store.body(entry)
            message = self.host.build_bounce(entry, failures, original, self.config)
            now = self.clock.time()
            dsn_id = f"{entry.id}b{entry.bounces}"
            dsn = QueueEntry(
                id=dsn_id,
                sender="",
                recipients=[RecipientState(entry.sender)],
                relay=entry.relay,
                source=DSN_SOURCE,
                created_at=now,
                next_attempt_at=now,
                size=len(message),
                is_report=True,
                spool_name=f"bounce of {entry.id}",
                # The DSN continues the message's trace, from the bounce (docs/tracing.md).
                traceparent=child_traceparent(entry.id, entry.traceparent, "bounce", dsn_id),
                subject=subject_of(message),
            )
            bounce = Bounce(dsn, message)
            entry.bounces += 1
            log.warning(
                "%s bounced to=%s: DSN %s queued to <%s>",
                entry.id,
                ",".join(f"<{f.address}>" for f in failures),
                dsn.id,
                entry.sender,
            )
        else:
            why = "the null sender" if not entry.sender else "a delivery report"
            log.warning("%s failed permanently; no bounce for %s", entry.id, why)
        for failure in failures:
            failure.notified = True
            self.emit(
                Bounced(
                    message_id=entry.id,
                    time=self.clock.time(),
                    recipient=failure.address,
                    reply=failure.reply,
                    relay=failure.relay,
                    status_code=failure.status_code,
                    dsn_sent=entry.may_bounce,
                    dsn_id=dsn_id,
                    traceparent=entry.traceparent or None,
                )
            )
        return bounce

    def _failure_record(self, entry: QueueEntry) -> FailureRecord:
        failed = [r for r in entry.recipients if r.status is RcptStatus.FAILED]
        spool = next((str(s.path) for s in self.config.spools if s.key == entry.source), None)
        return FailureRecord(
            stage="delivery",
            reason="; ".join(f"<{r.address}>: {r.reply}" for r in failed),
            # Where it came from, so that 'mqd failed retry' sends it back there.
            spool=spool,
            file=entry.spool_name,
            sender=entry.sender,
            relay=entry.relay,
            attempts=entry.attempts,
            created_at=entry.created_at,
            subject=entry.subject or None,
            recipients=tuple(
                FailedRecipient(r.address, r.status.value, r.reply, r.status_code)
                for r in entry.recipients
            ),
        )
