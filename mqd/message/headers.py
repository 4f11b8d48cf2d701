"""Reading a message's header block and its addresses, without dataclasses or the email package.

``mqd.message.envelope`` builds its ``ParsedMessage`` on ``read_envelope``; ``mqd sendmail`` uses
this module directly, because it runs once per message and importing ``dataclasses`` (and the
``email`` package) would cost it more than a bare interpreter's start.

Address headers in the plain forms nearly all mail uses (``a@b.c``, ``Name <a@b.c>``,
``"Doe, Jane" <a@b.c>``, comma-separated) are read by a small scanner (no ``re``: importing it
costs ``mqd sendmail`` more than half a bare interpreter's start); anything else
(comments, groups, quoted local parts, non-ASCII, ...) goes to the standard library's RFC 5322
parser, loaded only then: it costs tens of milliseconds to import and a hundred microseconds or
so per header to run.
"""

from mqd.errors import MessageParseError

__all__ = [
    "ENVELOPE_FIELDS",
    "address_problem",
    "envelope_address",
    "envelope_field",
    "header_addresses",
    "read_envelope",
    "split_header",
    "unfold",
]

ENVELOPE_FIELDS = frozenset({b"x-sender", b"x-receiver"})
#: The headers ``read_envelope`` gives; ``traceparent``: the application's trace (docs/tracing.md).
_LOOKED_AT = (
    "from", "sender", "to", "cc", "bcc", "message-id", "content-type", "x-mqd-send-at",
    "traceparent", "subject",
)  # fmt: skip
_MAX_ADDRESS = 254
#: The bytes of a header field name (RFC 5322: printable ASCII except the colon).
_NAME_BYTES = bytes(b for b in range(33, 127) if b != 58)
#: RFC 5322 atext: what a dot-atom (and an unquoted display-name word) is made of.
_ATEXT = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~"
)


