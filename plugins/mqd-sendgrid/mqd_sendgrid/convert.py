"""A MIME message and its envelope -> the JSON body of SendGrid's ``POST /v3/mail/send``.

Pure functions: no I/O, no logging. ``to_sendgrid`` returns the request body and the list of
what the message had that the request cannot carry (the relay logs it once per message), or
raises ``PermanentRelayError`` for a message that SendGrid would break (signed or encrypted).

What goes where:

- recipients come from the envelope: those in the To header go to ``to``, those in Cc to
  ``cc``, the rest to ``bcc``; display names come from the headers. SendGrid needs a ``to`` and
  refuses an address twice: see ``_personalizations``.
- From (with its display name), Reply-To (``reply_to``, or ``reply_to_list`` for several) and
  Subject become fields, decoded (RFC 2047) by ``email.policy.default``.
- the first text/plain and text/html body parts become ``content`` (text/plain first, as the
  API requires), other text alternatives follow them; every other part is an attachment, inline
  (``disposition: inline`` + ``content_id``) when it has a Content-ID in a multipart/related.
- other headers go to ``headers`` as written (encoded words kept), except those SendGrid
  reserves, those describing the MIME structure (SendGrid rebuilds it), and Sender/Return-Path.
"""

from __future__ import annotations

import email.policy
from collections import Counter
from dataclasses import dataclass
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import quote
from typing import Any

from mqd import Envelope, PermanentRelayError, Reply

from .mime import BLANK, Body, clean, header_text, unfold

__all__ = [
    "MAX_RECIPIENTS",
    "RESERVED_HEADERS",
    "Conversion",
    "to_sendgrid",
]

#: Headers SendGrid refuses in ``headers`` ("Header can not be one of the reserved keys",
#: SendGrid's v3 Mail Send error reference). The From/To/Cc/Subject/Reply-To ones are carried as
#: fields of the request instead; Content-Type and Content-Transfer-Encoding describe a MIME
#: structure that SendGrid rebuilds.
RESERVED_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)
#: Reserved headers whose content is lost (the others are carried as fields or rebuilt).
_RESERVED_LOST = frozenset({"x-sg-id", "x-sg-eid", "received", "dkim-signature"})
#: MIME headers of the top level: SendGrid writes its own for the structure it builds.
_STRUCTURAL = frozenset(
    {"mime-version", "content-disposition", "content-id", "content-description", "content-length"}
)
#: Headers mqd drops on purpose (not reserved by SendGrid), with the reason shown in the log.
_DROPPED = {
    "sender": "SendGrid sends as the From identity it verified; a Sender header would name "
    "a transmitter that neither SendGrid nor mqd checked",
    "return-path": "SendGrid uses its own return path (bounces go to SendGrid)",
}
#: SendGrid's limit on to + cc + bcc in one request (and on personalizations).
MAX_RECIPIENTS = 1000
_PARSER = BytesParser(policy=email.policy.default)


@dataclass(frozen=True)
class Conversion:
    """The request body, and what the message had that it does not carry (one line each)."""

    payload: dict[str, Any]
    lost: tuple[str, ...] = ()


def to_sendgrid(envelope: Envelope) -> Conversion:
    """The ``/v3/mail/send`` body for ``envelope``.

    Raises PermanentRelayError (554 5.6.3) for a signed or encrypted message, (552 5.5.3) for
    more recipients than one request takes, and (554 5.6.0) for a message with neither a From
    header nor an envelope sender.
    """
    message = _PARSER.parsebytes(envelope.message)
    assert isinstance(message, EmailMessage)  # the parser's policy makes EmailMessage objects
    lost: list[str] = []
    payload: dict[str, Any] = {
        "personalizations": _personalizations(envelope, message, lost),
        "from": _sender(envelope, message, lost),
    }
    reply_to = _addresses(message, "reply-to", lost)
    unique = list({a.addr_spec.lower(): a for a in reply_to}.values())
    if len(unique) == 1:
        payload["reply_to"] = _address(unique[0].addr_spec, unique[0].display_name)
    elif unique:
        payload["reply_to_list"] = [_address(a.addr_spec, a.display_name) for a in unique]
    subject = clean(header_text(message, "subject")).strip()
    if not subject:
        lost.append("the message has no subject: sent with a blank one, SendGrid requires one")
    payload["subject"] = subject or BLANK
    body = Body(lost)
    body.walk(message, None)
    payload["content"] = body.content()
    if body.attachments:
        payload["attachments"] = body.attachments
    headers = _headers(message, lost)
    if headers:
        payload["headers"] = headers
    if envelope.id:
        payload["custom_args"] = {"mqd_id": envelope.id}
    return Conversion(payload, tuple(lost))


# -- recipients and addresses ---------------------------------------------------------------------


