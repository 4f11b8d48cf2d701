"""The failed folder's administration: what ``mqd failed list / retry / delete`` do.

The folder belongs to the queue store (``mqd.queue.failed``); these operations work the same
whether a daemon runs or not. Retrying re-injects the message into a spool through the producer
path (``mqd.producer.inject``), so it gets a new queue id and goes through policy again. For a
delivery failure the envelope is stated in leading ``X-Sender`` / ``X-Receiver`` lines naming
the original sender and only the recipients that failed (those that were delivered are never
sent to again); other stages re-inject the file unchanged (fix the file or the config first).
The failed copy is removed only once the new file is durable in the spool (a crash in between
leaves it in both places: retried again, it would be sent twice, at least once as everywhere in
mqd). A bounce that could not be delivered (sender ``<>``) is not re-injected: a spool accepts
no null sender, and sending it from an address would let it bounce in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mqd.admin.fanout import request
from mqd.config.accounts import account_for
from mqd.config.schema import Config
from mqd.config.senders import sender_allowed
from mqd.daemon.stores import failed_folder
from mqd.errors import MQDError
from mqd.message.envelope import address_problem
from mqd.message.headers import envelope_field
from mqd.producer.inject import envelope_lines, inject
from mqd.queue.failed import FailedError, FailedFolder, FailedMessage

__all__ = [
    "FailedError",
    "FailedMessage",
    "RetryReport",
    "delete",
    "failed_dir",
    "find",
    "list_failed",
    "matching",
    "reinjection",
    "retry",
]


@dataclass
class RetryReport:
    """What ``retry`` did: (failed id, new spool file, recipients or None when unchanged)."""

    retried: list[tuple[str, Path, list[str] | None]] = field(default_factory=list)
    #: (failed id, why it was left in the folder): only with ``all``.
    skipped: list[tuple[str, str]] = field(default_factory=list)


def failed_dir(config: Config) -> FailedFolder:
    """The failed folder of ``config``'s queue (nothing is created)."""
    return failed_folder(config)


async def list_failed(folder: FailedFolder) -> list[FailedMessage]:
    """Every message in the folder, oldest failure first (``FailedFolder.messages``)."""
    return await folder.messages()


async def find(folder: FailedFolder, ids: Sequence[str]) -> list[FailedMessage]:
    """The messages named by ``ids`` (each a full id or the unique start of one), in order,
    without duplicates. Raises FailedError for an id that names none or several."""
    return await folder.find(ids)


def matching(
    messages: Sequence[FailedMessage], stage: str | None, sender: str | None
) -> list[FailedMessage]:
    """``messages`` that failed at ``stage`` and came from ``sender`` (an address or
    ``*@domain``; None: any)."""
    chosen = []
    for message in messages:
        if stage is not None and message.stage != stage:
            continue
        if sender is not None and not sender_allowed(message.sender or "", [sender]):
            continue
        chosen.append(message)
    return chosen


def reinjection(message: FailedMessage, data: bytes) -> tuple[bytes, list[str] | None]:
    """What to write into the spool to send ``message`` (content ``data``) again, and the
    recipients named in its new envelope (None: the file goes unchanged).

    Raises FailedError when it must not be retried: a bounce, or a delivery failure none of
    whose recipients can be sent to.
    """
    if message.stage != "delivery":
        return data, None
    if message.is_bounce:
        raise FailedError(
            f"{message.id} is a bounce (from <>) that could not be delivered; it is not "
            "re-injected (a spool takes no null sender, and from any other address it could "
            f"bounce in turn). Read it in {message.location}, then "
            f"'mqd failed delete {message.id}'"
        )
    sender = message.sender
    if not sender:
        raise FailedError(f"{message.id}: its record names no sender, so it cannot be retried")
    failed = [r.address for r in message.recipients if r.status == "failed"]
    usable = [a for a in failed if address_problem(a) is None]
    if not usable:
        why = (
            "its failed recipients are not valid addresses"
            if failed
            else "no recipient failed (the others were delivered)"
        )
        raise FailedError(f"{message.id} cannot be retried: {why}")
    return envelope_lines(sender, usable) + strip_envelope_lines(data), usable


