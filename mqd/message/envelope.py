"""The envelope of a message, read from a spool file, and the header hygiene before relaying.

A spool file is an RFC 5322 message. Its envelope comes from leading ``X-Sender:`` /
``X-Receiver:`` lines when the file starts with them (the pickup format of .NET's SmtpClient
and IIS), otherwise from the headers: the sender from ``Sender`` or ``From``, the recipients
from ``To``, ``Cc`` and ``Bcc`` (``sendmail -t`` semantics). Only the header block is parsed;
the body is passed through untouched.

The header block is read by ``mqd.message.headers`` (which ``mqd sendmail`` uses without this
module).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mqd.message.headers import (
    ENVELOPE_FIELDS,
    address_problem,
    envelope_address,
    read_envelope,
    split_header,
)

__all__ = [
    "Envelope",
    "ParsedMessage",
    "address_problem",
    "date_now",
    "envelope_address",
    "is_delivery_report",
    "parse_message",
    "prepare_for_relay",
]

#: Never relayed: the envelope lines, Bcc, and mqd's own scheduling header (send later).
_STRIPPED = ENVELOPE_FIELDS | {b"bcc", b"x-mqd-send-at"}


@dataclass(frozen=True)
class Envelope:
    """What a relay delivers: envelope addresses and the message as it goes on the wire.

    ``sender`` is "" for the null sender (bounces). ``message`` is already stripped of Bcc,
    X-Sender and X-Receiver. ``id`` is mqd's queue id, for correlation in provider APIs.
    """

    sender: str
    recipients: tuple[str, ...]
    message: bytes
    id: str = ""

    @property
    def needs_smtputf8(self) -> bool:
        """True when an address is not ASCII (the relay must use SMTPUTF8)."""
        return not all(a.isascii() for a in (self.sender, *self.recipients))


@dataclass(frozen=True)
class ParsedMessage:
    """The envelope found in a spool file, before any policy decision."""

    sender: str
    #: Well-formed recipients, in order, without duplicates.
    recipients: tuple[str, ...]
    #: Recipients that cannot be used, with the reason: they fail at once (and bounce).
    invalid_recipients: tuple[tuple[str, str], ...] = ()
    headers: dict[str, str] = field(default_factory=dict)


def parse_message(
    data: bytes, *, require_sender: bool = True, require_recipients: bool = True
) -> ParsedMessage:
    """The envelope of the message in ``data``.

    Raises MessageParseError (with a reason fit for the failed/ folder) when the data is
    empty, binary, has no valid header block, no sender, or no recipient at all (the last two
    checks can be turned off; the sender is then "" when none is found).
    """
    return ParsedMessage(
        *read_envelope(data, require_sender=require_sender, require_recipients=require_recipients)
    )


def prepare_for_relay(data: bytes, *, message_id: str | None = None) -> bytes:
    """The message as it goes to a relay: Bcc, X-Sender, X-Receiver and X-Mqd-Send-At removed.

    When the message has no Message-ID and ``message_id`` is given, that one is added (a stable
    id, so a retried message keeps it); a missing Date is added too. The body is untouched.
    """
    fields, rest = split_header(data)
    newline = b"\r\n" if b"\r\n" in data[:4096] else b"\n"
    kept = [raw for name, raw in fields if name.lower() not in _STRIPPED]
    names = {name.lower() for name, _ in fields}
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += newline  # the file ended right after its last header
    if b"message-id" not in names and message_id:
        kept.append(b"Message-ID: " + message_id.encode("ascii") + newline)
    if b"date" not in names:
        kept.append(b"Date: " + date_now().encode("ascii") + newline)
    return b"".join(kept) + rest


_date_cache: tuple[int, str] = (-1, "")


def date_now() -> str:
    """The local time as a Date header gives it (``email.utils.formatdate(localtime=True)``,
    whole seconds), formatted once a second: formatdate is a tenth of a delivery's CPU for a
    message without a Date, and a twentieth of a submission's."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        import email.utils  # on first use: most messages carry a Date

        _date_cache = (second, email.utils.formatdate(second, localtime=True))
    return _date_cache[1]


def is_delivery_report(headers: dict[str, str]) -> bool:
    """True when the message is itself a DSN (``multipart/report; report-type=delivery-status``)."""
    content_type = headers.get("content-type", "").lower().replace(" ", "")
    return content_type.startswith("multipart/report") and "delivery-status" in content_type
