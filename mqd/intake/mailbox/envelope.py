"""A mailbox delivery's envelope: the ``x-mqd-from`` / ``x-mqd-to`` AMQP headers when the
publisher gave them, else the message's own headers, as a spool file's (``X-Sender`` /
``X-Receiver`` lines, else From and To/Cc/Bcc)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mqd.errors import MessageParseError
from mqd.intake.source import Submission
from mqd.message.envelope import parse_message

__all__ = ["FROM_HEADER", "TO_HEADER", "submission_of"]

FROM_HEADER = "x-mqd-from"
TO_HEADER = "x-mqd-to"


def submission_of(body: bytes, headers: Mapping[str, Any], peer: str | None) -> Submission:
    """The submission of one delivery. Raises MessageParseError (a malformed message, or an
    envelope header that is not one) naming what is wrong."""
    given: dict[str, Any] = {}
    for name, value in headers.items():
        key = name.lower()
        if key in given and key in (FROM_HEADER, TO_HEADER):  # which one is the envelope?
            raise MessageParseError(f"the {key} header is given twice (in different cases)")
        given[key] = value
    sender = _one(given.get(FROM_HEADER))
    recipients = _many(given.get(TO_HEADER))
    read: dict[str, str] | None = None
    if sender is None or recipients is None:
        parsed = parse_message(body)
        read = parsed.headers  # (the hand-over does not read them again)
        if sender is None:
            sender = parsed.sender
        if recipients is None:
            recipients = tuple(parsed.recipients)
    if not recipients:
        raise MessageParseError(f"the {TO_HEADER} header names no recipient")
    return Submission(sender=sender, recipients=recipients, data=body, peer=peer, headers=read)


def _text(value: Any, header: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageParseError(f"the {header} header is not UTF-8") from None
    if not isinstance(value, str):
        raise MessageParseError(f"the {header} header is not text: {value!r}")
    if any(c in value for c in "\r\n\0"):
        raise MessageParseError(f"the {header} header holds a line break or NUL")
    return value.strip()


def _one(value: Any) -> str | None:
    if value is None:
        return None
    return _text(value, FROM_HEADER).removeprefix("<").removesuffix(">")


def _many(value: Any) -> tuple[str, ...] | None:
    """A list of addresses, or one string of comma-separated ones."""
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else _text(value, TO_HEADER).split(",")
    addresses = (_text(item, TO_HEADER) for item in items)
    return tuple(a.removeprefix("<").removesuffix(">") for a in addresses if a)
