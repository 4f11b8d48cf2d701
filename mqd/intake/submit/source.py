"""``SubmitSource``: one ``[[submit]]`` table. It does not listen: the ``[http]`` server
(``mqd.http.submit``) asks the daemon for the running submit sources, finds the one whose token
the request carries, and gives it the request as a ``Call``; ``take`` answers with the queue id
once the message is durable, or raises ``Refusal`` (the HTTP status and problem to answer)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass

from mqd.config.schema import Config, SourceConfig
from mqd.errors import SubmissionError
from mqd.intake.source import HandOver, Source, SourceStatus, Submission
from mqd.intake.submit.request import (
    Refusal,
    bad_request,
    compose_json,
    raw_envelope,
    read_json,
    with_message_id,
)
from mqd.intake.submit.settings import SubmitSettings

__all__ = ["JSON", "RAW", "Accepted", "Call", "SubmitSource"]

log = logging.getLogger("mqd.submit")

RAW = "message/rfc822"
JSON = "application/json"
#: What the source tells ``mqd status`` for where it is reached.
ENDPOINT = "[http] POST /api/v1/messages"
#: How long ``stop`` waits for the requests being handed over.
STOP_TIMEOUT = 10.0
#: The longest ``Idempotency-Key`` taken (characters); a UUID is 36.
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Call:
    """One request as the source takes it."""

    #: ``message/rfc822`` or ``application/json`` (without parameters).
    content_type: str
    body: bytes
    #: The envelope given apart from a raw message (query parameters or headers), if any.
    sender: str | None = None
    recipients: tuple[str, ...] = ()
    #: The ``Idempotency-Key`` header.
    key: str | None = None
    #: Who sent it (``"192.0.2.7"``).
    peer: str | None = None


@dataclass(frozen=True)
class Accepted:
    id: str
    message_id: str
    #: The answer of an earlier request with the same ``Idempotency-Key``: nothing was queued.
    replayed: bool = False


class SubmitSource(Source):
    """A ``[[submit]]`` table: its token, relay and allowed senders. Its idempotency keys are
    the queue store's (``HandOver.submit_once``), shared by every node of the queue."""

    def __init__(self, config: SourceConfig, app: Config, handover: HandOver) -> None:
        super().__init__(config, app, handover)
        self.settings = SubmitSettings.read(config, app)
        self.running = False
        #: Requests being handed over now, and set after each ends (``stop`` waits on them).
        self.taking = 0
        self._taken = asyncio.Event()

    @property
    def token(self) -> str:
        return self.settings.token.reveal()

    async def start(self) -> None:
        self.running = True
        log.info("%s: %s -> relay %s", self.config.name, ENDPOINT, self.config.relay)

    def take_over(self, old: Source) -> bool:
        """The same token: carry on, with no moment of 503s (the keys are the store's)."""
        if not isinstance(old, SubmitSource) or old.settings.scope != self.settings.scope:
            return False
        self.accepted, self.refused = old.accepted, old.refused
        self.running = old.running
        old.running = False  # its requests under way end; the new ones come here
        return True

    async def stop(self) -> None:
        self.running = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT
        while self.taking and loop.time() < deadline:
            self._taken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._taken.wait(), deadline - loop.time())

    def status(self) -> SourceStatus:
        return SourceStatus(
            name=self.config.name,
            kind=self.config.kind,
            listening=(ENDPOINT,),
            connections=self.taking,
            accepted=self.accepted,
            refused=self.refused,
        )

    # -- a request --------------------------------------------------------------------------------

    async def take(self, call: Call) -> Accepted:
        """Queue the call's message (once per ``Idempotency-Key``); Refusal when it is not."""
        if not self.running:
            raise Refusal(
                503,
                "not-taking",
                "Not taking messages now",
                "mqd is stopping (or runs with --once): try again shortly",
                retry_after=5,
            )
        self.taking += 1
        try:
            return await self._queue(call, None if call.key is None else _checked_key(call.key))
        except Refusal:
            self.refused += 1
            raise
        finally:
            self.taking -= 1
            self._taken.set()

    async def _queue(self, call: Call, key: str | None) -> Accepted:
        hostname = self.app.queue.hostname
        message_id: str | None = None
        headers: dict[str, str] | None = None  # (those of a message composed directly)
        if call.content_type == JSON:
            composed = compose_json(read_json(call.body), hostname)
            sender, recipients, data, message_id, headers = composed
        elif call.content_type == RAW:
            sender, recipients = raw_envelope(call.body, call.sender, call.recipients)
            data = call.body
        else:
            raise Refusal(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                f"send Content-Type: {JSON} (a message to compose) or {RAW} (a message as "
                f"it is), not {call.content_type or 'none'}",
            )
        if message_id is None:  # (a composed message has the one it was given)
            data, message_id = with_message_id(data, sender.rpartition("@")[2] or hostname)
        max_size = self.app.queue.max_message_size
        if len(data) > max_size:
            raise _too_large(f"the message is {len(data)} bytes", "queue.max_message_size")
        submission = Submission(sender, recipients, data, peer=call.peer, headers=headers)
        try:
            if key is None:
                queue_id = await self.handover.submit(self.config, submission)
            else:
                return await self._once(call, key, submission, message_id)
        except SubmissionError as exc:
            raise _refusal(exc) from None
        self.accepted += 1
        return Accepted(queue_id, message_id)

    async def _once(
        self, call: Call, key: str, submission: Submission, message_id: str
    ) -> Accepted:
        """Hand over once per key: a repeat gets the first answer, if it is the same request."""
        fingerprint = _fingerprint(call)
        handed = await self.handover.submit_once(
            self.config,
            submission,
            key,
            scope=f"submit.{self.settings.scope}",
            keep_for=self.settings.idempotency_for,
            note=f"{fingerprint} {message_id}",
        )
        if not handed.replayed:
            self.accepted += 1
            return Accepted(handed.id, message_id)
        first, _, first_message_id = handed.note.partition(" ")
        if first != fingerprint:
            raise Refusal(
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                f"the Idempotency-Key {key!r} was used for another request (queued as "
                f"{handed.id}); give each message its own key",
            )
        return Accepted(handed.id, first_message_id, replayed=True)


def _too_large(what: str, limit: str) -> Refusal:
    return Refusal(413, "too-large", "The message is too large", f"{what}, more than {limit}")


def _refusal(exc: SubmissionError) -> Refusal:
    if exc.stage == "policy":
        return Refusal(403, "sender-refused", "The sender is not allowed", exc.reason)
    if exc.stage == "limit":
        return Refusal(
            429, "over-limit", "The sender's account is over its limit", exc.reason, retry_after=60
        )
    if exc.permanent:
        return Refusal(422, "unusable-message", "The message cannot be sent", exc.reason)
    return Refusal(
        503, "queue-unavailable", "The queue cannot take messages now", exc.reason, retry_after=10
    )


def _checked_key(key: str) -> str:
    """The key without the quotes of its structured-field form; a 400 when it is unusable."""
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key or len(key) > MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        raise bad_request(
            f"the Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters "
            "(a UUID, say)"
        )
    return key


def _fingerprint(call: Call) -> str:
    digest = hashlib.sha256()
    for part in (call.content_type, call.sender or "", *call.recipients):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(call.body)
    return digest.hexdigest()[:32]
