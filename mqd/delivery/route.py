"""One pass of an entry's pending recipients along its route of relays.

The next relay of the route gets the recipients the previous one deferred, or all of them when
that one is unhealthy or held back by its quota. Whole-message failures become the same reply for
each recipient and feed the relay's circuit breaker; a relay that raises something it should not
(a bug) defers the mail (451 4.3.0), never bounces it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mqd.clock import Clock
from mqd.delivery.guards import Guards
from mqd.delivery.health import Result
from mqd.errors import RelayError
from mqd.events import RelayCall
from mqd.message.classify import classify_reply, reply_for_error
from mqd.message.envelope import Envelope, prepare_for_relay
from mqd.message.reply import Outcome, Reply
from mqd.queue.entry import QueueEntry, RecipientState
from mqd.relays.base import Relay

__all__ = ["Answer", "Walk", "walk_route"]

log = logging.getLogger("mqd.delivery")


@dataclass
class Answer:
    reply: Reply
    remote: str | None
    relay: str
    provider_id: str | None


@dataclass
class Walk:
    """What one pass along a route produced."""

    answers: dict[str, Answer] = field(default_factory=dict)
    #: False when no relay could be used at all (then the attempt does not count).
    tried: bool = False
    #: Why relays were skipped, and the shortest wait until one of them may be used.
    held: list[str] = field(default_factory=list)
    wait: float = math.inf
    #: The longest pause a relay asked for (Retry-After): the next attempt is no sooner.
    retry_after: float = 0.0
    body: bytes | None = None
    #: Each relay called, in order, with its times and answer (``Attempted.calls``).
    calls: list[RelayCall] = field(default_factory=list)

    def answer(
        self,
        addresses: tuple[str, ...],
        reply: Reply,
        remote: str | None,
        relay: str,
        pid: str | None,
    ) -> None:
        for address in addresses:
            self.answers[address] = Answer(reply, remote, relay, pid)

    def hold(self, why: str, wait: float) -> None:
        self.held.append(why)
        self.wait = min(self.wait, wait)


async def walk_route(
    entry: QueueEntry,
    pending: list[RecipientState],
    relays: Mapping[str, Relay],
    guards: Guards,
    *,
    load_body: Callable[[], Awaitable[bytes]],
    dispatching: Callable[[], Awaitable[None]],
    hostname: str,
    clock: Clock,
) -> Walk:
    """Hand ``pending`` to the route's relays in turn. ``dispatching`` is awaited before the
    first relay gets the message (it raises when the entry may no longer be sent)."""
    walk = Walk()
    remaining = tuple(r.address for r in pending)
    route = entry.relays
    marked = False
    for position, name in enumerate(route):
        relay = relays.get(name)
        if relay is None:
            reply = Reply(451, f"no relay named {name!r} is configured", "4.3.5")
            walk.answer(remaining, reply, None, name, None)
            walk.tried = True
            continue
        wait = await guards.admit(name)
        if wait is not None:
            walk.hold(f"relay {name} {wait[1]}", wait[0])
            continue
        try:
            if walk.body is None:  # read only once a relay takes it: a held message costs no I/O
                walk.body = await load_body()
            if not marked:
                await dispatching()
                marked = True
        except BaseException:
            guards.circuits[name].release()
            raise
        walk.tried = True
        started = clock.time()
        replies, remote, provider_id = await _deliver_via(
            relay, entry, remaining, walk.body, walk, guards, hostname
        )
        ended = clock.time()
        for address in remaining:
            walk.answer((address,), replies[address], remote, name, provider_id)
        record = _history(name, remaining, replies, remote, provider_id, ended)
        entry.record(record)
        walk.calls.append(
            RelayCall(
                relay=name,
                remote=remote,
                started=started,
                ended=ended,
                recipients=remaining,
                reply=record["reply"],
                outcome=record["outcome"],
                provider_id=provider_id,
            )
        )
        _note_health(guards, name, [replies[a] for a in remaining], ended)
        remaining = tuple(a for a in remaining if classify_reply(replies[a]) is Outcome.TRANSIENT)
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


async def _deliver_via(
    relay: Relay,
    entry: QueueEntry,
    addresses: tuple[str, ...],
    body: bytes,
    walk: Walk,
    guards: Guards,
    hostname: str,
) -> tuple[dict[str, Reply], str | None, str | None]:
    """One relay's answer per recipient; whole-message failures become the same reply for
    each, and feed the relay's circuit breaker (and ``walk.retry_after``)."""
    circuit = guards.circuits[relay.name]
    # A stable Message-ID for messages that lack one, so that every retry carries the same.
    domain = entry.sender.rpartition("@")[2] or hostname
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


def _note_health(guards: Guards, name: str, replies: list[Reply], at: float) -> None:
    """The attempt, for the relay's health: delivered when it accepted a recipient."""
    outcomes = [classify_reply(reply) for reply in replies]
    if Outcome.DELIVERED in outcomes:
        guards.health_of(name).record(at, "delivered")
        return
    result: Result = "refused" if all(o is Outcome.PERMANENT for o in outcomes) else "failed"
    guards.health_of(name).record(at, result, str(replies[0]) if replies else None)


def _history(
    relay: str,
    addresses: tuple[str, ...],
    replies: Mapping[str, Reply],
    remote: str | None,
    provider_id: str | None,
    now: float,
) -> dict[str, Any]:
    """The entry's record of one relay's answer."""
    outcomes = {classify_reply(replies[a]).value for a in addresses}
    record: dict[str, Any] = {
        "at": round(now, 3),
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