def read_envelope(
    data: bytes, *, require_sender: bool = True, require_recipients: bool = True
) -> tuple[str, tuple[str, ...], tuple[tuple[str, str], ...], dict[str, str]]:
    """The envelope of the message in ``data``: sender, recipients, invalid recipients with
    their reasons, and the headers mqd looks at (``mqd.message.envelope.parse_message`` wraps it).

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
    for _name, raw in fields:
        kind = envelope_field(raw)
        if kind is None:
            break  # only leading X-Sender / X-Receiver lines are the envelope
        value = envelope_address(unfold(raw))
        if kind == b"x-sender":
            if envelope_sender is not None:
                raise MessageParseError("more than one leading X-Sender line")
            envelope_sender = value
        else:
            envelope_rcpts.append(value)
    headers = _selected_headers(fields, _LOOKED_AT)

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
                candidates.extend(header_addresses(unfold(raw).strip(), header))
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


def envelope_field(line: bytes) -> bytes | None:
    """``b"x-sender"`` or ``b"x-receiver"`` when ``line`` is an envelope line, else None.

    An envelope line is the field name followed directly by its colon (``X-Sender:``, any
    case), as RFC 5322 writes a field. ``X-Sender : x`` (a blank before the colon, obsolete
    syntax) is not one: ``split_header`` still reads it as an ordinary header field, so it ends
    the envelope lines (those before it, if any, are the envelope; else the headers give it),
    and ``prepare_for_relay`` strips it before relaying like any X-Sender field. Every reader
    of envelope lines (``read_envelope``, the failed folder's retry) decides by this function.
    """
    colon = line.find(b":")
    if colon <= 0:
        return None
    name = line[:colon].lower()
    return name if name in ENVELOPE_FIELDS else None


def address_problem(address: str) -> str | None:
    """Why ``address`` cannot be used in an SMTP envelope, or None when it can."""
    if not address:
        return "it is empty"
    if any(c in address for c in "\r\n\x00"):
        return "it contains CR, LF or NUL"
    if not address.isascii() and any("\udc80" <= c <= "\udcff" for c in address):
        return "it is not valid UTF-8"
    # Not printable: C0 and C1 controls, DEL, spaces other than " ", and invisible format
    # characters (bidi overrides, zero widths) that make an address look like another.
    if "<" in address or ">" in address or " " in address or not address.isprintable():
        return "it contains spaces, control characters or angle brackets"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "it is not of the form local-part@domain"
    if "@" in local and not (len(local) > 1 and local[0] == local[-1] == '"'):
        return "it holds an @ outside a quoted local part"  # a@evil@example.com: whose?
    if len(address) > _MAX_ADDRESS:
        return f"it is longer than {_MAX_ADDRESS} characters"
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
            field = _field_name(line)
            if field is None:
                if not fields:
                    raise MessageParseError(
                        "the first line is not a header field: this is not an RFC 5322 message"
                    )
                raise MessageParseError(
                    f"header line {len(fields) + 1} is not a header field: "
                    f"{line[:60].decode('utf-8', 'replace').rstrip()!r}"
                )
            fields.append((field, line))
        pos = end
    return fields, b""


def _field_name(line: bytes) -> bytes | None:
    """The name of the field ``line`` starts (``Name:`` or ``Name :``), or None."""
    colon = line.find(b":")
    name = line[:colon].rstrip(b" \t")
    if colon <= 0 or not name or name.translate(None, _NAME_BYTES):
        return None
    return name


def unfold(raw: bytes) -> str:
    """The field's value with its folds (a line break before a space or tab) removed and its
    final line break dropped. Any other CR or LF stays, so that an address holding one is
    refused rather than read as something else (``<a@x>\\rRCPT TO:<b@y>`` is not ``b@y``)."""
    value = raw.split(b":", 1)[1]
    text = value.decode("utf-8", "surrogateescape")
    if "\n" in text:  # a fold is a line break (LF or CRLF) before a space or tab
        pieces = text.split("\n")
        text = pieces[0]
        for piece in pieces[1:]:
            if piece[:1] in (" ", "\t"):
                text = (text[:-1] if text.endswith("\r") else text) + piece
            else:
                text += "\n" + piece
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def _selected_headers(fields: list[tuple[bytes, bytes]], wanted: tuple[str, ...]) -> dict[str, str]:
    """The first occurrence of each wanted header (lower-case name -> unfolded value), except
    From and Sender: repeated fields are joined (", "), so that every address a reader may be
    shown is checked (a message has one of each; a second must not slip past the checks)."""
    found: dict[str, str] = {}
    for name, raw in fields:
        key = name.decode("ascii").lower()
        if key not in wanted:
            continue
        if key not in found:
            found[key] = unfold(raw).strip()
        elif key in ("from", "sender"):
            found[key] += ", " + unfold(raw).strip()
    return found


def _plain_addresses(value: str) -> list[str] | None:
    """The addresses of a plain mailbox list (see the module docstring), or None when the value
    is anything else and needs the full parser. Both give the same addresses for a plain list
    (tests/test_perf_addresses.py checks it against the full parser and a regular expression)."""
    if not value.isascii():
        return None
    found: list[str] = []
    pos, end = 0, len(value)
    while True:
        mailbox = _plain_mailbox(value, pos)
        if mailbox is None:
            return None
        address, pos = mailbox
        found.append(address)
        if pos == end:
            return found
        if value[pos] != ",":
            return None
        pos += 1


def _plain_mailbox(value: str, pos: int) -> tuple[str, int] | None:
    """One mailbox at ``pos``, with the blanks around it: ``addr-spec``, or an optional display
    name (words of atext, or one quoted string without escapes) and ``<addr-spec>``. Returns
    the address and where the scan stopped."""
    pos = _skip_blanks(value, pos)
    end = _addr_spec_end(value, pos)
    if end >= 0:
        return value[pos:end], _skip_blanks(value, end)
    if pos < len(value) and value[pos] == '"':
        close = pos + 1
        while close < len(value) and value[close] not in '"\\\r\n':
            close += 1
        if close >= len(value) or value[close] != '"':
            return None
        pos = _skip_blanks(value, close + 1)
    else:
        word_end = _atext_end(value, pos)
        while word_end > pos:  # words of atext separated by blanks
            after = _skip_blanks(value, word_end)
            pos = after
            if after == word_end:
                break
            word_end = _atext_end(value, after)
    if pos >= len(value) or value[pos] != "<":
        return None
    end = _addr_spec_end(value, pos + 1)
    if end < 0 or end >= len(value) or value[end] != ">":
        return None
    return value[pos + 1 : end], _skip_blanks(value, end + 1)


def _skip_blanks(value: str, pos: int) -> int:
    while pos < len(value) and value[pos] in " \t":
        pos += 1
    return pos


def _atext_end(value: str, pos: int) -> int:
    while pos < len(value) and value[pos] in _ATEXT:
        pos += 1
    return pos


def _dot_atom_end(value: str, pos: int) -> int:
    """The end of the longest dot-atom at ``pos`` (atext runs joined by single dots), or -1."""
    end = _atext_end(value, pos)
    if end == pos:
        return -1
    while end + 1 < len(value) and value[end] == "." and value[end + 1] in _ATEXT:
        end = _atext_end(value, end + 1)
    return end


def _addr_spec_end(value: str, pos: int) -> int:
    """The end of ``dot-atom@dot-atom`` at ``pos``, or -1."""
    local_end = _dot_atom_end(value, pos)
    if local_end < 0 or local_end >= len(value) or value[local_end] != "@":
        return -1
    return _dot_atom_end(value, local_end + 1)


def header_addresses(value: str, name: str, *, strict: bool = False) -> list[str]:
    """The addresses in the value of an address header (``name``: "from", "to", ...), in order
    ([] for an empty value or empty groups). Raises MessageParseError when the value cannot be
    parsed; with ``strict``, also when a part is not a valid mailbox (``<a@x> <b@y>``, a stray
    quote), of which the lenient reading keeps what it can read (a mail program may differ).
    """
    plain = _plain_addresses(value)
    if plain is not None:
        return plain
    bare = value.strip()  # a root dot after a lone address: the same domain (_without_root_dot)
    if strict and bare.endswith(".") and _plain_addresses(bare[:-1]) == [bare[:-1]]:
        return [bare]
    return _parsed_addresses(value, name, strict=strict)


def _parsed_addresses(value: str, name: str, *, strict: bool = False) -> list[str]:
    """The addresses in ``value`` by the standard library's RFC 5322 header parser."""
    import email.errors
    import email.policy  # only for headers the plain reader refuses

    try:
        header = email.policy.default.header_factory(name, value)
    except Exception as exc:  # the parser raises assorted errors on hostile input
        raise MessageParseError(f"the {name.title()} header cannot be parsed: {exc}") from None
    if strict:
        invalid = [d for d in header.defects if isinstance(d, email.errors.InvalidHeaderDefect)]
        if invalid:
            raise MessageParseError(
                f"the {name.title()} header cannot be parsed: {value!r} ({invalid[0]})"
            )
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
        senders = header_addresses(headers["sender"], "sender")
        if senders:
            return senders[0]
    if "from" not in headers:
        raise MessageParseError("no sender: the message has no From header and no X-Sender line")
    senders = header_addresses(headers["from"], "from")
    if not senders:
        raise MessageParseError("no sender: the From header holds no address")
    if len(senders) > 1:
        raise MessageParseError(
            "From holds several addresses (in one From header or more) and there is no Sender "
            "header"
        )
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
