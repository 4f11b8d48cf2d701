"""The submit API's everyday JSON message, written directly: plain ASCII text, plain addresses,
a short ASCII subject, no HTML, attachments or extra headers. The email package composes
such a message into exactly these bytes (tests/test_submit_plain.py holds the two together),
but parses and folds every header on the way: half the CPU of a request. Anything else is
left to it (``None``).
"""

from __future__ import annotations

import re

__all__ = ["plain_headers", "plain_message"]

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDRESS = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
#: ``app@example.com`` or ``App Name <app@example.com>`` (words of letters and digits).
_MAILBOX = re.compile(rf"{_ADDRESS}|[A-Za-z0-9]+(?: [A-Za-z0-9]+)* <{_ADDRESS}>")
#: A subject written as it is: printable ASCII, single spaces, no encoded-word.
_SUBJECT = re.compile(r"(?:[!-~]+(?: [!-~]+)*)?")
#: A line of the text: printable ASCII and tabs.
_TEXT = re.compile(r"[\t -~]*")
#: The email package folds header lines longer than this, and encodes longer text lines.
MAX_LINE = 78
_CONTENT_TYPE = 'text/plain; charset="utf-8"'
_BODY_HEADERS = f"Content-Type: {_CONTENT_TYPE}\r\nContent-Transfer-Encoding: 7bit\r\n"


def plain_message(
    sender: str,
    to: list[str],
    cc: list[str],
    subject: str,
    text: str,
    date: str,
    message_id: str,
) -> bytes | None:
    """The message the JSON's ``from``, ``to``, ``cc``, ``subject`` and ``text`` (and nothing
    else) make, with these Date and Message-ID values (CRLF line endings); None when it is not
    of the everyday kind."""
    if "=?" in subject or not _SUBJECT.fullmatch(subject):
        return None
    if not all(_MAILBOX.fullmatch(item) for item in (sender, *to, *cc)):
        return None
    fields = [f"From: {sender}"]
    if to:
        fields.append(f"To: {', '.join(to)}")
    if cc:
        fields.append(f"Cc: {', '.join(cc)}")
    fields.append(f"Subject: {subject}" if subject else "Subject:")
    fields += [f"Date: {date}", f"Message-ID: {message_id}"]
    if any(len(field) > MAX_LINE for field in fields):
        return None
    lines = (text if text.endswith("\n") else text + "\n").split("\n")[:-1]
    if not all(len(line) <= MAX_LINE and _TEXT.fullmatch(line) for line in lines):
        return None
    head = "\r\n".join(fields) + "\r\n" + _BODY_HEADERS + "MIME-Version: 1.0\r\n\r\n"
    return (head + "".join(f"{line}\r\n" for line in lines)).encode("ascii")


def plain_headers(
    sender: str, to: list[str], cc: list[str], subject: str, message_id: str
) -> dict[str, str]:
    """The headers ``parse_message`` reads of the message ``plain_message`` wrote from these
    (``ParsedMessage.headers``): the hand-over need not read them again."""
    headers = {"from": sender}
    if to:
        headers["to"] = ", ".join(to)
    if cc:
        headers["cc"] = ", ".join(cc)
    return headers | {"subject": subject, "message-id": message_id, "content-type": _CONTENT_TYPE}
