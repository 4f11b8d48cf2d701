"""The failed folder behind the store: messages mqd gave up on, each with why (a typed record).

``stage`` says where it failed: ``intake`` (an unreadable or malformed file), ``policy`` (refused
by the sender allow-list or a plugin), ``recovery`` (its spool is no longer configured) or
``delivery`` (a recipient failed permanently or ran out of retries). ``FailedFolder`` is what a
store offers administration: list, read and remove, one changer at a time.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mqd.errors import MQDError

__all__ = [
    "FailedError",
    "FailedFolder",
    "FailedMessage",
    "FailedRecipient",
    "FailureRecord",
]


class FailedError(MQDError):
    """A failed message cannot be found, read, retried or removed; the text says what to do."""


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    address: str
    #: ``failed`` or ``delivered`` (a delivery failure), ``refused`` (refused at intake).
    status: str
    reply: str | None = None
    status_code: str | None = None


#: The keys of the record as written (and read back) by the file store.
_KNOWN = (
    "stage",
    "reason",
    "spool",
    "file",
    "sender",
    "relay",
    "attempts",
    "created_at",
    "subject",
)


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """Why a message is in the failed folder."""

    stage: str
    reason: str
    #: The spool it came from (so that a retry goes back there) and its file name there.
    spool: str | None = None
    file: str | None = None
    #: The envelope sender ("" for a bounce); None when the message was never parsed.
    sender: str | None = None
    recipients: tuple[FailedRecipient, ...] = ()
    relay: str | None = None
    attempts: int | None = None
    created_at: float | None = None
    #: The message's Subject, decoded; None when it was not read or has none.
    subject: str | None = None
    #: Fields this version does not know (written by a newer one), kept as they were.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_bounce(self) -> bool:
        """A delivery report mqd generated (sender ``<>``) that could not be delivered."""
        return self.stage == "delivery" and self.sender == ""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"stage": self.stage, "reason": self.reason}
        for key in ("spool", "file", "sender", "relay", "attempts", "created_at", "subject"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        if self.recipients:
            data["recipients"] = [
                r.address
                if r.status == "refused"
                else {
                    "address": r.address,
                    "status": r.status,
                    "reply": r.reply,
                    "status_code": r.status_code,
                }
                for r in self.recipients
            ]
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FailureRecord:
        """Read a record as written by any version (a record that lacks a field lacks it)."""
        recipients = []
        for item in data.get("recipients") or ():
            if isinstance(item, str):
                recipients.append(FailedRecipient(item, "refused"))
            elif isinstance(item, Mapping) and isinstance(item.get("address"), str):
                recipients.append(
                    FailedRecipient(
                        item["address"],
                        str(item.get("status", "")),
                        _text(item.get("reply")),
                        _text(item.get("status_code")),
                    )
                )
        attempts = data.get("attempts")
        created = data.get("created_at")
        return cls(
            stage=str(data.get("stage", "unknown")),
            reason=str(data.get("reason", "")),
            spool=_text(data.get("spool")),
            file=_text(data.get("file")),
            sender=_text(data.get("sender")),
            recipients=tuple(recipients),
            relay=_text(data.get("relay")),
            attempts=attempts if isinstance(attempts, int) else None,
            created_at=float(created) if isinstance(created, int | float) else None,
            subject=_text(data.get("subject")),
            extra={
                k: v
                for k, v in data.items()
                if k not in (*_KNOWN, "recipients", "id", "failed_at", "left_at")
            },
        )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class FailedMessage:
    """One message in the failed folder."""

    id: str
    failed_at: float
    record: FailureRecord
    #: Where the message is kept, for a person to look at (a file path in the file store);
    #: None when its content is missing (only the record is left).
    location: str | None

    @property
    def stage(self) -> str:
        return self.record.stage

    @property
    def reason(self) -> str:
        return self.record.reason

    @property
    def sender(self) -> str | None:
        return self.record.sender

    @property
    def recipients(self) -> tuple[FailedRecipient, ...]:
        return self.record.recipients

    @property
    def subject(self) -> str | None:
        return self.record.subject

    @property
    def is_bounce(self) -> bool:
        return self.record.is_bounce

    def to_dict(self) -> dict[str, Any]:
        """As ``mqd failed list --json`` and the API print it."""
        return {
            **self.record.to_dict(),
            "id": self.id,
            "failed_at": self.failed_at,
            "message_path": self.location,
        }


class FailedFolder(abc.ABC):
    """The failed folder of a store. Every method raises FailedError with a message for the
    user when the folder cannot be read or changed."""

    @abc.abstractmethod
    async def messages(self) -> list[FailedMessage]:
        """Every message, oldest failure first; a record that cannot be read is listed with
        stage ``unreadable``, so that it can be looked at and removed."""

    @abc.abstractmethod
    async def find(self, ids: Sequence[str]) -> list[FailedMessage]:
        """The messages named by ``ids`` (full ids or unique starts), in order, each once.
        FailedError for an id that names none or several."""

    @abc.abstractmethod
    async def read(self, message: FailedMessage) -> bytes:
        """The message's content; FailedError when it is missing or unreadable."""

    @abc.abstractmethod
    async def remove(self, message: FailedMessage) -> None:
        """Remove the message and its record for good (the content first: an interruption
        leaves a record that still shows)."""

    @abc.abstractmethod
    async def count(self) -> int:
        """How many messages are in the folder (0 when it cannot be read)."""

    async def prune(self, before: float) -> list[str]:
        """Remove the messages that failed before ``before`` (``queue.failed_retention``, or
        ``mqd failed delete --older-than``); returns their ids."""
        messages = await self.messages()
        if not messages or messages[0].failed_at >= before:
            return []  # nothing to prune: no lock taken (nor its file made) for nothing
        removed = []
        async with self.changing():
            for message in await self.messages():
                if message.failed_at >= before:
                    break  # oldest first: the rest are newer
                await self.remove(message)
                removed.append(message.id)
        return removed

    @abc.abstractmethod
    def changing(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold this while re-reading and changing messages: one changer at a time, so that two
        retries cannot send a message twice (the daemon only adds new ids, which needs none)."""


@contextlib.asynccontextmanager
async def no_lock() -> AsyncIterator[None]:
    """``changing`` of a folder that needs no lock (one process, one event loop)."""
    yield