def strip_envelope_lines(data: bytes) -> bytes:
    """``data`` without its leading ``X-Sender`` / ``X-Receiver`` lines (and their folded
    continuation lines), the lines ``read_envelope`` takes for the envelope; the rest is
    untouched."""
    pos, in_envelope = 0, False
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end + 1
        line = data[pos:end]
        if in_envelope and line[:1] in (b" ", b"\t"):
            pos = end
            continue
        if envelope_field(line) is None:  # "X-Sender : x" too: see envelope_field
            break
        in_envelope = True
        pos = end
    return data[pos:]


def default_spool(config: Config, message: FailedMessage) -> Path:
    """Where a retry goes without ``--spool``: the spool the message was refused in (recorded
    for intake and policy refusals) while it is still configured, else the spool ``mqd send``
    writes into."""
    recorded = message.record.spool
    if recorded is not None:
        for spool in config.spools:
            if os.path.abspath(spool.path) == os.path.abspath(recorded):
                return spool.path
    return config.inject_spool


async def retry(
    config: Config,
    messages: Sequence[FailedMessage],
    *,
    spool: Path | None = None,
    skip_unretryable: bool = False,
    done: Callable[[], None] | None = None,
) -> RetryReport:
    """Re-inject ``messages`` into ``spool`` (default: ``default_spool``) and remove them from
    the failed folder. Raises FailedError for one that cannot be retried, unless
    ``skip_unretryable`` (then it is reported in ``skipped`` and stays). ``done`` is called as
    each message is dealt with (a progress bar)."""
    folder = failed_folder(config)
    report = RetryReport()
    await _lift_suppressions(config, messages)
    async with folder.changing():
        for message in messages:
            try:
                await _retry_one(config, folder, message, spool, skip_unretryable, report)
            finally:
                if done is not None:
                    done()
    return report


async def _lift_suppressions(config: Config, messages: Sequence[FailedMessage]) -> None:
    """A retry is the operator asking to send to the failed recipients again: their
    suppressions (a 5.1.x bounce put them on the list) are lifted first, in one request per
    account, before the daemon can take the message again."""
    if not config.suppression.enabled:
        return
    by_account: dict[str | None, set[str]] = {}
    for message in messages:
        account = account_for(config.accounts, message.sender or "")
        failed = {r.address for r in message.recipients if r.status == "failed"}
        if failed:
            by_account.setdefault(account.name if account else "", set()).update(failed)
    for name, addresses in by_account.items():
        with contextlib.suppress(MQDError, OSError):  # (no queue yet: nothing is suppressed)
            await request(
                config, "suppress_remove", {"addresses": sorted(addresses), "account": name}
            )


async def _retry_one(
    config: Config,
    folder: FailedFolder,
    message: FailedMessage,
    spool: Path | None,
    skip_unretryable: bool,
    report: RetryReport,
) -> None:
    try:
        [current] = await folder.find([message.id])
        data = await folder.read(current)
        content, recipients = reinjection(current, data)
    except FailedError as exc:
        if not skip_unretryable:
            raise
        report.skipped.append((message.id, str(exc)))
        return
    target = spool or default_spool(config, current)
    try:
        written = await asyncio.to_thread(inject, target, content)
    except OSError as exc:
        done = ", ".join(old for old, _, _ in report.retried)
        raise FailedError(
            f"cannot write {message.id} into the spool {target}: {exc.strerror or exc} "
            "(run this as the daemon's user, or give --spool)"
            + (f"; retried before that: {done}" if done else "")
        ) from exc
    await folder.remove(current)
    report.retried.append((message.id, written, recipients))


async def delete(config: Config, messages: Sequence[FailedMessage]) -> list[str]:
    """Remove ``messages`` (both files) from the failed folder for good; returns their ids."""
    folder = failed_folder(config)
    async with folder.changing():
        for message in messages:
            await folder.remove(message)
    return [m.id for m in messages]
