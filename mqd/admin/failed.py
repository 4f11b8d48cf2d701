"""The failed folder: what ``mqd failed list / retry / delete`` work on.

``<queue dir>/failed/`` holds each message mqd gave up on as ``<id>.eml`` with ``<id>.json``
saying why (``stage``: ``intake`` unreadable file, ``policy`` refused, ``recovery`` its spool is
gone, ``delivery`` a recipient failed permanently or ran out of retries). These are plain file
operations: they work the same whether a daemon runs or not, and never touch the queue.

Retrying re-injects the message into a spool through the producer path (``mqd.producer.inject``),
so it
gets a new queue id and goes through policy again. For a delivery failure the envelope is stated
in leading ``X-Sender`` / ``X-Receiver`` lines naming the original sender and only the recipients
that failed (those that were delivered are never sent to again); other stages re-inject the file
unchanged (fix the file or the config first). The failed copy is removed only once the new file
is durable in the spool (a crash in between leaves it in both places: retried again, it would be
sent twice, at least once as everywhere in mqd). A bounce that could not be delivered (sender
``<>``) is not re-injected: a spool accepts no null sender, and sending it from an address would
let it bounce in turn.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mqd.config.schema import Config
from mqd.errors import MQDError
from mqd.message.envelope import address_problem
from mqd.message.headers import envelope_field
from mqd.producer.inject import envelope_lines, inject

__all__ = [
    "FailedError",
    "FailedMessage",
    "RetryReport",
    "delete",
    "failed_dir",
    "find",
    "list_failed",
    "reinjection",
    "retry",
]

LOCK_NAME = ".lock"


class FailedError(MQDError):
    """A failed message cannot be found, retried or removed; the text says what to do."""


@dataclass(frozen=True)
class FailedMessage:
    """One message in the failed folder: its reason record and where the message is."""

    id: str
    record: dict[str, Any]
    #: The message file: ``<id>.eml``, or where it was left (``left_at``) when it could not be
    #: moved; None when it is missing.
    message_path: Path | None

    @property
    def stage(self) -> str:
        return str(self.record.get("stage", "unknown"))

    @property
    def reason(self) -> str:
        return str(self.record.get("reason", ""))

    @property
    def sender(self) -> str | None:
        """The envelope sender ("" for a bounce), or None when the message was never parsed."""
        sender = self.record.get("sender")
        return sender if isinstance(sender, str) else None

    @property
    def failed_at(self) -> float:
        value = self.record.get("failed_at", 0.0)
        return float(value) if isinstance(value, int | float) else 0.0

    @property
    def recipients(self) -> list[dict[str, Any]]:
        """``{address, status, reply}`` per recipient. Refused messages list addresses only
        (their status is ``"refused"``); unreadable ones have none."""
        found = []
        for item in self.record.get("recipients") or []:
            if isinstance(item, str):
                found.append({"address": item, "status": "refused", "reply": None})
            elif isinstance(item, dict) and isinstance(item.get("address"), str):
                found.append(
                    {
                        "address": item["address"],
                        "status": str(item.get("status", "")),
                        "reply": item.get("reply"),
                    }
                )
        return found

    @property
    def is_bounce(self) -> bool:
        """A delivery report mqd generated (sender ``<>``) that could not be delivered."""
        return self.stage == "delivery" and self.sender == ""

    def to_dict(self) -> dict[str, Any]:
        """The record as ``mqd failed list --json`` prints it, with the message's path."""
        return {
            **self.record,
            "id": self.id,
            "message_path": str(self.message_path) if self.message_path else None,
        }


@dataclass
class RetryReport:
    """What ``retry`` did: (failed id, new spool file, recipients or None when unchanged)."""

    retried: list[tuple[str, Path, list[str] | None]] = field(default_factory=list)
    #: (failed id, why it was left in the folder): only with ``all``.
    skipped: list[tuple[str, str]] = field(default_factory=list)


def failed_dir(config: Config) -> Path:
    """``<queue dir>/failed`` of ``config`` (nothing is created)."""
    return config.failed_dir


def list_failed(directory: Path) -> list[FailedMessage]:
    """Every message in ``directory``, oldest failure first. A record that cannot be read is
    listed with stage ``unreadable``, so that it can be looked at and removed."""
    names = sorted(n for n in _names(directory) if _is_record(n))
    loaded = (_load(directory, name[: -len(".json")]) for name in names)
    found = [message for message in loaded if message is not None]
    return sorted(found, key=lambda m: (m.failed_at, m.id))


