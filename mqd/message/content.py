"""What a person reads of a message: its Subject decoded, its headers, its text and HTML parts,
and its attachments (``read_content``), for the web view's message page and the API.

Header values are decoded from RFC 2047 encoded words (``=?utf-8?q?...?=``) into text with no
control characters; whatever cannot be decoded is shown as it was. Nothing here renders HTML or
escapes it: that is the caller's business (``mqd.http``).
"""

from __future__ import annotations

import base64
import email.header
import email.message
import email.policy
import re
import urllib.parse
from dataclasses import dataclass, field
from email.parser import BytesParser

from mqd.errors import MessageParseError
from mqd.message.headers import split_header, unfold

__all__ = [
    "Attachment",
    "Content",
    "attachment_bytes",
    "decoded_header",
    "inline_images",
    "read_content",
    "subject_of",
]

#: The longest Subject kept (characters): a list shows a line, not a paragraph.
SUBJECT_LIMIT = 300
#: The most of a text or HTML part the page shows (characters).
TEXT_LIMIT = 512 * 1024
#: The most header fields listed.
HEADER_LIMIT = 200


def decoded_header(raw: str | None, limit: int = SUBJECT_LIMIT) -> str:
    """``raw`` (an unfolded header value) with its encoded words decoded, each run of control
    characters (a fold's line break, a tab) made one space, cut at ``limit`` characters."""
    if not raw:
        return ""
    text = raw
    if "=?" in raw:
        try:
            text = str(email.header.make_header(email.header.decode_header(raw)))
        except (LookupError, ValueError, UnicodeError):
            text = raw
    cleaned = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def subject_of(data: bytes) -> str:
    """The decoded Subject of the message in ``data`` (only its header block is read)."""
    try:
        fields, _ = split_header(data)
    except MessageParseError:
        return ""
    for name, raw in fields:
        if name.lower() == b"subject":
            return decoded_header(unfold(raw).strip())
    return ""


@dataclass(frozen=True)
class Attachment:
    """A part that is not the message's text: a file attached, or an inline image."""

    #: Its number among the message's parts (how the view names it for a download).
    index: int
    #: Its file name (decoded), or None when it gives none.
    filename: str | None
    #: Its media type, in lower case ("application/pdf").
    content_type: str
    #: Its size once decoded, in bytes.
    size: int
    #: Its Content-ID without the angle brackets, when it has one (an inline image).
    content_id: str | None = None


@dataclass(frozen=True)
class Content:
    """A message as a person reads it."""

    #: Every header field (name, decoded value), in order; the envelope lines too.
    headers: list[tuple[str, str]]
    subject: str
    #: The first text/plain part that is not an attachment; None when there is none.
    text: str | None
    #: The first text/html part that is not an attachment; None when there is none.
    html: str | None
    attachments: list[Attachment] = field(default_factory=list)
    #: Set when the bytes are not a message that can be read (the reason).
    problem: str | None = None


def _parse(data: bytes) -> email.message.EmailMessage:
    message = BytesParser(policy=email.policy.compat32).parsebytes(data)
    assert isinstance(message, email.message.Message)
    return message  # type: ignore[return-value]


def _payload(part: email.message.Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _text_of(part: email.message.Message) -> str:
    charset = part.get_content_charset() or "utf-8"
    data = _payload(part)
    try:
        text = data.decode(charset, "replace")
    except LookupError:
        text = data.decode("utf-8", "replace")
    return text[:TEXT_LIMIT]


def _leaves(message: email.message.Message) -> list[email.message.Message]:
    """The message's parts that are not multipart containers, in order."""
    return [part for part in message.walk() if not part.is_multipart()]


def _is_attachment(part: email.message.Message) -> bool:
    disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
    if disposition == "attachment" or part.get_filename():
        return True
    return part.get_content_type() not in ("text/plain", "text/html")


def read_content(data: bytes) -> Content:
    """``data`` (a message, possibly led by ``X-Sender``/``X-Receiver`` lines) as read."""
    if not data.strip():
        return Content([], "", None, None, problem="the file is empty")
    if b"\x00" in data:
        return Content([], "", None, None, problem="the file holds NUL bytes: it is binary")
    try:
        split_header(data)
    except MessageParseError as exc:
        raw = data[:TEXT_LIMIT].decode("utf-8", "replace")
        return Content([], "", raw, None, problem=str(exc))
    message = _parse(data)
    headers = [
        (str(name), decoded_header(str(value), limit=4000))
        for name, value in list(message.items())[:HEADER_LIMIT]
    ]
    subject = decoded_header(message.get("Subject"))
    text = html = None
    attachments: list[Attachment] = []
    for index, part in enumerate(_leaves(message)):
        kind = part.get_content_type()
        if not _is_attachment(part):
            if kind == "text/plain" and text is None:
                text = _text_of(part)
                continue
            if kind == "text/html" and html is None:
                html = _text_of(part)
                continue
        name = part.get_filename()
        content_id = (part.get("Content-ID") or "").strip().strip("<>") or None
        attachments.append(
            Attachment(
                index=index,
                filename=decoded_header(name, limit=255) if name else None,
                content_type=kind,
                size=len(_payload(part)),
                content_id=content_id,
            )
        )
    return Content(headers, subject, text, html, attachments)


def attachment_bytes(data: bytes, index: int) -> bytes | None:
    """The decoded bytes of the part ``index`` (``Attachment.index``) of ``data``; None when
    it has no such part."""
    leaves = _leaves(_parse(data))
    if not 0 <= index < len(leaves):
        return None
    return _payload(leaves[index])


#: The most bytes of inline images put into one HTML part as ``data:`` URLs.
INLINE_LIMIT = 8 * 1024 * 1024
_CID = re.compile(r"cid:([^\s\"'()<>]+)", re.IGNORECASE)


def inline_images(html: str, data: bytes, content: Content) -> str:
    """``html`` with each ``cid:`` reference to one of the message's images replaced by a
    ``data:`` URL of that image (up to ``INLINE_LIMIT`` bytes in all), so that it shows without
    anything being fetched; other references stay as they are (and load nothing)."""
    images = {
        a.content_id: a
        for a in content.attachments
        if a.content_id and a.content_type.startswith("image/")
    }
    if not images or "cid:" not in html.lower():
        return html
    leaves = _leaves(_parse(data))
    budget = [INLINE_LIMIT]
    urls: dict[str, str] = {}

    def url(found: re.Match[str]) -> str:
        key = urllib.parse.unquote(found.group(1))
        if key in urls:
            return urls[key]
        image = images.get(key)
        if image is None or image.size > budget[0]:
            return found.group(0)
        budget[0] -= image.size
        payload = base64.b64encode(_payload(leaves[image.index])).decode("ascii")
        urls[key] = f"data:{image.content_type};base64,{payload}"
        return urls[key]

    return _CID.sub(url, html)
