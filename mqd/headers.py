"""Reading a message's header block and its addresses, without dataclasses or the email package.

``mqd.envelope`` builds its ``ParsedMessage`` on ``read_envelope``; ``mqd sendmail`` uses this
module directly, because it runs once per message and importing ``dataclasses`` (and the
``email`` package) would cost it more than a bare interpreter's start.

Address headers in the plain forms nearly all mail uses (``a@b.c``, ``Name <a@b.c>``,
``"Doe, Jane" <a@b.c>``, comma-separated) are read by a regular expression; anything else
(comments, groups, quoted local parts, non-ASCII, ...) goes to the standard library's RFC 5322
parser, loaded only then: it costs tens of milliseconds to import and a hundred microseconds or
so per header to run.
"""

from __future__ import annotations

import re

from .errors import MessageParseError

__all__ = [
    "ENVELOPE_FIELDS",
    "address_problem",
    "envelope_address",
    "read_envelope",
    "split_header",
    "unfold",
]

_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
ENVELOPE_FIELDS = frozenset({b"x-sender", b"x-receiver"})
_MAX_ADDRESS = 254

# RFC 5322 dot-atoms, and the display names that cannot hide a comma or a bracket: atoms
# separated by blanks, or one quoted string without escapes.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_ADDR_SPEC = rf"{_DOT_ATOM}@{_DOT_ATOM}"
_PHRASE = rf'(?:{_ATEXT}+(?:[ \t]+{_ATEXT}+)*|"[^"\\\r\n]*")'
_PLAIN_MAILBOX = re.compile(rf"[ \t]*(?:({_ADDR_SPEC})|(?:{_PHRASE}[ \t]*)?<({_ADDR_SPEC})>)[ \t]*")


def read_envelope(
    data: bytes, *, require_sender: bool = True, require_recipients: bool = True
) -> tuple[str, tuple[str, ...], tuple[tuple[str, str], ...], dict[str, str]]:
    """The envelope of the message in ``data``: sender, recipients, invalid recipients with
    their reasons, and the headers mqd looks at (``mqd.envelope.parse_message`` wraps it).

    Raises MessageParseError (with a reason fit for the failed/ folder) when the data is
    empty, binary, has no valid header block, no sender, or no recipient at all (the last two
    checks can be turned off; the sender is then "" when none is found).
    """
    if not data.strip():
        raise MessageParseError("the file is empty")
    if b"\x00" in data:
        raise MessageParseError("the file contains NUL bytes: it is binary, not a message")
    fields, _ = split_header(data)
    envelope_sender: str | None = None
    envelope_rcpts: list[str] = []
    for name, raw in fields:
        if name.lower() not in ENVELOPE_FIELDS:
            break  # only leading X-Sender / X-Receiver lines are the envelope
        value = envelope_address(unfold(raw))
        if name.lower() == b"x-sender":
            if envelope_sender is not None:
                raise MessageParseError("more than one leading X-Sender line")
            envelope_sender = value
        else:
            envelope_rcpts.append(value)
    headers = _selected_headers(
        fields, ("from", "sender", "to", "cc", "bcc", "message-id", "content-type")
    )

    if envelope_sender is not None:
        sender = envelope_sender
    else:
        try:
            sender = _header_sender(headers)
        except MessageParseError:
            if require_sender:
                raise
            sender = ""
    sender = _without_root_dot(sender)
    problem = address_problem(sender)
    if problem and require_sender:
        raise MessageParseError(f"the sender {sender!r} is not usable: {problem}")

    if envelope_rcpts:
        candidates = envelope_rcpts
    else:
        candidates = []
        for name, raw in fields:  # every To, Cc and Bcc field, even repeated ones
            header = name.decode("ascii").lower()
            if header in ("to", "cc", "bcc"):
                candidates.extend(_addresses(unfold(raw).strip(), header))
    recipients: list[str] = []
    invalid: list[tuple[str, str]] = []
    seen: set[str] = set()
    for rcpt in map(_without_root_dot, candidates):
        key = _address_key(rcpt)
        if key in seen:
            continue
        seen.add(key)
        problem = address_problem(rcpt)
        if problem:
            invalid.append((rcpt, problem))
        else:
            recipients.append(rcpt)
    if not recipients and not invalid and require_recipients:
        where = "X-Receiver lines" if envelope_sender is not None else "To, Cc or Bcc headers"
        raise MessageParseError(f"no recipients: the message has no {where}")
    return sender, tuple(recipients), tuple(invalid), headers


def address_problem(address: str) -> str | None:
    """Why ``address`` cannot be used in an SMTP envelope, or None when it can."""
    if not address:
        return "it is empty"
    if any(c in address for c in "\r\n\x00"):
        return "it contains CR, LF or NUL"
    if any(c.isspace() or ord(c) < 32 or c in "<>" for c in address):
        return "it contains spaces, control characters or angle brackets"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "it is not of the form local-part@domain"
    if len(address) > _MAX_ADDRESS:
        return f"it is longer than {_MAX_ADDRESS} characters"
    if any("\udc80" <= c <= "\udcff" for c in address):
        return "it is not valid UTF-8"
    return None


