"""Default plugin: the delivery status notification (RFC 3464 multipart/report).

The bounce has three parts: a human explanation, the machine-readable
``message/delivery-status`` (one block per failed recipient), and the original's headers
(``text/rfc822-headers``: enough to identify it without returning a large body). It is sent
from the null sender, so it can never bounce in turn.
"""

from __future__ import annotations

import email.utils
import secrets
from email.headerregistry import Address

from mqd.config.hostname import local_hostname
from mqd.config.schema import Config
from mqd.plugins.hookspecs import hookimpl
from mqd.queue.entry import QueueEntry, RecipientState

__all__ = ["build_bounce", "original_headers"]

CRLF = "\r\n"


def build_bounce(
    entry: QueueEntry,
    failures: list[RecipientState],
    original: bytes,
    *,
    bounce_sender: str,
    reporting_mta: str | None = None,
    dsn_id: str | None = None,
) -> bytes:
    """A complete RFC 3464 bounce for ``failures`` of ``entry``, addressed to ``entry.sender``."""
    mta = reporting_mta or local_hostname()
    boundary = f"=_mqd_{secrets.token_hex(12)}"
    now = email.utils.formatdate(localtime=True)
    arrival = email.utils.formatdate(entry.created_at, localtime=True)
    subject_line = _header_value(original, b"subject")
    message_id = f"<{dsn_id or entry.id + '.dsn'}@{mta}>"
    from_header = str(Address("Mail Delivery System", addr_spec=bounce_sender))

    human = [
        "This is the mail system at host " + mta + ".",
        "",
        "Your message could not be delivered to the recipients below. The reason the",
        "receiving server gave is shown with each one.",
        "",
    ]
    if subject_line:
        human += ["Subject of your message: " + subject_line, ""]
    for failure in failures:
        human.append(f"<{failure.address}>: {_one_line(failure.reply or 'delivery failed')}")
    human += ["", "The headers of your message are attached."]

    status = [
        f"Reporting-MTA: dns; {mta}",
        f"X-Mqd-Queue-ID: {entry.id}",
        f"Arrival-Date: {arrival}",
        "",
    ]
    for failure in failures:
        status += [
            f"Final-Recipient: rfc822; {failure.address}",
            "Action: failed",
            f"Status: {failure.status_code or '5.0.0'}",
        ]
        if failure.remote:
            status.append(f"Remote-MTA: dns; {failure.remote}")
        if failure.reply:
            status.append(f"Diagnostic-Code: smtp; {_one_line(failure.reply)}")
        if entry.last_attempt_at:
            status.append(
                "Last-Attempt-Date: "
                + email.utils.formatdate(entry.last_attempt_at, localtime=True)
            )
        status.append("")

    headers_part = original_headers(original)
    lines = [
        f"From: {from_header}",
        f"To: <{entry.sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {now}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        *status,
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "Content-Transfer-Encoding: 8bit",
        "",
    ]
    head = CRLF.join(lines).encode("utf-8", "surrogateescape") + CRLF.encode()
    tail = f"{CRLF}--{boundary}--{CRLF}".encode()
    return head + headers_part + tail


def original_headers(original: bytes) -> bytes:
    """The header block of ``original`` with CRLF line endings, without the envelope lines."""
    end = len(original)
    for separator in (b"\r\n\r\n", b"\n\n"):
        found = original.find(separator)
        if found >= 0:
            end = min(end, found)
    block = original[:end].replace(b"\r\n", b"\n").split(b"\n")
    kept: list[bytes] = []
    skipping = False
    for line in block:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        skipping = name in (b"bcc", b"x-sender", b"x-receiver")
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + b"\r\n"


def _header_value(original: bytes, wanted: bytes) -> str:
    for line in original_headers(original).split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == wanted:
            return _one_line(value.decode("utf-8", "replace").strip())
    return ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


@hookimpl(trylast=True)
def mqd_build_bounce(
    entry: QueueEntry, failures: list[RecipientState], original: bytes, config: Config
) -> bytes:
    return build_bounce(
        entry,
        failures,
        original,
        bounce_sender=config.queue.bounce_sender,
        reporting_mta=config.queue.hostname,
        dsn_id=f"{entry.id}b{entry.bounces}",
    )