def find(directory: Path, ids: Sequence[str]) -> list[FailedMessage]:
    """The messages named by ``ids`` (each a full id or the unique start of one), in order,
    without duplicates. Raises FailedError for an id that names none or several."""
    known = [name[: -len(".json")] for name in _names(directory) if _is_record(name)]
    chosen: dict[str, FailedMessage] = {}
    for wanted in ids:
        matches = [wanted] if wanted in known else [k for k in known if k.startswith(wanted)]
        if not wanted or not matches:
            raise FailedError(
                f"no message {wanted!r} in {directory} ('mqd failed list' shows the ids)"
            )
        if len(matches) > 1:
            raise FailedError(
                f"{wanted!r} is the start of {len(matches)} failed ids: give more of it"
            )
        if matches[0] not in chosen:
            chosen[matches[0]] = _reload(directory, matches[0])
    return list(chosen.values())


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
            f"bounce in turn). Read it in {message.message_path}, then "
            f"'mqd failed delete {message.id}'"
        )
    sender = message.sender
    if not sender:
        raise FailedError(f"{message.id}: its record names no sender, so it cannot be retried")
    failed = [r["address"] for r in message.recipients if r["status"] == "failed"]
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
    recorded = message.record.get("spool")
    if isinstance(recorded, str):
        for spool in config.spools:
            if os.path.abspath(spool.path) == os.path.abspath(recorded):
                return spool.path
    return config.inject_spool


def retry(
    config: Config,
    messages: Sequence[FailedMessage],
    *,
    spool: Path | None = None,
    skip_unretryable: bool = False,
) -> RetryReport:
    """Re-inject ``messages`` into ``spool`` (default: ``default_spool``) and remove them from
    the failed folder. Raises FailedError for one that cannot be retried, unless
    ``skip_unretryable`` (then it is reported in ``skipped`` and stays)."""
    directory = failed_dir(config)
    report = RetryReport()
    with _folder_lock(directory):
        for message in messages:
            try:
                current = _reload(directory, message.id)
                data = _read_message(current)
                content, recipients = reinjection(current, data)
            except FailedError as exc:
                if not skip_unretryable:
                    raise
                report.skipped.append((message.id, str(exc)))
                continue
            target = spool or default_spool(config, current)
            try:
                written = inject(target, content)
            except OSError as exc:
                done = ", ".join(old for old, _, _ in report.retried)
                raise FailedError(
                    f"cannot write {message.id} into the spool {target}: {exc.strerror or exc} "
                    "(run this as the daemon's user, or give --spool)"
                    + (f"; retried before that: {done}" if done else "")
                ) from exc
            _remove(directory, current)
            report.retried.append((message.id, written, recipients))
    return report


def delete(config: Config, messages: Sequence[FailedMessage]) -> list[str]:
    """Remove ``messages`` (both files) from the failed folder for good; returns their ids."""
    directory = failed_dir(config)
    with _folder_lock(directory):
        for message in messages:
            _remove(directory, _reload(directory, message.id))
    return [m.id for m in messages]


# -- helpers --------------------------------------------------------------------------------------


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _is_record(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")


def _load(directory: Path, message_id: str) -> FailedMessage | None:
    """The message ``message_id``, or None when its record is gone."""
    try:
        loaded = json.loads((directory / f"{message_id}.json").read_bytes())
        record = loaded if isinstance(loaded, dict) else {"reason": repr(loaded)}
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        record = {"stage": "unreadable", "reason": f"cannot read {message_id}.json: {exc}"}
    path: Path | None = directory / f"{message_id}.eml"
    if path is not None and not path.exists():
        left_at = record.get("left_at")
        path = Path(left_at) if isinstance(left_at, str) and Path(left_at).exists() else None
    return FailedMessage(message_id, record, path)


def _reload(directory: Path, message_id: str) -> FailedMessage:
    """The current state of ``message_id`` (another command may have removed it meanwhile)."""
    message = _load(directory, message_id)
    if message is None:
        raise FailedError(f"{message_id} is no longer in {directory} (retried or deleted)")
    return message


def _read_message(message: FailedMessage) -> bytes:
    if message.message_path is None:
        raise FailedError(
            f"the message of {message.id} is missing (only its record is left): "
            f"'mqd failed delete {message.id}' removes the record"
        )
    try:
        return message.message_path.read_bytes()
    except OSError as exc:
        raise FailedError(
            f"cannot read {message.message_path}: {exc.strerror or exc} "
            "(run this as the daemon's user)"
        ) from exc


def _remove(directory: Path, message: FailedMessage) -> None:
    """The message first, then its record: an interruption leaves a record that still shows."""
    paths = [directory / f"{message.id}.eml"]
    if message.message_path is not None and message.message_path not in paths:
        paths.append(message.message_path)  # left outside the folder (another filesystem)
    paths.append(directory / f"{message.id}.json")
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise FailedError(
                f"cannot remove {path}: {exc.strerror or exc} (run this as the daemon's user)"
            ) from exc


@contextlib.contextmanager
def _folder_lock(directory: Path) -> Iterator[None]:
    """One changer of the failed folder at a time, so two retries cannot send a message twice.
    (The daemon only adds new ids, which needs no lock.)"""
    try:
        handle = (directory / LOCK_NAME).open("a+", encoding="ascii")
    except FileNotFoundError:
        raise FailedError(f"{directory} does not exist: no message has failed yet") from None
    except OSError as exc:
        raise FailedError(
            f"cannot open {directory / LOCK_NAME}: {exc.strerror or exc} "
            "(run this as the daemon's user)"
        ) from exc
    with handle:
        _lock(handle)
        yield


def _lock(handle: IO[str]) -> None:
    """Wait for an exclusive lock on ``handle`` (released when it is closed)."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
