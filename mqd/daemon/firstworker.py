"""Keyed hand-overs of a file store's workers, made in worker 1.

On the file store each worker of ``queue.workers`` keeps its own hand-over keys (its queue's
journal, ``mqd.queue.file.keys``), so a request sent again with its Idempotency-Key to another
worker (the kernel spreads the connections of ``[http]`` over them) would be queued twice. A
worker other than the first therefore hands over every keyed message through worker 1's control
socket (op ``handover_once``): worker 1 checks and queues it with its keys, and answers as its
own hand-over would. Messages without a key are queued by the worker that took them.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from mqd.admin.control import ControlError, DaemonNotRunning, Handler, call
from mqd.config.schema import Config, SourceConfig
from mqd.errors import SubmissionError
from mqd.intake.source import HandOver, Login, Submission
from mqd.queue.keys import Handed

__all__ = ["HANDOVER_ONCE", "KeyedInFirstWorker", "serving_handovers", "sources_handover"]

#: The control operation worker 1 answers for the other workers.
HANDOVER_ONCE = "handover_once"


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
            "key": key,
            "scope": scope,
            "keep_for": keep_for,
            "note": note,
        }
        try:
            answer: dict[str, Any] = await call(self.first, HANDOVER_ONCE, args)
        except (DaemonNotRunning, ControlError, OSError) as exc:
            reason = f"worker 1, which keeps the hand-over keys, cannot take it now: {exc}"
            raise SubmissionError(reason, stage="queue", permanent=False) from None
        if "error" in answer:
            raise SubmissionError(
                answer["error"], stage=answer["stage"], permanent=answer["permanent"]
            )
        return Handed(answer["id"], answer["note"], replayed=answer["replayed"])


def serving_handovers(handle: Handler, config: Callable[[], Config], handover: HandOver) -> Handler:
    """The control socket's handler: ``handle``, and in worker 1 of a file store with several
    workers, ``handover_once`` for the others (the source named, as its own hand-over)."""

    async def handle_with_handovers(op: str, args: dict[str, Any]) -> Any:
        now = config()
        if op != HANDOVER_ONCE or now.queue.store != "file" or now.queue.worker != 1:
            return await handle(op, args)
        return await _handover_once(now, handover, args)

    return handle_with_handovers


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
