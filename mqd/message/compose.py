"""Build a message from command-line parts, for ``mqd send``."""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from mqd.message.mimepolicy import COMPOSING, SENDING

__all__ = ["compose", "with_new_message_id"]


def compose(
    *,
    sender: str,
    to: Sequence[str],
    cc: Sequence[str] = (),
    subject: str = "",
    body: str = "",
    attachments: Sequence[Path] = (),
    send_at: str | None = None,
    traceparent: str | None = None,
) -> bytes:
    """A complete RFC 5322 message (Date and Message-ID included), CRLF line endings;
    ``send_at`` becomes its ``X-Mqd-Send-At`` header (send later), ``traceparent`` its W3C
    ``traceparent`` header (mqd's spans continue that trace)."""
    msg = EmailMessage(policy=COMPOSING)
    msg["From"] = sender
    if to:
        msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    if send_at is not None:
        msg["X-Mqd-Send-At"] = send_at
    if traceparent:
        msg["traceparent"] = traceparent
    msg.set_content(body if body.endswith("\n") else body + "\n")
    for path in attachments:
        ctype, encoding = mimetypes.guess_type(path.name)
        if ctype is None or encoding is not None:
            ctype = "application/octet-stream"
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(
            path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name
        )
    return msg.as_bytes(policy=SENDING)


def with_new_message_id(message: bytes, domain: str) -> bytes:
    """``message`` with its Message-ID header replaced by a fresh one (for ``--count``)."""
    start = message.find(b"\r\nMessage-ID: ")
    if start < 0:
        return message
    end = message.find(b"\r\n", start + 2)
    fresh = make_msgid(domain=domain or None).encode("ascii")
    return message[: start + 14] + fresh + message[end:]