def _personalizations(
    envelope: Envelope, message: EmailMessage, lost: list[str]
) -> list[dict[str, Any]]:
    """One personalization with to/cc/bcc, placed by the headers.

    SendGrid refuses the same address twice in a request (compared without regard to case):
    envelope addresses that differ only in case are sent to once. It also needs a ``to``: when
    no envelope recipient is in the To header, the Cc ones become ``to`` (they were visible to
    everyone anyway); when none is in To or Cc either, each recipient gets a personalization of
    its own with itself as ``to``, so that no one sees another's address.
    """
    named_to = {a.addr_spec.lower(): a.display_name for a in _addresses(message, "to", lost)}
    named_cc = {a.addr_spec.lower(): a.display_name for a in _addresses(message, "cc", lost)}
    seen: dict[str, str] = {}
    to: list[dict[str, str]] = []
    cc: list[dict[str, str]] = []
    bcc: list[dict[str, str]] = []
    for rcpt in envelope.recipients:
        key = rcpt.lower()
        if key in seen:
            lost.append(
                f"<{rcpt}> and <{seen[key]}> differ only in letter case and SendGrid refuses an "
                "address twice: sent once, to the first"
            )
            continue
        seen[key] = rcpt
        if key in named_to:
            to.append(_address(rcpt, named_to[key], personalization=True))
        elif key in named_cc:
            cc.append(_address(rcpt, named_cc[key], personalization=True))
        else:
            bcc.append({"email": rcpt})
    if len(seen) > MAX_RECIPIENTS:
        raise PermanentRelayError(
            f"the message has {len(seen)} recipients and SendGrid takes at most "
            f"{MAX_RECIPIENTS} in one request: split the message, or relay it over SMTP",
            reply=Reply(552, f"too many recipients (SendGrid takes {MAX_RECIPIENTS})", "5.5.3"),
        )
    if not to and cc:
        lost.append(
            "no envelope recipient is in the To header and SendGrid needs one: "
            "the Cc recipients are sent as To"
        )
        to, cc = cc, []
    if to:
        personalization: dict[str, Any] = {"to": to}
        if cc:
            personalization["cc"] = cc
        if bcc:
            personalization["bcc"] = bcc
        return [personalization]
    lost.append(
        "no envelope recipient is in the To or Cc header and SendGrid needs a To: each recipient "
        "gets a copy addressed To itself (the original To header is not shown)"
    )
    return [{"to": [r]} for r in bcc]


def _sender(envelope: Envelope, message: EmailMessage, lost: list[str]) -> dict[str, str]:
    senders = _addresses(message, "from", lost)
    if len(senders) > 1:
        lost.append(
            f"From holds {len(senders)} addresses and SendGrid takes one: "
            f"sent from the first, <{senders[0].addr_spec}>"
        )
    if senders:
        return _address(senders[0].addr_spec, senders[0].display_name)
    if envelope.sender:
        lost.append(f"the message has no From header: sent From <{envelope.sender}>")
        return {"email": envelope.sender}
    raise PermanentRelayError(
        "the message has no From header and the null sender: SendGrid needs a From address; "
        "add a From header at the producer",
        reply=Reply(554, "no From address for SendGrid", "5.6.0"),
    )


def _addresses(message: EmailMessage, name: str, lost: list[str]) -> list[Address]:
    """The addresses of every ``name`` header; an unreadable one is reported, not fatal."""
    found: list[Address] = []
    for key, raw in message.raw_items():
        if key.lower() != name:
            continue
        try:
            header = message.policy.header_fetch_parse(key, raw)
            addresses = list(getattr(header, "addresses", ()))
        except Exception:  # the stdlib parser raises assorted errors on hostile input
            addresses = []
        usable = [a for a in addresses if _plausible(a)]
        if len(usable) < len(addresses) or (not addresses and raw.strip(" \t\r\n;:")):
            text = clean(unfold(raw))[:80]
            lost.append(f"the {key} header holds what is not an address: {text!r}")
        found += usable
    return found


def _plausible(address: Address) -> bool:
    """An address SendGrid could take: local part and domain, printable, no undecodable bytes."""
    spec = address.addr_spec
    return bool(
        address.username
        and address.domain
        and spec.isprintable()
        and not any(c.isspace() for c in spec)
        and clean(spec) == spec
    )


def _address(addr: str, name: str | None, *, personalization: bool = False) -> dict[str, str]:
    result = {"email": addr}
    display = clean(name or "").strip()
    if display:
        # SendGrid does not quote a name holding a comma or semicolon in personalizations, which
        # splits it into two bogus addresses (sendgrid-python#291); quoting it ourselves works.
        if personalization and any(c in display for c in ",;"):
            display = f'"{quote(display)}"'
        result["name"] = display
    return result


# -- headers --------------------------------------------------------------------------------------


def _headers(message: EmailMessage, lost: list[str]) -> dict[str, str]:
    """The headers SendGrid lets a sender set, each once, values as written (unfolded)."""
    headers: dict[str, str] = {}
    taken: set[str] = set()
    reserved: Counter[str] = Counter()
    repeated: Counter[str] = Counter()
    for name, raw in message.raw_items():
        key = name.lower()
        if key in _RESERVED_LOST:
            reserved[name] += 1
        elif key in RESERVED_HEADERS or key in _STRUCTURAL:
            continue
        elif key in _DROPPED:
            lost.append(f"the {name} header: {_DROPPED[key]}")
        elif key in taken:
            repeated[name] += 1
        elif not name.isascii() or not name.isprintable() or " " in name:
            lost.append(f"the header {name!r}: SendGrid takes only ASCII header names")
        else:
            taken.add(key)
            headers[name] = _header_value(name, raw)
    if reserved:
        lost.append(f"headers SendGrid does not let a sender set: {_counted(reserved)}")
    if repeated:
        lost.append(
            f"repeated headers, SendGrid takes each once (the first kept): {_counted(repeated)}"
        )
    return headers


def _header_value(name: str, raw: str) -> str:
    """The value as written, unfolded; raw 8-bit text (RFC 6532) becomes RFC 2047 encoded words,
    as SendGrid asks for non-ASCII header values."""
    value = unfold(raw).strip()
    if value.isascii():
        return value
    encoded = Header(clean(value), "utf-8", header_name=name).encode(linesep="\n")
    return encoded.replace("\n", "")


def _counted(counts: Counter[str]) -> str:
    return ", ".join(f"{name} (x{n})" if n > 1 else name for name, n in counts.items())