def split_header(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The header fields as (name, raw lines incl. line endings) and the rest (blank line + body).

    Raises MessageParseError when the first line is not a header field, or a line inside the
    header block is neither a field nor a continuation line.
    """
    fields: list[tuple[bytes, bytes]] = []
    pos = 0
    size = len(data)
    while pos < size:
        end = data.find(b"\n", pos)
        end = size if end < 0 else end + 1
        line = data[pos:end]
        if line in (b"\r\n", b"\n"):
            return fields, data[pos:]
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise MessageParseError("the message starts with a continuation line")
            name, raw = fields[-1]
            fields[-1] = (name, raw + line)
        else:
            match = _FIELD_NAME.match(line)
            if not match:
                if not fields:
                    raise MessageParseError(
                        "the first line is not a header field: this is not an RFC 5322 message"
                    )
                raise MessageParseError(
                    f"header line {len(fields) + 1} is not a header field: "
                    f"{line[:60].decode('utf-8', 'replace').rstrip()!r}"
                )
            fields.append((match.group(1), line))
        pos = end
    return fields, b""


_FOLD = re.compile(r"\r?\n(?=[ \t])")


def unfold(raw: bytes) -> str:
    """The field's value with its folds (a line break before a space or tab) removed and its
    final line break dropped. Any other CR or LF stays, so that an address holding one is
    refused rather than read as something else (``<a@x>\\rRCPT TO:<b@y>`` is not ``b@y``)."""
    value = raw.split(b":", 1)[1]
    text = value.decode("utf-8", "surrogateescape")
    text = _FOLD.sub("", text)
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def _selected_headers(fields: list[tuple[bytes, bytes]], wanted: tuple[str, ...]) -> dict[str, str]:
    """The first occurrence of each wanted header (lower-case name -> unfolded value)."""
    found: dict[str, str] = {}
    for name, raw in fields:
        key = name.decode("ascii").lower()
        if key in wanted and key not in found:
            found[key] = unfold(raw).strip()
    return found


def _plain_addresses(value: str) -> list[str] | None:
    """The addresses of a plain mailbox list (see the module docstring), or None when the value
    is anything else and needs the full parser. Both give the same addresses for a plain list
    (tests/test_perf_addresses.py checks it against the full parser)."""
    if not value.isascii():
        return None
    found: list[str] = []
    pos, end = 0, len(value)
    while True:
        match = _PLAIN_MAILBOX.match(value, pos)
        if match is None:
            return None
        found.append(match.group(1) or match.group(2))
        pos = match.end()
        if pos == end:
            return found
        if value[pos] != ",":
            return None
        pos += 1


def _addresses(value: str, name: str) -> list[str]:
    plain = _plain_addresses(value)
    if plain is not None:
        return plain
    return _parsed_addresses(value, name)


def _parsed_addresses(value: str, name: str) -> list[str]:
    """The addresses in ``value`` by the standard library's RFC 5322 header parser."""
    import email.policy  # only for headers the plain reader refuses

    try:
        header = email.policy.default.header_factory(name, value)
    except Exception as exc:  # the parser raises assorted errors on hostile input
        raise MessageParseError(f"the {name.title()} header cannot be parsed: {exc}") from None
    addresses = list(getattr(header, "addresses", ()))
    # The parser empties an address it cannot read; report what was written instead (from the
    # parse tree, a private attribute: without it the reason is still right, the text less so).
    tree = getattr(header, "_parse_tree", None)
    written = [str(m).strip() for m in getattr(tree, "all_mailboxes", ())]
    if len(written) != len(addresses):
        written = [""] * len(addresses)
    return [
        addr.addr_spec if addr.username or addr.domain else (text or addr.addr_spec)
        for addr, text in zip(addresses, written, strict=True)
    ]


def envelope_address(value: str) -> str:
    """The address of an X-Sender / X-Receiver value: ``a@b``, ``<a@b>`` or ``"Name" <a@b>``."""
    value = value.strip()
    if any(c in value for c in "\r\n\x00"):
        return value  # never reinterpret an injection attempt; address_problem refuses it
    if value.endswith(">") and "<" in value:
        start = value.rindex("<")
        if "<" in value[:start] or ">" in value[:start]:
            return value  # two bracketed parts: ambiguous, so address_problem refuses it
        return value[start + 1 : -1].strip()
    return value


def _header_sender(headers: dict[str, str]) -> str:
    if "sender" in headers:
        senders = _addresses(headers["sender"], "sender")
        if senders:
            return senders[0]
    if "from" not in headers:
        raise MessageParseError("no sender: the message has no From header and no X-Sender line")
    senders = _addresses(headers["from"], "from")
    if not senders:
        raise MessageParseError("no sender: the From header holds no address")
    if len(senders) > 1:
        raise MessageParseError("From holds several addresses and there is no Sender header")
    return senders[0]


def _without_root_dot(address: str) -> str:
    """``a@example.com.`` -> ``a@example.com``: the same fully qualified domain, in the form
    servers accept (many refuse the trailing dot in MAIL FROM / RCPT TO)."""
    local, at, domain = address.rpartition("@")
    if at and local and domain.endswith(".") and domain.strip("."):
        return f"{local}@{domain.rstrip('.')}"
    return address


def _address_key(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if local else address
