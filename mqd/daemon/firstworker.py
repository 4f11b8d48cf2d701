"""Keyed hand-overs of a file store's workers, made in worker 1.

On the file store each worker of ``queue.workers`` keeps its own hand-over keys (its queue's
journal, ``mqd.queue.file.keys``), so a request sent again with its Idempotency-Key to another
worker (the kernel spreads the connections of ``[http]`` over them) would be queued twice. A
worker other than the first therefore hands over every keyed message through worker 1's control
socket: worker 1 checks and queues it with its keys, and answers as its own hand-over would.
Messages without a key are queued by the worker that took them.

The keyed hand-overs of a worker go in batches (op ``handover_batch``): those that arrive while
one batch is under way gather, and go as the next, one control round trip for all of them;
worker 1 hands a batch's messages over together, so they share its store's batch (and fsyncs).
``handover_once`` (one message) is still answered.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from typing import Any

from mqd.admin.control import ControlError, DaemonNotRunning, Handler, call
from mqd.config.schema import Config, SourceConfig
from mqd.errors import SubmissionError
from mqd.intake.source import HandOver, Login, Submission
from mqd.queue.keys import Handed

__all__ = [
    "HANDOVER_BATCH",
    "HANDOVER_ONCE",
    "KeyedInFirstWorker",
    "serving_handovers",
    "sources_handover",
]

log = logging.getLogger("mqd.intake")

#: The control operations worker 1 answers for the other workers: one hand-over, or several.
HANDOVER_ONCE = "handover_once"
HANDOVER_BATCH = "handover_batch"
#: At most this many hand-overs in one control request (worker 1's store batch is as big)...
BATCH = 256
#: ...and at most this many requests under way at once: the next batch gathers meanwhile.
SENDERS = 2


def sources_handover(config: Config, handover: HandOver) -> HandOver:
    """The hand-over this worker's sources use: ``handover``, or in a file store's worker
    other than the first, one that makes the keyed hand-overs in worker 1."""
    if config.queue.store != "file" or config.queue.worker == 1:
        return handover
    return KeyedInFirstWorker(handover, config)


class KeyedInFirstWorker:
    """Implements ``HandOver``: ``submit_once`` in worker 1, the rest here."""

    def __init__(self, here: HandOver, config: Config) -> None:
        self.here = here
        self.first = config.for_worker(1).queue.own_dir
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
        self._senders: set[asyncio.Task[None]] = set()
        #: A sender has started and not taken its first batch yet: what comes now joins it.
        self._gathering = False

    def check_sender(self, source: SourceConfig, sender: str, login: Login | None) -> str | None:
        return self.here.check_sender(source, sender, login)

    async def submit(self, source: SourceConfig, submission: Submission) -> str:
        return await self.here.submit(source, submission)

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
        return self.here.rejected(
            source, stage=stage, reason=reason, name=name, sender=sender, recipients=recipients
        )

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
        args = {
            "source": source.name,
            "sender": submission.sender,
            "recipients": list(submission.recipients),
            "data": base64.b64encode(submission.data).decode("ascii"),
            "trace": base64.b64encode(submission.trace).decode("ascii"),
            "peer": submission.peer,
            # (a login's own allowed senders are checked in worker 1, as here)
            "login": _login_args(submission.login),
            # (those the source read already: worker 1 does not read them again)
            "headers": submission.headers,
            "key": key,
            "scope": scope,
            "keep_for": keep_for,
            "note": note,
        }
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((args, done))
        if not self._gathering and len(self._senders) < SENDERS:
            self._gathering = True
            sender = asyncio.create_task(self._send(), name="mqd-handover-first")
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        # Shielded: a producer that goes away meanwhile does not take the batch down with it.
        answer = await asyncio.shield(done)
        if "error" in answer:
            raise SubmissionError(
                answer["error"], stage=answer["stage"], permanent=answer["permanent"]
            )
        return Handed(answer["id"], answer["note"], replayed=answer["replayed"])

    async def _send(self) -> None:
        """Send what waits to worker 1, a batch per request, until nothing waits."""
        try:
            await asyncio.sleep(0)  # the hand-overs of this turn of the loop join the first batch
        finally:
            self._gathering = False
        while self._waiting:
            batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
            try:
                answers = await call(
                    self.first, HANDOVER_BATCH, {"items": [args for args, _ in batch]}
                )
                if not isinstance(answers, list) or len(answers) != len(batch):
                    raise ControlError(f"worker 1 answered {answers!r:.80} for {len(batch)}")
            except (DaemonNotRunning, ControlError, OSError) as exc:
                reason = f"worker 1, which keeps the hand-over keys, cannot take it now: {exc}"
                answers = [{"error": reason, "stage": "queue", "permanent": False}] * len(batch)
            except Exception as exc:  # a bug: its producers are answered all the same
                log.exception("handing a batch over to worker 1 failed")
                reason = f"handing it over to worker 1 failed: {exc!r}"
                answers = [{"error": reason, "stage": "queue", "permanent": False}] * len(batch)
            for (_, done), answer in zip(batch, answers, strict=True):
                if not done.done():
                    done.set_result(answer)


def serving_handovers(handle: Handler, config: Callable[[], Config], handover: HandOver) -> Handler:
    """The control socket's handler: ``handle``, and in worker 1 of a file store with several
    workers, ``handover_once`` and ``handover_batch`` for the others (the source named, as its
    own hand-over; a batch's together, each answered for itself, in order)."""

    async def handle_with_handovers(op: str, args: dict[str, Any]) -> Any:
        now = config()
        ours = op in (HANDOVER_ONCE, HANDOVER_BATCH)
        if not ours or now.queue.store != "file" or now.queue.worker != 1:
            return await handle(op, args)
        if op == HANDOVER_ONCE:
            return await _handover_once(now, handover, args)
        items = args["items"]
        done = await asyncio.gather(
            *(_handover_once(now, handover, item) for item in items), return_exceptions=True
        )
        return [_answer(outcome) for outcome in done]

    return handle_with_handovers


def _answer(outcome: Any) -> Any:
    """One item's answer: a hand-over's, or a failure of ours said as "try again"."""
    if not isinstance(outcome, BaseException):
        return outcome
    log.error("a hand-over for another worker failed: %r", outcome)
    return {"error": f"internal error: {outcome!r}", "stage": "queue", "permanent": False}


async def _handover_once(config: Config, handover: HandOver, args: dict[str, Any]) -> Any:
    source = next((s for s in config.sources if s.name == args["source"]), None)
    if source is None:
        reason = f"worker 1 has no source {args['source']!r} (its config is being reloaded?)"
        return {"error": reason, "stage": "queue", "permanent": False}
    submission = Submission(
        args["sender"],
        tuple(args["recipients"]),
        base64.b64decode(args["data"]),
        peer=args["peer"],
        trace=base64.b64decode(args["trace"]),
        headers=_headers(args.get("headers")),
        login=_login(args.get("login")),
    )
    try:
        handed = await handover.submit_once(
            source,
            submission,
            args["key"],
            scope=args["scope"],
            keep_for=float(args["keep_for"]),
            note=args["note"],
        )
    except SubmissionError as exc:
        return {"error": exc.reason, "stage": exc.stage, "permanent": exc.permanent}
    return {"id": handed.id, "note": handed.note, "replayed": handed.replayed}


def _login_args(login: Login | None) -> dict[str, Any] | None:
    if login is None:
        return None
    return {"name": login.name, "allowed_senders": list(login.allowed_senders)}


def _login(given: Any) -> Login | None:
    if not isinstance(given, dict):
        return None
    return Login(str(given["name"]), tuple(str(p) for p in given.get("allowed_senders", ())))


def _headers(given: Any) -> dict[str, str] | None:
    if not isinstance(given, dict):
        return None
    return {str(name): str(value) for name, value in given.items()}
