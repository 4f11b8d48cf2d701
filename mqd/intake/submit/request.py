"""What ``POST /api/v1/messages`` takes: a raw RFC 5322 message with its envelope given apart
(or read from its headers, as a spool's), or a JSON object the message is composed from with
the standard library's email package (as ``mqd.message.compose`` does for ``mqd send``).

``JsonMessage`` and ``JsonAttachment`` are the JSON's shape: the OpenAPI document's request
schema is generated from them (``mqd.http.schema``; ``from_`` is the property ``from``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import mimetypes
import types
import typing
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from mqd.errors import MessageParseError
from mqd.intake.submit.plain import plain_headers, plain_message
from mqd.message.envelope import date_now, parse_message
from mqd.message.headers import address_problem, header_addresses, split_header
from mqd.message.mimepolicy import COMPOSING, SENDING

__all__ = [
    "JsonAttachment",
    "JsonMessage",
    "Refusal",
    "bad_request",
    "compose_json",
    "message_id_of",
    "raw_envelope",
    "read_json",
    "with_message_id",
]

#: Headers the JSON's ``headers`` may not set: the fields say them, the composer writes them,
#: or they are the envelope.
_RESERVED = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "x-sender",
        "x-receiver",
    }
)
_NAME_CHARS = frozenset(chr(c) for c in range(33, 127) if c != 58)


class Refusal(Exception):
    """A request that is not queued: its HTTP status, a problem type (``urn:mqd:problem:<slug>``),
    a title and what is wrong; ``retry_after`` seconds for one worth trying again."""

    def __init__(
        self, status: int, slug: str, title: str, detail: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.retry_after = retry_after


def bad_request(detail: str) -> Refusal:
    return Refusal(400, "malformed-request", "The request is malformed", detail)


def unusable(detail: str) -> Refusal:
    return Refusal(422, "unusable-message", "The message cannot be sent", detail)


@dataclass(frozen=True)
class JsonAttachment:
    """A file attached to the message."""

    #: The file's name as recipients see it.
    filename: str
    #: The file's bytes, base64 (RFC 4648, standard alphabet).
    content: str
    #: Its media type (``application/pdf``); guessed from the filename when not given.
    content_type: str | None = None


@dataclass(frozen=True)
class JsonMessage:
    """A message to compose: ``from``, at least one recipient, and ``text`` or ``html`` (both:
    ``multipart/alternative``). ``bcc`` recipients get the message without a header naming
    them."""

    #: The sender: ``app@example.com`` or ``App <app@example.com>``; the envelope sender too.
    from_: str
    to: str | list[str] = field(default_factory=list)
    cc: str | list[str] = field(default_factory=list)
    bcc: str | list[str] = field(default_factory=list)
    subject: str = ""
    #: The plain-text body.
    text: str | None = None
    #: The HTML body.
    html: str | None = None
    attachments: list[JsonAttachment] = field(default_factory=list)
    #: Extra header fields (``Reply-To``, ``List-Unsubscribe``, ``Message-ID`` ...); not the
    #: ones the other fields give, nor ``Content-*``.
    headers: dict[str, str] = field(default_factory=dict)
    #: Send later: ISO 8601 with an offset (``2026-12-08T09:00:00+01:00``); written as the
    #: message's ``X-Mqd-Send-At`` header.
    send_at: str | None = None


def _json_name(name: str) -> str:
    return name.rstrip("_")


def _check(value: Any, annotation: Any, where: str) -> Any:
    """``value`` when it is of ``annotation`` (the few the JSON types use), else a 400."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if not _may_be(value, arg):
                continue  # (as _check would say: a refusal made and dropped costs more)
            try:
                return _check(value, arg, where)
            except Refusal:
                continue
        wanted = " or ".join(_describe(arg) for arg in args)
        raise bad_request(f"{where} must be {wanted}, not {json.dumps(value)[:80]}")
    if annotation is type(None):
        if value is None:
            return None
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, list):
            return [_check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return {k: _check(v, args[1], f"{where}.{k}") for k, v in value.items()}
    elif dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return _object(annotation, value, where)
    raise bad_request(f"{where} must be {_describe(annotation)}, not {json.dumps(value)[:80]}")


def _may_be(value: Any, annotation: Any) -> bool:
    """False when ``value`` is not of ``annotation``'s outer type (what ``_check`` looks at)."""
    outer = typing.get_origin(annotation) or annotation
    outer = dict if dataclasses.is_dataclass(outer) else outer
    return outer not in (type(None), str, list, dict) or isinstance(value, outer)


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is type(None):
        return "null"
    if annotation is str:
        return "a string"
    if origin is list:
        item = _describe(typing.get_args(annotation)[0])
        return f"a list of {item.removeprefix('a ').removeprefix('an ')}s"
    return "an object"


#: Each JSON type's fields by their JSON name, and their types: read once (resolving the
#: annotations costs more than checking a request against them).
_SHAPES: dict[Any, tuple[dict[str, dataclasses.Field[Any]], dict[str, Any]]] = {}


def _shape(cls: Any) -> tuple[dict[str, dataclasses.Field[Any]], dict[str, Any]]:
    shape = _SHAPES.get(cls)
    if shape is None:
        fields = {_json_name(f.name): f for f in dataclasses.fields(cls)}
        shape = _SHAPES[cls] = (fields, typing.get_type_hints(cls))
    return shape


def _object(cls: Any, data: dict[str, Any], where: str) -> Any:
    fields, hints = _shape(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise bad_request(
            f"{where} has unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}"
        )
    given: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            given[f.name] = _check(data[name], hints[f.name], f"{where}.{name}".lstrip("."))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise bad_request(f"{where}.{name}".lstrip(".") + " is required")
    return cls(**given)


def read_json(body: bytes) -> JsonMessage:
    """The request's JSON as a ``JsonMessage``; a 400 saying what is wrong otherwise."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object with from, to, subject, text ...")
    message: JsonMessage = _object(JsonMessage, data, "")
    return message


def _addresses(value: str | list[str], name: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    found: list[str] = []
    for item in items:
        try:
            found += header_addresses(item, name, strict=True)
        except MessageParseError as exc:
            raise unusable(f"{name}: {exc}") from None
    for address in found:
        problem = address_problem(address)
        if problem:
            raise unusable(f"{name}: {address!r} is not usable: {problem}")
    return found


#: What ends a line for ``str.splitlines`` (and so for the email package): CR and LF, and
#: VT, FF, FS, GS, RS, NEL, LS and PS.
_LINE_BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _no_newline(value: str, where: str) -> str:
    if "\x00" in value or any(c in value for c in _LINE_BREAKS):
        raise unusable(
            f"{where} must not hold CR, LF, another line break (VT, FF, NEL, U+2028 ...) or "
            "NUL (no header injection)"
        )
    return value


def compose_json(
    message: JsonMessage, hostname: str
) -> tuple[str, tuple[str, ...], bytes, str | None, dict[str, str] | None]:
    """The envelope (sender, recipients), the composed message (CRLF line endings), the
    Message-ID it was given (None when the JSON's ``headers`` gave one: ``with_message_id``
    reads it) and, for the everyday message written directly, the headers ``parse_message``
    reads of it (``Submission.headers``; else None)."""
    senders = _addresses(_no_newline(message.from_, "from"), "from")
    if len(senders) != 1:
        raise unusable(f"from must name one address, not {len(senders)}")
    to = [_no_newline(v, "to") for v in _listed(message.to)]
    cc = [_no_newline(v, "cc") for v in _listed(message.cc)]
    recipients = [*_addresses(to, "to"), *_addresses(cc, "cc"), *_addresses(message.bcc, "bcc")]
    if not recipients:
        raise unusable("give at least one recipient: to, cc or bcc")
    if message.text is None and message.html is None:
        raise unusable("give the body: text, html or both")
    subject = _no_newline(message.subject, "subject")
    date = date_now()
    domain = senders[0].rpartition("@")[2] or hostname
    headers = {k.lower(): (k, v) for k, v in message.headers.items()}
    message_id = None if "message-id" in headers else make_msgid(domain=domain)
    if message_id and message.text is not None and _text_only(message):
        plain = plain_message(message.from_, to, cc, subject, message.text, date, message_id)
        if plain is not None:  # the everyday message: as the email package writes it
            headers_read = plain_headers(message.from_, to, cc, subject, message_id)
            return senders[0], tuple(recipients), plain, message_id, headers_read
    msg = EmailMessage(policy=COMPOSING)
    msg["From"] = message.from_
    if to:
        msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = date
    if message_id:
        msg["Message-ID"] = message_id
    for name, value in headers.values():
        if not name or not set(name) <= _NAME_CHARS:
            raise unusable(f"headers: {name!r} is not a header field name")
        if name.lower() in _RESERVED:
            raise unusable(f"headers: {name} is not set through headers: use the JSON's fields")
        msg[name] = _no_newline(value, f"headers.{name}")
    if message.send_at is not None:
        if "x-mqd-send-at" in headers:
            raise unusable("give send_at or an X-Mqd-Send-At header, not both")
        msg["X-Mqd-Send-At"] = _no_newline(message.send_at, "send_at")
    _set_body(msg, message)
    for index, attachment in enumerate(message.attachments):
        _attach(msg, attachment, index)
    try:
        data = msg.as_bytes(policy=SENDING)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise unusable(f"the message cannot be composed: {exc}") from None
    return senders[0], tuple(recipients), data, message_id, None


def _text_only(message: JsonMessage) -> bool:
    """Text and the fields, nothing more (no HTML, attachments, headers or send_at)."""
    return (
        message.html is None
        and not message.attachments
        and not message.headers
        and message.send_at is None
    )


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _set_body(msg: EmailMessage, message: JsonMessage) -> None:
    text, html = message.text, message.html
    if text is not None:
        msg.set_content(text if text.endswith("\n") else text + "\n")
        if html is not None:
            msg.add_alternative(html, subtype="html")
    elif html is not None:
        msg.set_content(html, subtype="html")


def _attach(msg: EmailMessage, attachment: JsonAttachment, index: int) -> None:
    where = f"attachments[{index}]"
    name = _no_newline(attachment.filename, f"{where}.filename")
    try:
        content = base64.b64decode(attachment.content, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where}.content is not base64") from None
    ctype = attachment.content_type
    if ctype is None:
        guessed, encoding = mimetypes.guess_type(name)
        ctype = guessed if guessed is not None and encoding is None else None
    ctype = (ctype or "application/octet-stream").strip().lower()
    maintype, slash, subtype = _no_newline(ctype, f"{where}.content_type").partition("/")
    if not slash or not maintype or not subtype or ";" in ctype:
        raise unusable(f"{where}.content_type must be a media type such as application/pdf")
    msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=name)


# -- a raw message -------------------------------------------------------------------------------


def message_id_of(data: bytes) -> str | None:
    """The message's Message-ID, as written (None without one)."""
    try:
        fields, _ = split_header(data)
    except MessageParseError:
        return None
    for name, raw in fields:
        if name.lower() == b"message-id":
            value = raw.split(b":", 1)[1].decode("utf-8", "replace")
            return " ".join(value.split())
    return None


def with_message_id(data: bytes, domain: str) -> tuple[bytes, str]:
    """``data`` and its Message-ID, one added in front when it has none (an MSA's part: the
    answer names the id the message goes with)."""
    found = message_id_of(data)
    if found:
        return data, found
    newline = b"\r\n" if b"\r\n" in data[:4096] else b"\n"
    made = make_msgid(domain=domain or None)
    return b"Message-ID: " + made.encode("ascii") + newline + data, made


def raw_envelope(
    data: bytes, sender: str | None, recipients: tuple[str, ...]
) -> tuple[str, tuple[str, ...]]:
    """The envelope of a raw message: what the request gave apart, else what its headers say,
    as a spool reads them (leading X-Sender / X-Receiver lines, else From / Sender and To, Cc,
    Bcc). A 422 when there is no sender or no recipient."""
    for address in (*([sender] if sender is not None else []), *recipients):
        problem = address_problem(address)
        if problem:
            raise unusable(f"the envelope address {address!r} is not usable: {problem}")
    if sender is not None and recipients:
        return sender, recipients
    try:
        parsed = parse_message(data, require_sender=False, require_recipients=False)
    except MessageParseError as exc:
        raise unusable(str(exc)) from None
    sender = sender if sender is not None else parsed.sender
    recipients = recipients or parsed.recipients
    if not sender:
        raise unusable(
            "no sender: give it as ?from=, an X-Mqd-From header, or a From header in the message"
        )
    if not recipients:
        raise unusable(
            "no recipient: give them as ?to= (repeated), X-Mqd-To headers, or To / Cc / Bcc "
            "headers in the message"
        )
    return sender, recipients
