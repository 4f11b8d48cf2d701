"""Unit tests for mqd.message.envelope: reading the envelope of a spool file, header hygiene."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from dataclasses import dataclass

import pytest

from mqd.errors import MessageParseError, SpoolError
from mqd.message.envelope import (
    Envelope,
    address_problem,
    is_delivery_report,
    parse_message,
    prepare_for_relay,
)
from mqd.message.headers import header_addresses


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    sender: str
    recipients: tuple[str, ...]
    invalid: tuple[str, ...] = ()  # invalid recipient addresses (reasons checked separately)


def lf(*lines: str) -> bytes:
    return "\n".join(lines).encode("utf-8")


def crlf(*lines: str) -> bytes:
    return "\r\n".join(lines).encode("utf-8")


CASES = [
    Case(
        "headers-lf",
        lf("From: app@example.com", "To: alice@example.net", "Subject: hi", "", "Hello.", ""),
        "app@example.com",
        ("alice@example.net",),
    ),
    Case(
        "headers-crlf",
        crlf("From: app@example.com", "To: alice@example.net", "Subject: hi", "", "Hello.", ""),
        "app@example.com",
        ("alice@example.net",),
    ),
    Case(
        "display-names-and-quoted-comma",
        crlf(
            'From: "App Team" <app@example.com>',
            'To: Alice <alice@example.net>, "Bob, Jr." <bob@example.net>',
            "",
            "",
        ),
        "app@example.com",
        ("alice@example.net", "bob@example.net"),
    ),
    Case(
        "encoded-display-name",
        lf("From: =?utf-8?q?J=C3=B6rg?= <joerg@example.com>", "To: b@example.net", "", ""),
        "joerg@example.com",
        ("b@example.net",),
    ),
    Case(
        "to-cc-bcc-in-order",
        lf(
            "From: app@example.com",
            "To: to@example.net",
            "Cc: cc1@example.net, cc2@example.net",
            "Bcc: bcc@example.net",
            "",
            "",
        ),
        "app@example.com",
        ("to@example.net", "cc1@example.net", "cc2@example.net", "bcc@example.net"),
    ),
    Case(
        "lower-case-field-names-and-space-before-colon",
        lf("from: app@example.com", "to : to@example.net", "cc:cc@example.net", "", ""),
        "app@example.com",
        ("to@example.net", "cc@example.net"),
    ),
    Case(
        "folded-to-header",
        crlf(
            "From: app@example.com", "To: a@example.net,", "\tb@example.net,", "  c@example.net", ""
        ),
        "app@example.com",
        ("a@example.net", "b@example.net", "c@example.net"),
    ),
    Case(
        "dedup-domain-case-insensitive-local-part-not",
        lf(
            "From: app@example.com",
            "To: alice@example.net, alice@EXAMPLE.NET",
            "Cc: Alice@example.net, alice@Example.Net",
            "Bcc: alice@example.net",
            "",
            "",
        ),
        "app@example.com",
        ("alice@example.net", "Alice@example.net"),
    ),
    Case(
        "undisclosed-recipients-group",
        lf(
            "From: app@example.com",
            "To: undisclosed-recipients:;",
            "Bcc: hidden@example.net",
            "",
            "",
        ),
        "app@example.com",
        ("hidden@example.net",),
    ),
    Case(
        "group-with-members",
        lf("From: app@example.com", "To: team: a@example.net, b@example.net;", "", ""),
        "app@example.com",
        ("a@example.net", "b@example.net"),
    ),
    Case(
        "x-sender-x-receiver-with-brackets-override-headers",
        crlf(
            "X-Sender: <env@example.com>",
            "X-Receiver: <r1@example.net>",
            "X-Receiver: <r2@example.net>",
            "From: header@example.com",
            "To: header@example.net",
            "Bcc: header-bcc@example.net",
            "",
            "body",
        ),
        "env@example.com",
        ("r1@example.net", "r2@example.net"),
    ),
    Case(
        "x-sender-x-receiver-without-brackets",
        crlf(
            "X-Sender: env@example.com",
            "X-Receiver: r1@example.net",
            "X-Receiver:r2@example.net",
            "From: header@example.com",
            "To: header@example.net",
            "",
            "",
        ),
        "env@example.com",
        ("r1@example.net", "r2@example.net"),
    ),
    Case(
        "x-receiver-before-x-sender",
        lf(
            "X-Receiver: <r1@example.net>",
            "X-Sender: <env@example.com>",
            "X-Receiver: <r2@example.net>",
            "From: header@example.com",
            "To: header@example.net",
            "",
            "",
        ),
        "env@example.com",
        ("r1@example.net", "r2@example.net"),
    ),
    Case(
        "x-receiver-deduplicated",
        lf(
            "X-Sender: env@example.com",
            "X-Receiver: r1@example.net",
            "X-Receiver: <r1@EXAMPLE.net>",
            "From: header@example.com",
            "",
            "",
        ),
        "env@example.com",
        ("r1@example.net",),
    ),
    Case(
        "only-leading-x-receiver-lines-sender-from-headers",
        lf("X-Receiver: r1@example.net", "From: header@example.com", "To: h@example.net", "", ""),
        "header@example.com",
        ("r1@example.net",),
    ),
    Case(
        "non-leading-x-sender-and-x-receiver-are-ignored",
        lf(
            "From: header@example.com",
            "X-Sender: evil@example.org",
            "To: header@example.net",
            "X-Receiver: evil@example.org",
            "",
            "",
        ),
        "header@example.com",
        ("header@example.net",),
    ),
    # A blank before the colon: not an envelope line (RFC 5322 puts the colon right after the
    # name), so it ends the envelope block and the envelope comes from the headers.
    Case(
        "x-sender-with-a-blank-before-the-colon-is-not-the-envelope",
        crlf(
            "X-Sender : evil@example.org",
            "X-Receiver: evil@example.org",
            "From: header@example.com",
            "To: header@example.net",
            "",
            "",
        ),
        "header@example.com",
        ("header@example.net",),
    ),
    Case(
        "x-receiver-with-a-tab-before-the-colon-ends-the-envelope",
        lf(
            "X-Sender: env@example.com",
            "X-Receiver\t: evil@example.org",
            "From: header@example.com",
            "To: header@example.net",
            "",
            "",
        ),
        "env@example.com",
        ("header@example.net",),
    ),
    Case(
        "x-receiver-after-a-header-is-ignored",
        lf(
            "X-Sender: env@example.com",
            "X-Receiver: r1@example.net",
            "Subject: hi",
            "X-Receiver: late@example.org",
            "From: header@example.com",
            "",
            "",
        ),
        "env@example.com",
        ("r1@example.net",),
    ),
    Case(
        "sender-beats-from",
        lf(
            "From: author@example.com",
            "Sender: sender@example.com",
            "To: b@example.net",
            "",
            "",
        ),
        "sender@example.com",
        ("b@example.net",),
    ),
    Case(
        "sender-with-from-holding-two-addresses",
        lf(
            "From: one@example.com, two@example.com",
            "Sender: Secretary <sec@example.com>",
            "To: b@example.net",
            "",
            "",
        ),
        "sec@example.com",
        ("b@example.net",),
    ),
    Case(
        "invalid-recipients-set-aside",
        lf(
            "From: app@example.com",
            "To: alice@example.net, not-an-address",
            'Cc: "two words"@example.net',
            "",
            "",
        ),
        "app@example.com",
        ("alice@example.net",),
        ("not-an-address", '"two words"@example.net'),
    ),
    Case(
        "invalid-x-receiver-set-aside",
        lf(
            "X-Sender: env@example.com",
            "X-Receiver: not an address",
            "X-Receiver: ok@example.net",
            "From: header@example.com",
            "",
            "",
        ),
        "env@example.com",
        ("ok@example.net",),
        ("not an address",),
    ),
    Case(
        "only-invalid-recipients-is-not-a-parse-error",
        lf("From: app@example.com", "To: nobody", "", ""),
        "app@example.com",
        (),
        ("nobody",),
    ),
    Case(
        "headers-only-no-body",
        lf("From: app@example.com", "To: alice@example.net", ""),
        "app@example.com",
        ("alice@example.net",),
    ),
    Case(
        "headers-only-no-final-newline",
        lf("From: app@example.com", "To: alice@example.net"),
        "app@example.com",
        ("alice@example.net",),
    ),
    Case(
        "non-ascii-addresses",
        lf("From: app@example.com", "To: jörg@exämple.com", "", "Grüße", ""),
        "app@example.com",
        ("jörg@exämple.com",),
    ),
    Case(
        "body-with-header-like-lines-is-not-read",
        lf(
            "From: app@example.com",
            "To: alice@example.net",
            "",
            "To: body@example.org",
            "Bcc: body@example.org",
            "",
        ),
        "app@example.com",
        ("alice@example.net",),
    ),
    Case(
        "binary-looking-body-without-nul",
        b"From: app@example.com\r\nTo: a@example.net\r\n\r\n\xff\xfe\x01\x02 8bit",
        "app@example.com",
        ("a@example.net",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_parse_message(case: Case):
    parsed = parse_message(case.data)
    assert parsed.sender == case.sender
    assert parsed.recipients == case.recipients
    assert tuple(addr for addr, _ in parsed.invalid_recipients) == case.invalid
    for _, reason in parsed.invalid_recipients:
        assert reason  # every set-aside recipient says why


def test_invalid_recipient_reasons():
    parsed = parse_message(lf("From: a@example.com", "To: nobody, ok@example.net", "", ""))
    assert parsed.recipients == ("ok@example.net",)
    [(address, reason)] = parsed.invalid_recipients
    assert address == "nobody"
    assert "local-part@domain" in reason


def test_malformed_recipients_are_reported_as_written():
    # The stdlib parser reads "bob@" as an empty address; the failed/ reason and the bounce must
    # still name the address the producer wrote (and two bad ones must not merge into one).
    parsed = parse_message(lf("From: a@example.com", "To: bob@, carol@, ok@example.net", "", ""))
    assert parsed.recipients == ("ok@example.net",)
    assert [address for address, _ in parsed.invalid_recipients] == ["bob@", "carol@"]
    for _, reason in parsed.invalid_recipients:
        assert "angle brackets" not in reason


def test_headers_are_recorded():
    parsed = parse_message(
        crlf(
            "From: app@example.com",
            "To: a@example.net",
            "Message-ID: <1@example.com>",
            "Content-Type: text/plain; charset=utf-8",
            "",
            "",
        )
    )
    assert parsed.headers["message-id"] == "<1@example.com>"
    assert parsed.headers["content-type"] == "text/plain; charset=utf-8"
    assert parsed.headers["from"] == "app@example.com"


ERRORS = [
    ("empty", b"", "empty"),
    ("whitespace-only", b"  \r\n\n\t \n", "empty"),
    ("nul-in-body", lf("From: a@example.com", "To: b@example.net", "", "x\x00y"), "NUL"),
    ("binary-png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    ("first-line-not-header", lf("Hello there", "From: a@example.com", ""), "first line"),
    ("mbox-from-line", lf("From a@example.com Mon Jan 1", "To: b@example.net", ""), "first line"),
    ("starts-with-continuation", lf(" folded", "From: a@example.com", ""), "continuation"),
    (
        "non-header-line-in-header-block",
        lf("From: a@example.com", "this is not a header", "To: b@example.net", "", ""),
        "header line 2",
    ),
    ("no-from-no-x-sender", lf("To: b@example.net", "Subject: x", "", ""), "no sender"),
    ("from-without-address", lf("From: ", "To: b@example.net", "", ""), "no address"),
    (
        "from-with-two-addresses-and-no-sender",
        lf("From: one@example.com, two@example.com", "To: b@example.net", "", ""),
        "Sender",
    ),
    ("no-recipients", lf("From: a@example.com", "Subject: x", "", "body"), "no recipients"),
    (
        "only-an-empty-group",
        lf("From: a@example.com", "To: undisclosed-recipients:;", "", ""),
        "no recipients",
    ),
    (
        "x-sender-without-recipients",
        lf("X-Sender: a@example.com", "From: a@example.com", "", ""),
        "no recipients",
    ),
    (
        "two-leading-x-senders",
        lf("X-Sender: a@example.com", "X-Sender: b@example.com", "X-Receiver: c@example.net", ""),
        "more than one",
    ),
    (
        "unusable-x-sender",
        lf("X-Sender: a b@example.com", "X-Receiver: c@example.net", "", ""),
        "not usable",
    ),
    ("unusable-from", lf("From: <>", "To: c@example.net", "", ""), "not usable"),
]


@pytest.mark.parametrize(("data", "reason"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_parse_message_errors(data: bytes, reason: str):
    with pytest.raises(MessageParseError) as info:
        parse_message(data)
    assert reason in str(info.value)
    assert isinstance(info.value, SpoolError)


def test_non_header_line_error_quotes_the_line():
    with pytest.raises(MessageParseError, match="this is not a header"):
        parse_message(lf("From: a@example.com", "this is not a header", "", ""))


def test_require_sender_false():
    parsed = parse_message(lf("To: b@example.net", "", ""), require_sender=False)
    assert parsed.sender == ""
    assert parsed.recipients == ("b@example.net",)
    two = lf("From: one@example.com, two@example.com", "To: b@example.net", "", "")
    assert parse_message(two, require_sender=False).sender == ""
    # an existing sender is still found
    found = parse_message(lf("From: a@example.com", "To: b@example.net", ""), require_sender=False)
    assert found.sender == "a@example.com"


def test_require_recipients_false():
    parsed = parse_message(lf("From: a@example.com", "", "body"), require_recipients=False)
    assert parsed.sender == "a@example.com"
    assert parsed.recipients == ()
    assert parsed.invalid_recipients == ()


def test_require_flags_do_not_hide_broken_files():
    for data in (b"", b"\x00", b"not a message\n"):
        with pytest.raises(MessageParseError):
            parse_message(data, require_sender=False, require_recipients=False)


# -- prepare_for_relay ---------------------------------------------------------------------------

DATE = "Date: Mon, 1 Jan 2024 00:00:00 +0000"
MID = "Message-ID: <orig@example.com>"


def test_prepare_strips_envelope_and_bcc_anywhere_keeps_the_rest_in_order():
    data = crlf(
        "X-Sender: <app@example.com>",
        "X-Receiver: <a@example.net>",
        "From: app@example.com",
        "Bcc: hidden1@example.net,",
        "  hidden2@example.net,",
        "\thidden3@example.net",
        "To: a@example.net",
        "X-Sender: late@example.com",
        "bcc: lower@example.net",
        "X-Receiver: late@example.net",
        "Subject: a subject",
        "  folded on",
        DATE,
        MID,
        "",
        "Body line.",
        "",
    )
    out = prepare_for_relay(data, message_id="<new@mqd>")
    assert out == crlf(
        "From: app@example.com",
        "To: a@example.net",
        "Subject: a subject",
        "  folded on",
        DATE,
        MID,
        "",
        "Body line.",
        "",
    )
    assert b"hidden" not in out
    assert b"lower@" not in out
    assert b"late@" not in out


def test_prepare_strips_an_x_sender_with_a_blank_before_the_colon():
    # Not the envelope (see envelope_field), but still an X-Sender field: not relayed.
    data = crlf("X-Sender : evil@example.org", "From: a@example.com", "To: b@example.net", "", "")
    assert parse_message(data).sender == "a@example.com"
    assert prepare_for_relay(data).startswith(b"From: a@example.com\r\nTo: b@example.net\r\n")


def test_prepare_keeps_body_byte_for_byte():
    body = (
        b"Bcc: body-bcc@example.org\r\n"
        b"X-Sender: body@example.org\r\n"
        b"X-Receiver: body@example.org\r\n"
        b"\r\n"
        b"trailing spaces   \r\n"
        b"lone LF\nlone CR\r8bit \xc3\xa9\xff\r\n"
        b".\r\n"
        b"no final newline"
    )
    head = crlf("From: a@example.com", "To: b@example.net", "Bcc: c@example.net", DATE, MID, "")
    out = prepare_for_relay(head + b"\r\n" + body, message_id="<new@mqd>")
    assert out.endswith(b"\r\n\r\n" + body)
    header_part = out[: -len(body)]
    assert b"Bcc" not in header_part
    assert out.count(b"Bcc: body-bcc@example.org") == 1


def test_prepare_adds_message_id_only_when_missing():
    without = crlf("From: a@example.com", "To: b@example.net", DATE, "", "body", "")
    out = prepare_for_relay(without, message_id="<q1@mqd.test>")
    assert out.count(b"Message-ID:") == 1
    assert b"Message-ID: <q1@mqd.test>\r\n" in out
    assert out.endswith(b"\r\n\r\nbody\r\n")
    message = email.message_from_bytes(out, policy=email.policy.default)
    assert message["Message-ID"] == "<q1@mqd.test>"
    assert message.get_content().strip() == "body"


@pytest.mark.parametrize("spelling", ["Message-ID", "Message-Id", "message-id", "MESSAGE-ID"])
def test_prepare_keeps_an_existing_message_id(spelling):
    data = crlf("From: a@example.com", f"{spelling}: <orig@example.com>", DATE, "", "body")
    out = prepare_for_relay(data, message_id="<q1@mqd.test>")
    assert b"q1@mqd.test" not in out
    assert out == data


def test_prepare_without_message_id_argument_adds_none():
    data = crlf("From: a@example.com", "To: b@example.net", DATE, "", "body")
    out = prepare_for_relay(data)
    assert b"message-id" not in out.lower()
    assert out == data


def test_prepare_adds_date_only_when_missing():
    data = crlf("From: a@example.com", "To: b@example.net", MID, "", "body")
    out = prepare_for_relay(data, message_id="<q1@mqd.test>")
    dates = [line for line in out.split(b"\r\n") if line.lower().startswith(b"date:")]
    assert len(dates) == 1
    parsed = email.utils.parsedate_to_datetime(dates[0].split(b":", 1)[1].decode().strip())
    assert parsed.tzinfo is not None
    assert out.endswith(b"\r\n\r\nbody")
    with_date = crlf("From: a@example.com", "date: Tue, 2 Jan 2024 00:00:00 +0000", MID, "", "b")
    assert prepare_for_relay(with_date, message_id="<q1@mqd.test>") == with_date


def test_prepare_keeps_lf_line_endings():
    data = lf(
        "X-Sender: a@example.com", "From: a@example.com", "Bcc: x@example.net", "", "body", ""
    )
    out = prepare_for_relay(data, message_id="<q1@mqd.test>")
    assert b"\r" not in out
    assert out.startswith(b"From: a@example.com\n")
    assert b"Message-ID: <q1@mqd.test>\n" in out
    assert re.search(rb"\nDate: [^\n]+\n\nbody\n$", out)


def test_prepare_keeps_crlf_line_endings():
    data = crlf("From: a@example.com", "Bcc: x@example.net", "", "body", "")
    out = prepare_for_relay(data, message_id="<q1@mqd.test>")
    assert re.search(rb"(?<!\r)\n", out) is None
    assert b"Message-ID: <q1@mqd.test>\r\n" in out


def test_prepare_headers_only_message():
    data = lf("From: a@example.com", "To: b@example.net", "")
    out = prepare_for_relay(data, message_id="<q1@mqd.test>")
    assert out.startswith(b"From: a@example.com\nTo: b@example.net\nMessage-ID: <q1@mqd.test>\n")
    assert parse_message(out).recipients == ("b@example.net",)


def test_prepare_headers_only_without_final_newline_stays_well_formed():
    # A producer may end the file right after the last header. The added Message-ID and Date
    # must start on lines of their own, not be glued onto that last header.
    data = b"From: a@example.com\r\nTo: b@example.net"
    out = prepare_for_relay(data, message_id="<q1@mqd.test>")
    message = email.message_from_bytes(out, policy=email.policy.default)
    assert message["To"] == "b@example.net"
    assert message["Message-ID"] == "<q1@mqd.test>"
    assert message["Date"] is not None
    assert parse_message(out).recipients == ("b@example.net",)


def test_prepare_is_idempotent():
    data = crlf("X-Sender: a@example.com", "From: a@example.com", "Bcc: x@example.net", "", "b")
    once = prepare_for_relay(data, message_id="<q1@mqd.test>")
    assert prepare_for_relay(once, message_id="<q2@mqd.test>") == once


def test_prepare_rejects_what_parse_rejects():
    with pytest.raises(MessageParseError):
        prepare_for_relay(b"not a header\n\nbody")


# -- address_problem ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("", "empty"),
        ("a@example.com\r\nRCPT TO:<x@evil>", "CR, LF or NUL"),
        ("a@example.com\r", "CR, LF or NUL"),
        ("a\n@example.com", "CR, LF or NUL"),
        ("a@example.com\x00", "CR, LF or NUL"),
        ("a b@example.com", "spaces"),
        (" a@example.com", "spaces"),
        ("a@example.com\t", "spaces"),
        ("a@exa\x01mple.com", "control"),
        ("a\x7f@example.com", "control"),  # DEL
        ("jürgen\x85@example.com", "control"),  # a C1 control (NEL)
        ("jürgen\x9b@example.com", "control"),  # a C1 control (CSI)
        ("\u202emoc.live@example.com", "control"),  # a bidi override: reads as another
        ("app@evil.test@example.com", "outside a quoted local part"),
        ('"app@evil.test@example.com', "outside a quoted local part"),
        ("app\u200b@example.com", "control"),  # a zero-width space: looks like app@
        ("<a@example.com>", "angle brackets"),
        ("a@example.com>", "angle brackets"),
        ("example.com", "local-part@domain"),
        ("@example.com", "local-part@domain"),
        ("a@", "local-part@domain"),
        ("@", "local-part@domain"),
        ("a" * 64 + "@" + "b" * 190, "longer than 254"),
        ("a\udc80@example.com", "UTF-8"),
    ],
)
def test_address_problem(address, fragment):
    problem = address_problem(address)
    assert problem is not None
    assert fragment in problem


@pytest.mark.parametrize(
    "address",
    [
        "a@b",
        "app@example.com",
        "first.last+tag@sub.example.co.uk",
        "jörg@exämple.com",
        '"app@evil.test"@example.com',  # a quoted @: a mailbox of example.com
        "evil%evil.test@example.com",
        "a" * 64 + "@" + "b" * 189,  # exactly 254
    ],
)
def test_address_without_problem(address):
    assert address_problem(address) is None


# -- is_delivery_report ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("multipart/report; report-type=delivery-status; boundary=x", True),
        ('multipart/report; report-type="delivery-status"', True),
        ("Multipart/Report; Report-Type=Delivery-Status", True),
        ("multipart/report;\treport-type = delivery-status", True),
        ("multipart/report; report-type=disposition-notification", False),
        ("multipart/mixed; boundary=x", False),
        ("text/plain", False),
        ("message/delivery-status", False),
        ("", False),
    ],
)
def test_is_delivery_report(content_type, expected):
    assert is_delivery_report({"content-type": content_type}) is expected


def test_is_delivery_report_without_content_type():
    assert is_delivery_report({}) is False


def test_is_delivery_report_from_parsed_headers():
    data = crlf(
        "From: Mail Delivery System <mailer-daemon@example.com>",
        "To: <app@example.com>",
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"',
        "",
        "",
    )
    assert is_delivery_report(parse_message(data).headers)


# -- Envelope --------------------------------------------------------------------------------------


def test_envelope_needs_smtputf8():
    assert not Envelope("a@example.com", ("b@example.net",), b"").needs_smtputf8
    assert Envelope("a@example.com", ("jörg@example.net",), b"").needs_smtputf8
    assert Envelope("jörg@example.com", ("b@example.net",), b"").needs_smtputf8
    assert not Envelope("", ("b@example.net",), b"").needs_smtputf8


def test_repeated_recipient_headers_all_count():
    data = (
        b"From: app@example.com\r\nTo: a@example.net\r\nBcc: b@example.net\r\n"
        b"Bcc: c@example.net\r\n\r\nbody\r\n"
    )
    assert parse_message(data).recipients == ("a@example.net", "b@example.net", "c@example.net")


def test_display_names_in_envelope_lines_are_ignored():
    data = (
        b'X-Sender: "Example Shop" <app@example.com>\r\n'
        b"X-Receiver: Alice <alice@example.net>\r\n"
        b"From: app@example.com\r\nTo: x@example.net\r\n\r\nbody\r\n"
    )
    parsed = parse_message(data)
    assert parsed.sender == "app@example.com"
    assert parsed.recipients == ("alice@example.net",)


def test_an_added_date_is_the_current_local_time() -> None:
    import email.utils
    import time

    from mqd.message.envelope import date_now

    before = time.time()
    stamp = email.utils.parsedate_to_datetime(date_now()).timestamp()
    assert int(before) - 1 <= stamp <= time.time()
    assert email.utils.parsedate_to_datetime(date_now()).utcoffset() is not None
    # What formatdate says in the same second (the cache is refreshed each second).
    while True:
        second = int(time.time())
        cached, fresh = date_now(), email.utils.formatdate(localtime=True)
        if int(time.time()) == second:
            break
    assert cached == fresh


def test_repeated_from_headers_are_all_recorded():
    # So that the From check (mqd.intake.policy) sees every address a reader may be shown.
    data = crlf(
        "X-Sender: a@example.com",
        "X-Receiver: b@example.net",
        "From: a@example.com",
        "From: Boss <boss@example.org>",
        "",
        "",
    )
    assert parse_message(data).headers["from"] == "a@example.com, Boss <boss@example.org>"
    # and the sender taken from the headers needs a Sender header, as for one From of several
    with pytest.raises(MessageParseError, match="several addresses"):
        parse_message(crlf("From: a@example.com", "From: c@example.com", "To: b@example.net", ""))


@pytest.mark.parametrize(
    ("value", "lenient", "strict"),
    [
        ("Shop <a@example.com>, b@example.org", ["a@example.com", "b@example.org"], None),
        ("a@example.com.", ["a@example.com."], ["a@example.com."]),  # a root dot: the same
        ("J. Doe <a@example.com>", ["a@example.com"], None),  # obsolete, not invalid
        ("<a@example.com> <b@example.org>", ["a@example.com"], "cannot be parsed"),
        ('a@example.com"', ["a@example.com"], "cannot be parsed"),
        ("Group:;", [], None),
    ],
)
def test_header_addresses_strict(value, lenient, strict):
    assert header_addresses(value, "from") == lenient
    if isinstance(strict, str):
        with pytest.raises(MessageParseError, match=strict):
            header_addresses(value, "from", strict=True)
    else:
        assert header_addresses(value, "from", strict=True) == (
            lenient if strict is None else strict
        )
