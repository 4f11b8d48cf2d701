"""The MIME tree of a message -> SendGrid's ``content`` blocks and ``attachments``.

Part of the conversion (``convert.py``), kept apart because it is the one piece that walks the
structure: the first text/plain and text/html body parts become content (text/plain first),
other text alternatives follow them, every other part is an attachment, inline (with its
``content_id``) when it has a Content-ID in a multipart/related. Signed or encrypted structure
raises ``PermanentRelayError``: SendGrid would rebuild it and break it.
"""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Callable
from email.message import Message, MIMEPart
from typing import TypeVar

from mqd import PermanentRelayError, Reply

__all__ = ["BLANK", "Body", "clean", "header_text", "unfold"]

T = TypeVar("T")

#: Content types SendGrid cannot pass through intact: it rebuilds the MIME structure, which
#: breaks a signature and cannot re-create an encrypted body.
_SECURE_TYPES = frozenset(
    {
        "multipart/signed",
        "multipart/encrypted",
        "application/pkcs7-mime",
        "application/x-pkcs7-mime",
    }
)
#: Multipart nestings SendGrid builds itself (parent -> children it can have); anything else is
#: flattened into body parts and attachments.
_NESTING: dict[str | None, frozenset[str]] = {
    None: frozenset({"mixed", "alternative", "related"}),
    "mixed": frozenset({"alternative", "related"}),
    "related": frozenset({"alternative"}),
    "alternative": frozenset({"related"}),
}


#: SendGrid refuses an empty subject or content value; a single space is accepted and shows
#: as blank (sendgrid-java#85).
BLANK = " "
_FORBIDDEN_IN_NAMES = str.maketrans({";": "_", ",": "_", "\r": "_", "\n": "_"})


def header_text(message: Message, name: str) -> str:
    """The decoded value of the first ``name`` header ("" without one); as written when the
    stdlib's parser fails on it."""
    for key, raw in message.raw_items():
        if key.lower() == name:
            try:
                return str(message.policy.header_fetch_parse(key, raw))
            except Exception:  # the stdlib parser raises assorted errors on hostile input
                return unfold(raw)
    return ""


def unfold(raw: str) -> str:
    return raw.replace("\r\n", "").replace("\n", "").replace("\r", "")


