"""One delivery attempt of one queue entry, and what follows from its outcome.

Per recipient: delivered (2xx) is final and never sent again; transient (4xx, timeout, lost
connection) waits for the next attempt on the backoff schedule until the queue lifetime runs
out (then it fails with 4.4.7); permanent (5xx) fails at once. Failed recipients get one DSN,
queued as a new entry from ``<>`` (idempotently: its id derives from the bounced entry), unless
the message came from ``<>`` or is a report itself. An entry whose recipients are all final
leaves the queue: removed when every one was delivered, moved to failed/ otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mqd.config.schema import Config
from mqd.delivery.circuit import Circuit
from mqd.delivery.quota import Quota
from mqd.errors import RelayError
from mqd.events import Event, EventKind, EventSink
from mqd.message.classify import classify_reply, reply_for_error
from mqd.message.envelope import Envelope, prepare_for_relay
from mqd.message.reply import Outcome, Reply
from mqd.plugins.host import PluginHost
from mqd.queue.backoff import Backoff
from mqd.queue.entry import QueueEntry, RcptStatus, RecipientState
from mqd.queue.file.store import DSN_SOURCE, FileStore
from mqd.relays.base import Relay

__all__ = ["Deliverer"]

log = logging.getLogger("mqd.delivery")

#: A per-second quota that frees up within this many seconds is waited for, not deferred.
PACE = 1.0


@dataclass
class _Answer:
    reply: Reply
    remote: str | None
    relay: str
    provider_id: str | None


@dataclass
class _Walk:
    """What one pass along a route produced."""

    answers: dict[str, _Answer] = field(default_factory=dict)
    #: False when no relay could be used at all (then the attempt does not count).
    tried: bool = False
    #: Why relays were skipped, and the shortest wait until one of them may be used.
    held: list[str] = field(default_factory=list)
    wait: float = math.inf
    #: The longest pause a relay asked for (Retry-After): the next attempt is no sooner.
    retry_after: float = 0.0
    body: bytes | None = None

    def answer(
        self,
        addresses: tuple[str, ...],
        reply: Reply,
        remote: str | None,
        relay: str,
        provider_id: str | None,
    ) -> None:
        for address in addresses:
            self.answers[address] = _Answer(reply, remote, relay, provider_id)

    def hold(self, why: str, wait: float) -> None:
        self.held.append(why)
        self.wait = min(self.wait, wait)


def _history(
    relay: str,
    addresses: tuple[str, ...],
    replies: Mapping[str, Reply],
    remote: str | None,
    provider_id: str | None,
) -> dict[str, Any]:
    """The state file's record of one relay's answer."""
    outcomes = {classify_reply(replies[a]).value for a in addresses}
    record: dict[str, Any] = {
        "at": round(time.time(), 3),
        "relay": relay,
        "recipients": len(addresses),
        "outcome": outcomes.pop() if len(outcomes) == 1 else "mixed",
        "reply": str(replies[addresses[0]]),
    }
    if remote:
        record["remote"] = remote
    if provider_id:
        record["provider_id"] = provider_id
    return record


class Deliverer:
    def __init__(
        self,
        config: Config,
        store: FileStore,
        relays: Mapping[str, Relay],
        host: PluginHost,
        emit: EventSink,
        schedule: Callable[[QueueEntry], None],
    ) -> None:
        self.config = config
        self.store = store
        self.relays = relays
        self.host = host
        self.emit = emit
        #: Puts a new entry (a bounce) on the schedule.
        self.schedule = schedule
        self.backoff = Backoff(config.queue.retry)
        self.hostname = socket.gethostname()
        self.circuits: dict[str, Circuit] = {}
        self.quotas: dict[str, Quota] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config. A relay whose breaker and quota settings did not change keeps
        its circuit state; quota counts always carry over (the provider still counts them)."""
        self.config = config
        self.backoff = Backoff(config.queue.retry)
        circuits, quotas = {}, {}
        for name, relay in config.relays.items():
            circuit = self.circuits.get(name)
            circuits[name] = (
                circuit
                if circuit is not None and circuit.config == relay.circuit
                else Circuit(name, relay.circuit)
            )
            quota = self.quotas.get(name)
            share = relay.quota.divided(config.queue.workers)  # this worker's part of the limits
            quotas[name] = (
                quota if quota is not None and quota.config == share else Quota(name, share)
            )
            if quota is not None and quotas[name] is not quota:
                quotas[name].load(quota.to_json())
        self.circuits, self.quotas = circuits, quotas

    async def attempt(self, entry: QueueEntry) -> None:
        """Try the pending recipients of ``entry`` once along its route, then record and act on
        the outcome.

        When no relay of the route may take the message now (unhealthy, or held by a quota) it
        waits without the attempt being counted. Cancellation (shutdown) before the relay
        answered leaves the entry untouched: a cancelled attempt is not counted.
        """
        pending = entry.pending
        body = None
        if pending:
            started = time.monotonic()
            walk = await self._walk(entry, pending)
            body = walk.body
            if not walk.tried:
                entry.next_attempt_at = time.time() + walk.wait
                log.info(
                    "%s held: %s; next look in %.0fs (not counted as an attempt)",
                    entry.id,
                    "; ".join(walk.held),
                    walk.wait,
                )
                return
            self._record(entry, pending, walk, time.monotonic() - started)
        await self.finish(entry, body)

    async def _walk(self, entry: QueueEntry, pending: list[RecipientState]) -> _Walk:
        """Hand the recipients to the route's relays in turn: the next relay gets those the
        previous one deferred, or all of them when it is unhealthy or held by a quota."""
        walk = _Walk()
        remaining = tuple(r.address for r in pending)
        route = entry.relays
        for position, name in enumerate(route):
            relay = self.relays.get(name)
            if relay is None:
                reply = Reply(451, f"no relay named {name!r} is configured", "4.3.5")
                walk.answer(remaining, reply, None, name, None)
                walk.tried = True
                continue
            wait = await self._admit(name)
            if wait is not None:
                walk.hold(f"relay {name} {wait[1]}", wait[0])
                continue
            walk.tried = True
            if walk.body is None:  # read only once a relay takes it: a held message costs no I/O
                walk.body = await self.store.load_body(entry)
            replies, remote, provider_id = await self._deliver_via(
                relay, entry, remaining, walk.body, walk
            )
            for address in remaining:
                walk.answer((address,), replies[address], remote, name, provider_id)
            entry.record(_history(name, remaining, replies, remote, provider_id))
            remaining = tuple(
                a for a in remaining if classify_reply(replies[a]) is Outcome.TRANSIENT
            )
            if not remaining:
                break
            if position + 1 < len(route):
                log.info(
                    "%s relay %s deferred %d recipient(s) (%s): failing over to %s",
                    entry.id,
                    name,
                    len(remaining),
                    replies[remaining[0]],
                    route[position + 1],
                )
        return walk

    async def _admit(self, name: str) -> tuple[float, str] | None:
        """None when ``name`` may take a message now (counted against its quota); otherwise
        (seconds to wait, why). A per-second quota that frees up within ``PACE`` seconds
        is waited for here, so a burst is paced rather than diverted or deferred."""
        circuit, quota = self.circuits[name], self.quotas[name]
        while True:
            wait = circuit.admit()
            if wait is not None:
                return wait, f"is unhealthy ({circuit.reason})"
            hold = quota.take()
            if hold is None:
                return None
            circuit.release()
            if hold.limit == "per-second" and hold.seconds <= PACE:
                await asyncio.sleep(hold.seconds)
                continue
            return hold.seconds, f"reached its {hold.limit} quota"

    async def _deliver_via(
        self,
        relay: Relay,
        entry: QueueEntry,
        addresses: tuple[str, ...],
        body: bytes,
        walk: _Walk,
    ) -> tuple[dict[str, Reply], str | None, str | None]:
        """One relay's answer per recipient; whole-message failures become the same reply for
        each, and feed the relay's circuit breaker (and ``walk.retry_after``)."""
        circuit = self.circuits[relay.name]
        # A stable Message-ID for messages that lack one, so that every retry carries the same.
        domain = entry.sender.rpartition("@")[2] or self.hostname
        message = prepare_for_relay(body, message_id=f"<{entry.id}@{domain}>")
        envelope = Envelope(entry.sender, addresses, message, entry.id)
        try:
            result = await relay.deliver(envelope)
        except RelayError as exc:
            log.debug("%s relay %s: %s", entry.id, relay.name, exc)
            reply = reply_for_error(exc)
            if classify_reply(reply) is Outcome.TRANSIENT:
                circuit.failure(str(exc), exc.retry_after)
                walk.retry_after = max(walk.retry_after, exc.retry_after or 0.0)
            else:
                circuit.success()  # it answered: the relay works, the message does not
            return dict.fromkeys(addresses, reply), None, None
        except asyncio.CancelledError:
            circuit.release()
            raise
        except Exception as exc:  # a relay bug: keep the mail, retry later, say so loudly
            log.exception("%s relay %s raised unexpectedly", entry.id, relay.name)
            circuit.failure(repr(exc))
            reply = Reply(451, f"relay {relay.name} failed: {exc!r}", "4.3.0")
            return dict.fromkeys(addresses, reply), None, None
        circuit.success()
        missing = Reply(451, "the relay gave no answer for this recipient", "4.3.0")
        replies = {a: result.replies.get(a, missing) for a in addresses}
        return replies, result.remote, result.provider_id

    def _record(
        self, entry: QueueEntry, pending: list[RecipientState], walk: _Walk, elapsed: float
    ) -> None:
        now = time.time()
        entry.attempts += 1
        entry.last_attempt_at = now
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
            else:
                deferred.append(rcpt)
            entry.last_reply = str(reply)
            self._log_attempt(entry, rcpt, outcome, elapsed, answer.provider_id)
        if not deferred:
            return
        if self.backoff.expired(entry.created_at, now):
            lifetime = self.config.queue.retry.lifetime
            for rcpt in deferred:
                rcpt.status = RcptStatus.FAILED
                rcpt.reply = (
                    f"retries exhausted after {entry.attempts} attempts over {lifetime / 3600:g}h; "
                    f"last reply: {rcpt.reply}"
                )
                rcpt.status_code = "4.4.7"
                log.warning("%s to=<%s> expired: %s", entry.id, rcpt.address, rcpt.reply)
        else:
            # The far end's Retry-After is a floor under the backoff.
            delay = max(self.backoff.delay(entry.attempts), walk.retry_after)
            entry.next_attempt_at = now + delay
            for rcpt in deferred:
                self.emit(
                    Event(
                        EventKind.DEFERRED,
                        entry.id,
                        {
                            "recipient": rcpt.address,
                            "reply": rcpt.reply,
                            "next_attempt_at": entry.next_attempt_at,
                            "relay": rcpt.relay,
                        },
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
            self.emit(
                Event(
                    EventKind.DELIVERED,
                    entry.id,
                    {
                        "recipient": rcpt.address,
                        "reply": rcpt.reply,
                        "relay": rcpt.relay,
                        "provider_id": provider_id,
                        "elapsed": round(elapsed, 4),
                        "age": round(time.time() - entry.created_at, 3),
                    },
                )
            )

    async def finish(self, entry: QueueEntry, body: bytes | None = None) -> None:
        """Bounce new failures, then remove, fail or reschedule ``entry`` (durably)."""
        failures = entry.unnotified_failures
        dsn = None
        if failures:
            if entry.may_bounce:
                # The failures are durable before the DSN is queued: a crash in between finds
                # them on restart and bounces them (never sends to them again), and the DSN's
                # id, derived from the entry, tells recovery whether it was already queued.
                await self.store.save(entry)
            dsn = await self._bounce(entry, failures, body)
        if not entry.is_done:
            await self.store.save(entry)
        elif entry.has_failures:
            where = await self.store.fail(entry, self._failure_reason(entry))
            log.warning("%s failed: moved to %s", entry.id, where)
            self.emit(Event(EventKind.FAILED, entry.id, {**entry.summary(), "path": str(where)}))
        else:
            await self.store.remove(entry)
            self.emit(Event(EventKind.COMPLETED, entry.id, entry.summary()))
        # Sent only once the bounced entry has noted it: until then a crash (or a failed write
        # above) must find the DSN still queued, so that it is never sent twice. If the write
        # failed, the entry's next attempt queues the same DSN id again, replacing this one.
        if dsn is not None:
            self.schedule(dsn)

    async def _bounce(
        self, entry: QueueEntry, failures: list[RecipientState], body: bytes | None
    ) -> QueueEntry | None:
        """Queue the DSN for ``failures`` (durably) and return it, unscheduled; mark them."""
        dsn = None
        if entry.may_bounce:
            original = body if body is not None else await self.store.load_body(entry)
            message = self.host.build_bounce(entry, failures, original, self.config)
            dsn = QueueEntry(
                id=f"{entry.id}b{entry.bounces}",
                sender="",
                recipients=[RecipientState(entry.sender)],
                relay=entry.relay,
                source=DSN_SOURCE,
                created_at=time.time(),
                next_attempt_at=time.time(),
                size=len(message),
                is_report=True,
                spool_name=f"bounce of {entry.id}",
            )
            # The bounce is durable before the bounced entry records it: a crash in between
            # regenerates the same id, which replaces the first copy rather than adding one.
            await self.store.add_many([(dsn, message)])
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
                Event(
                    EventKind.BOUNCED,
                    entry.id,
                    {
                        "recipient": failure.address,
                        "reply": failure.reply,
                        "status": failure.status_code,
                        "dsn_sent": entry.may_bounce,
                        "relay": failure.relay,
                    },
                )
            )
        return dsn

    def _failure_reason(self, entry: QueueEntry) -> dict[str, Any]:
        failed = [r for r in entry.recipients if r.status is RcptStatus.FAILED]
        spool = next((str(s.path) for s in self.config.spools if s.key == entry.source), None)
        return {
            "stage": "delivery",
            # Where it came from, so that 'mqd failed retry' sends it back there.
            **({"spool": spool} if spool else {}),
            "reason": "; ".join(f"<{r.address}>: {r.reply}" for r in failed),
            "sender": entry.sender,
            "relay": entry.relay,
            "attempts": entry.attempts,
            "created_at": entry.created_at,
            "file": entry.spool_name,
            "recipients": [
                {
                    "address": r.address,
                    "status": r.status.value,
                    "reply": r.reply,
                    "status_code": r.status_code,
                }
                for r in entry.recipients
            ],
        }
