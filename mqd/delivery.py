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
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from .classify import classify_reply, reply_for_error
from .config import Config
from .envelope import Envelope, prepare_for_relay
from .errors import RelayError
from .events import Event, EventKind, EventSink
from .plugins import PluginHost
from .queue.entry import QueueEntry, RcptStatus, RecipientState
from .queue.filestore import DSN_SOURCE, FileStore
from .queue.schedule import Backoff
from .relays.base import Outcome, Relay, Reply

__all__ = ["Deliverer"]

log = logging.getLogger("mqd.delivery")


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

    async def attempt(self, entry: QueueEntry) -> None:
        """Try the pending recipients of ``entry`` once, then record and act on the outcome.

        Cancellation (shutdown) before the relay answered leaves the entry untouched: a cancelled
        attempt is not counted.
        """
        pending = entry.pending
        body = None
        if pending:
            body = await self.store.load_body(entry)
            started = time.monotonic()
            replies, remote = await self._relay(entry, pending, body)
            self._record(entry, pending, replies, remote, time.monotonic() - started)
        await self.finish(entry, body)

    async def _relay(
        self, entry: QueueEntry, pending: list[RecipientState], body: bytes
    ) -> tuple[dict[str, Reply], str | None]:
        addresses = tuple(r.address for r in pending)
        relay = self.relays.get(entry.relay)
        if relay is None:
            reply = Reply(451, f"no relay named {entry.relay!r} is configured", "4.3.5")
            return dict.fromkeys(addresses, reply), None
        # A stable Message-ID for messages that lack one, so that every retry carries the same.
        domain = entry.sender.rpartition("@")[2] or self.hostname
        message = prepare_for_relay(body, message_id=f"<{entry.id}@{domain}>")
        envelope = Envelope(entry.sender, addresses, message, entry.id)
        try:
            result = await relay.deliver(envelope)
        except RelayError as exc:
            log.debug("%s relay %s: %s", entry.id, relay.name, exc)
            return dict.fromkeys(addresses, reply_for_error(exc)), None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a relay bug: keep the mail, retry later, say so loudly
            log.exception("%s relay %s raised unexpectedly", entry.id, relay.name)
            reply = Reply(451, f"relay {relay.name} failed: {exc!r}", "4.3.0")
            return dict.fromkeys(addresses, reply), None
        missing = Reply(451, "the relay gave no answer for this recipient", "4.3.0")
        return {a: result.replies.get(a, missing) for a in addresses}, result.remote

    def _record(
        self,
        entry: QueueEntry,
        pending: list[RecipientState],
        replies: dict[str, Reply],
        remote: str | None,
        elapsed: float,
    ) -> None:
        now = time.time()
        entry.attempts += 1
        entry.last_attempt_at = now
        deferred: list[RecipientState] = []
        for rcpt in pending:
            reply = replies[rcpt.address]
            outcome = classify_reply(reply)
            rcpt.reply, rcpt.status_code, rcpt.remote = str(reply), reply.status, remote
            if outcome is Outcome.DELIVERED:
                rcpt.status = RcptStatus.DELIVERED
            elif outcome is Outcome.PERMANENT:
                rcpt.status = RcptStatus.FAILED
            else:
                deferred.append(rcpt)
            entry.last_reply = str(reply)
            self._log_attempt(entry, rcpt, outcome, elapsed)
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
            entry.next_attempt_at = now + self.backoff.delay(entry.attempts)
            for rcpt in deferred:
                self.emit(
                    Event(
                        EventKind.DEFERRED,
                        entry.id,
                        {
                            "recipient": rcpt.address,
                            "reply": rcpt.reply,
                            "next_attempt_at": entry.next_attempt_at,
                            "relay": entry.relay,
                        },
                    )
                )

    def _log_attempt(
        self, entry: QueueEntry, rcpt: RecipientState, outcome: Outcome, elapsed: float
    ) -> None:
        level = logging.INFO if outcome is Outcome.DELIVERED else logging.WARNING
        log.log(
            level,
            "%s from=<%s> to=<%s> relay=%s attempt=%d delay=%.3fs outcome=%s reply=%s",
            entry.id,
            entry.sender,
            rcpt.address,
            entry.relay,
            entry.attempts,
            elapsed,
            outcome.value,
            rcpt.reply,
            extra={
                "mqd": {
                    "id": entry.id,
                    "sender": entry.sender,
                    "recipient": rcpt.address,
                    "relay": entry.relay,
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
                        "relay": entry.relay,
                    },
                )
            )

    async def finish(self, entry: QueueEntry, body: bytes | None = None) -> None:
        """Bounce new failures, then remove, fail or reschedule ``entry`` (durably)."""
        failures = entry.unnotified_failures
        if failures:
            await self._bounce(entry, failures, body)
        if not entry.is_done:
            await self.store.save(entry)
            return
        if entry.has_failures:
            where = await self.store.fail(entry, self._failure_reason(entry))
            log.warning("%s failed: moved to %s", entry.id, where)
            self.emit(Event(EventKind.FAILED, entry.id, {**entry.summary(), "path": str(where)}))
        else:
            await self.store.remove(entry)
            self.emit(Event(EventKind.COMPLETED, entry.id, entry.summary()))

    async def _bounce(
        self, entry: QueueEntry, failures: list[RecipientState], body: bytes | None
    ) -> None:
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
            self.schedule(dsn)
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
                    },
                )
            )

    @staticmethod
    def _failure_reason(entry: QueueEntry) -> dict[str, Any]:
        failed = [r for r in entry.recipients if r.status is RcptStatus.FAILED]
        return {
            "stage": "delivery",
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