class Body:
    """Walks the MIME tree once, collecting content blocks and attachments."""

    def __init__(self, lost: list[str]) -> None:
        self.lost = lost
        self.text: str | None = None
        self.html: str | None = None
        self.others: list[dict[str, str]] = []
        self.attachments: list[dict[str, str]] = []

    def walk(self, part: Message, parent: str | None) -> None:
        ctype = part.get_content_type()
        if ctype in _SECURE_TYPES:
            raise PermanentRelayError(
                f"the message is signed or encrypted ({ctype}, S/MIME or PGP); SendGrid's API "
                "rebuilds the MIME structure, which would break the signature or lose the "
                "encrypted content. Relay such messages through an SMTP relay instead "
                '(plugin = "smtp"), which sends them byte for byte',
                reply=Reply(554, f"{ctype} cannot be relayed through SendGrid's API", "5.6.3"),
            )
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            subtype = part.get_content_subtype()
            if subtype not in _NESTING[parent if parent in _NESTING else "mixed"]:
                where = f" inside multipart/{parent}" if parent else ""
                self.lost.append(
                    f"the multipart/{subtype} structure{where}: flattened into the body and "
                    "attachments SendGrid builds"
                )
            for child in part.iter_parts() if isinstance(part, MIMEPart) else ():
                self.walk(child, subtype)
            return
        self.leaf(part, parent)

    def leaf(self, part: Message, parent: str | None) -> None:
        ctype = part.get_content_type()
        disposition = _safely(part.get_content_disposition)
        named = disposition == "attachment" or _safely(lambda: part.get_filename()) is not None
        if part.get_content_maintype() == "text" and not named:
            text = _decoded_text(part, self.lost)
            if ctype == "text/plain" and self.text is None:
                self.text = text
                return
            if ctype == "text/html" and self.html is None:
                self.html = text
                return
            if parent == "alternative" and ctype not in ("text/plain", "text/html"):
                if text:
                    self.others.append({"type": ctype, "value": text})
                return
            if ctype in ("text/plain", "text/html"):
                self.lost.append(f"a second {ctype} body part: sent as an attachment")
        elif parent == "alternative":
            self.lost.append(f"a {ctype} alternative: sent as an attachment")
        self.attach(part, parent)

    def attach(self, part: Message, parent: str | None) -> None:
        ctype = part.get_content_type()
        index = len(self.attachments) + 1
        payload = part.get_payload() if part.is_multipart() else part.get_payload(decode=True)
        if isinstance(payload, list):  # message/rfc822, message/delivery-status: parsed blocks
            data = b"".join(block.as_bytes() for block in payload if isinstance(block, Message))
        else:
            data = payload if isinstance(payload, bytes) else b""
        given: str | None = _safely(lambda: part.get_filename())
        filename = clean(given or "") or _default_filename(ctype, index)
        if not data:
            self.lost.append(f"the empty attachment {filename!r}: SendGrid refuses empty ones")
            return
        safe = filename.translate(_FORBIDDEN_IN_NAMES)
        if safe != filename:
            self.lost.append(
                f"the attachment name {filename!r} holds characters SendGrid refuses "
                f"(; , CR LF): sent as {safe!r}"
            )
        params = [
            f"{key}={value}"
            for key, value in (_safely(part.get_params) or [])[1:]
            if key.lower() != "name"
            and not (key.lower() == "charset" and str(value).lower() in ("utf-8", "us-ascii"))
        ]
        if params:
            self.lost.append(
                f"the Content-Type parameters of attachment {safe!r} ({'; '.join(params)}): "
                "SendGrid's attachment type takes none"
            )
        attachment = {"content": base64.b64encode(data).decode("ascii"), "type": clean(ctype)}
        attachment["filename"] = safe
        content_id = clean(header_text(part, "content-id")).strip().strip("<>").strip()
        inline = parent == "related" or _safely(part.get_content_disposition) == "inline"
        if content_id and inline:
            attachment["disposition"] = "inline"
            attachment["content_id"] = content_id.translate(_FORBIDDEN_IN_NAMES)
        else:
            attachment["disposition"] = "attachment"
        self.attachments.append(attachment)

    def content(self) -> list[dict[str, str]]:
        """text/plain first, then text/html, then other types: the order SendGrid requires."""
        blocks = []
        if self.text:
            blocks.append({"type": "text/plain", "value": self.text})
        if self.html:
            blocks.append({"type": "text/html", "value": self.html})
        blocks += self.others
        if not blocks:
            # SendGrid refuses a message without content; a blank text shows as an empty body.
            blocks.append({"type": "text/plain", "value": BLANK})
        return blocks


def _safely(read: Callable[[], T]) -> T | None:
    """``read()``, or None when the stdlib's parser fails on a hostile header."""
    try:
        return read()
    except Exception:
        return None


def _decoded_text(part: Message, lost: list[str]) -> str:
    """The text of a body part; line ends as in a Python string (CRLF is the wire's form)."""
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    charset = part.get_content_charset() or "utf-8"
    if charset in ("us-ascii", "ascii"):
        charset = "utf-8"  # a superset, and what mislabelled 8-bit text usually is
    try:
        text = data.decode(charset, errors="replace")
    except LookupError:
        lost.append(f"the unknown charset {charset!r} of a text part: read as UTF-8")
        text = data.decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n")


def _default_filename(ctype: str, index: int) -> str:
    if ctype == "message/rfc822":
        extension: str | None = ".eml"
    elif ctype.startswith("text/"):
        extension = mimetypes.guess_extension(ctype) or ".txt"
    else:
        extension = mimetypes.guess_extension(ctype) or ".bin"
    return f"attachment-{index}{extension}"


def clean(value: str) -> str:
    """``value`` with undecodable bytes (kept as surrogates by the parser) as U+FFFD."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
