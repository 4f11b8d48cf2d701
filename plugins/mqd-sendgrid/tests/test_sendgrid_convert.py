"""MIME -> SendGrid JSON: what is carried, where it goes, what is reported as not carried.

Every payload built here is also checked against the fake's rendition of SendGrid's documented
rules (``sendgrid_fake.validate``), so a conversion that SendGrid would refuse fails the test.
"""

from __future__ import annotations

import base64
import email.policy
import json
from email.header import decode_header, make_header
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mqd import Envelope, PermanentRelayError
from mqd.testing import make_envelope, make_message
from sendgrid_fake import validate

from mqd_sendgrid.convert import MAX_RECIPIENTS, Conversion, to_sendgrid

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
PDF = b"%PDF-1.4\n" + bytes(range(256))


def convert(
    message: bytes | EmailMessage, *recipients: str, sender: str = "app@example.com"
) -> Conversion:
    data = (
        message.as_bytes(policy=email.policy.SMTP) if isinstance(message, EmailMessage) else message
    )
    conversion = to_sendgrid(Envelope(sender, recipients or ("rcpt@example.net",), data, "q123"))
    validate(conversion.payload)  # SendGrid would accept it
    return conversion


def base(**headers: str) -> EmailMessage:
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = headers.pop("From", "App <app@example.com>")
    message["To"] = headers.pop("To", "Rcpt <rcpt@example.net>")
    message["Subject"] = headers.pop("Subject", "Hello")
    message["Message-ID"] = "<m1@example.com>"
    message["Date"] = "Mon, 23 Nov 2026 11:40:57 +0000"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    return message


def lost_text(conversion: Conversion) -> str:
    return " | ".join(conversion.lost)


# -- bodies ---------------------------------------------------------------------------------------


def test_plain_text_message() -> None:
    message = base()
    message.set_content("Hello there.\n")
    payload = convert(message).payload
    assert payload["from"] == {"email": "app@example.com", "name": "App"}
    assert payload["personalizations"] == [{"to": [{"email": "rcpt@example.net", "name": "Rcpt"}]}]
    assert payload["subject"] == "Hello"
    assert payload["content"] == [{"type": "text/plain", "value": "Hello there.\n"}]
    assert payload["custom_args"] == {"mqd_id": "q123"}
    assert payload["headers"] == {
        "Message-ID": "<m1@example.com>",
        "Date": "Mon, 23 Nov 2026 11:40:57 +0000",
    }
    assert "attachments" not in payload


def test_a_plain_message_loses_nothing() -> None:
    message = base()
    message.set_content("Hello there.\n")
    assert convert(message).lost == ()


def test_html_only_message() -> None:
    message = base()
    message.set_content("<p>Hi</p>", subtype="html")
    assert convert(message).payload["content"] == [{"type": "text/html", "value": "<p>Hi</p>\n"}]


def test_alternative_puts_text_plain_first_whatever_the_mime_order() -> None:
    message = base()
    message.set_content("<p>Hi</p>", subtype="html")
    message.add_alternative("Hi")
    conversion = convert(message)
    assert [c["type"] for c in conversion.payload["content"]] == ["text/plain", "text/html"]
    assert conversion.lost == ()


def test_other_text_alternatives_follow_plain_and_html() -> None:
    message = base()
    message.set_content("Hi")
    message.add_alternative("<p>Hi</p>", subtype="html")
    message.add_alternative("BEGIN:VCALENDAR\nEND:VCALENDAR\n", subtype="calendar")
    content = convert(message).payload["content"]
    assert [c["type"] for c in content] == ["text/plain", "text/html", "text/calendar"]


def test_attachment_is_carried_byte_for_byte() -> None:
    message = base()
    message.set_content("See attached.")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
    conversion = convert(message)
    [attachment] = conversion.payload["attachments"]
    assert attachment == {
        "content": base64.b64encode(PDF).decode(),
        "type": "application/pdf",
        "filename": "report.pdf",
        "disposition": "attachment",
    }
    assert conversion.payload["content"] == [{"type": "text/plain", "value": "See attached.\n"}]
    assert conversion.lost == ()


def test_inline_image_keeps_its_content_id() -> None:
    message = base()
    message.set_content("Logo below.")
    message.add_alternative('<p>Logo: <img src="cid:logo@example.com"></p>', subtype="html")
    html_part = next(p for p in message.iter_parts() if p.get_content_type() == "text/html")
    html_part.add_related(PNG, maintype="image", subtype="png", cid="<logo@example.com>")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="terms.pdf")
    conversion = convert(message)
    inline, attached = conversion.payload["attachments"]
    assert inline["disposition"] == "inline"
    assert inline["content_id"] == "logo@example.com"
    assert inline["type"] == "image/png"
    assert base64.b64decode(inline["content"]) == PNG
    assert inline["filename"].endswith(".png")
    assert attached["disposition"] == "attachment"
    assert "content_id" not in attached
    assert [c["type"] for c in conversion.payload["content"]] == ["text/plain", "text/html"]
    assert conversion.lost == (), "mixed > alternative > related is a structure SendGrid builds"


def test_related_root_with_alternative_inside() -> None:
    message = base()
    message.set_content("<p><img src='cid:a@x'></p>", subtype="html")
    message.add_related(PNG, maintype="image", subtype="png", cid="<a@x>", filename="a.png")
    payload = convert(message).payload
    assert payload["attachments"][0]["content_id"] == "a@x"
    assert payload["attachments"][0]["filename"] == "a.png"


def test_message_without_body_gets_a_blank_text() -> None:
    raw = b"From: app@example.com\r\nTo: rcpt@example.net\r\nSubject: ping\r\n\r\n"
    assert convert(raw).payload["content"] == [{"type": "text/plain", "value": " "}]


def test_attachment_only_message_gets_a_blank_text() -> None:
    message = base()
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="a.pdf")
    payload = convert(message).payload
    assert payload["content"] == [{"type": "text/plain", "value": " "}]
    assert payload["attachments"][0]["filename"] == "a.pdf"


def test_second_text_body_becomes_an_attachment_and_is_reported() -> None:
    message = base()
    message.set_content("first")
    message.add_attachment("second", disposition="inline")
    conversion = convert(message)
    assert conversion.payload["content"] == [{"type": "text/plain", "value": "first\n"}]
    assert base64.b64decode(conversion.payload["attachments"][0]["content"]) == b"second\r\n", (
        "attachments keep their bytes"
    )
    assert "a second text/plain body part" in lost_text(conversion)


def test_attachment_name_with_forbidden_characters_is_renamed_and_reported() -> None:
    message = base()
    message.set_content("x")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="a;b,c.pdf")
    conversion = convert(message)
    assert conversion.payload["attachments"][0]["filename"] == "a_b_c.pdf"
    assert "'a;b,c.pdf'" in lost_text(conversion)


def test_calendar_attachment_reports_its_lost_method_parameter() -> None:
    message = base()
    message.set_content("invite")
    message.add_attachment(
        "BEGIN:VCALENDAR\nEND:VCALENDAR\n",
        subtype="calendar",
        filename="invite.ics",
        params={"method": "REQUEST"},
    )
    conversion = convert(message)
    assert conversion.payload["attachments"][0]["type"] == "text/calendar"
    assert "method=REQUEST" in lost_text(conversion)


def test_forwarded_message_is_attached_as_eml() -> None:
    inner = base(Subject="inner")
    inner.set_content("inner body")
    message = base()
    message.set_content("fwd")
    message.add_attachment(inner)
    [attachment] = convert(message).payload["attachments"]
    assert attachment["type"] == "message/rfc822"
    assert attachment["filename"].endswith(".eml")
    assert b"inner body" in base64.b64decode(attachment["content"])


def test_delivery_report_is_flattened_and_reported() -> None:
    report = (
        b"From: mailer-daemon@mqd.test\r\nTo: app@example.com\r\nSubject: failed\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mqd.test\r\n\r\nFinal-Recipient: rfc822; x@example.net\r\n"
        b"Action: failed\r\nStatus: 5.6.0\r\n\r\n"
        b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: original\r\n\r\n"
        b"--b--\r\n"
    )
    conversion = convert(report, "app@example.com", sender="")
    payload = conversion.payload
    assert payload["content"][0]["value"].startswith("Your message could not be delivered.")
    types = [a["type"] for a in payload["attachments"]]
    assert types == ["message/delivery-status", "text/rfc822-headers"]
    status = base64.b64decode(payload["attachments"][0]["content"])
    assert b"Reporting-MTA: dns; mqd.test" in status and b"Action: failed" in status
    assert "multipart/report" in lost_text(conversion)


def test_nested_mixed_is_flattened_and_reported() -> None:
    inner = EmailMessage(policy=email.policy.SMTP)
    inner.set_content("inner text")
    inner.add_attachment(PDF, maintype="application", subtype="pdf", filename="in.pdf")
    message = base()
    message.set_content("outer text")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="out.pdf")
    message.attach(inner)
    conversion = convert(message)
    filenames = [a["filename"] for a in conversion.payload["attachments"]]
    assert "in.pdf" in filenames and "out.pdf" in filenames
    assert "multipart/mixed structure inside multipart/mixed" in lost_text(conversion)


# -- signed and encrypted -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        'multipart/signed; protocol="application/pgp-signature"; micalg=pgp-sha256; boundary="s"',
        'multipart/encrypted; protocol="application/pgp-encrypted"; boundary="s"',
        "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m",
    ],
)
def test_signed_or_encrypted_message_is_refused_permanently(content_type: str) -> None:
    message = (
        "From: app@example.com\r\nTo: rcpt@example.net\r\nSubject: secret\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n"
        "--s\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--s\r\n"
        "Content-Type: application/pgp-signature\r\n\r\nsig\r\n--s--\r\n"
    ).encode()
    with pytest.raises(PermanentRelayError) as caught:
        to_sendgrid(Envelope("app@example.com", ("rcpt@example.net",), message, "q1"))
    reply = caught.value.reply
    assert reply is not None and (reply.code, reply.enhanced) == (554, "5.6.3")
    assert 'plugin = "smtp"' in str(caught.value), "the error says what to do instead"


def test_signed_part_inside_mixed_is_refused_too() -> None:
    message = (
        b"From: app@example.com\r\nTo: rcpt@example.net\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n'
        b"--m\r\nContent-Type: text/plain\r\n\r\nfooter added by a list\r\n"
        b'--m\r\nContent-Type: multipart/signed; protocol="application/pkcs7-signature"; '
        b'boundary="s"\r\n\r\n--s\r\nContent-Type: text/plain\r\n\r\nsigned\r\n'
        b"--s\r\nContent-Type: application/pkcs7-signature\r\n\r\nsig\r\n--s--\r\n"
        b"--m--\r\n"
    )
    with pytest.raises(PermanentRelayError):
        to_sendgrid(Envelope("app@example.com", ("rcpt@example.net",), message, "q"))


def test_empty_attachment_is_left_out_and_reported() -> None:
    message = base()
    message.set_content("x")
    message.add_attachment(b"", maintype="application", subtype="octet-stream", filename="e.bin")
    conversion = convert(message)
    assert "attachments" not in conversion.payload
    assert "'e.bin'" in lost_text(conversion)


# -- addresses ------------------------------------------------------------------------------------


def test_reply_to_single_and_several() -> None:
    message = base(Reply_To="Support <support@example.com>")
    message.set_content("x")
    payload = convert(message).payload
    assert payload["reply_to"] == {"email": "support@example.com", "name": "Support"}
    assert "reply_to_list" not in payload

    message = base(Reply_To="a@example.com, B <b@example.com>, A@example.com")
    message.set_content("x")
    payload = convert(message).payload
    assert "reply_to" not in payload
    assert payload["reply_to_list"] == [
        {"email": "A@example.com"},
        {"email": "b@example.com", "name": "B"},
    ]


def test_recipients_are_placed_by_the_headers() -> None:
    message = base(To="Ann <ann@example.net>, bob@example.net", Cc="Cy <cy@example.net>")
    message.set_content("x")
    payload = convert(
        message, "ann@example.net", "bob@example.net", "cy@example.net", "hidden@example.net"
    ).payload
    assert payload["personalizations"] == [
        {
            "to": [{"email": "ann@example.net", "name": "Ann"}, {"email": "bob@example.net"}],
            "cc": [{"email": "cy@example.net", "name": "Cy"}],
            "bcc": [{"email": "hidden@example.net"}],
        }
    ]


def test_header_addresses_that_are_not_envelope_recipients_are_not_sent_to() -> None:
    message = base(To="ann@example.net, bob@example.net")
    message.set_content("x")
    payload = convert(message, "bob@example.net").payload
    assert payload["personalizations"] == [{"to": [{"email": "bob@example.net"}]}]


def test_matching_ignores_letter_case() -> None:
    message = base(To="Ann <Ann@Example.NET>")
    message.set_content("x")
    payload = convert(message, "ann@example.net").payload
    assert payload["personalizations"][0]["to"] == [{"email": "ann@example.net", "name": "Ann"}]


def test_only_cc_recipients_become_to_and_it_is_said() -> None:
    message = base(To="list@example.org", Cc="ann@example.net, bob@example.net")
    message.set_content("x")
    conversion = convert(message, "ann@example.net", "bob@example.net")
    assert conversion.payload["personalizations"] == [
        {"to": [{"email": "ann@example.net"}, {"email": "bob@example.net"}]}
    ]
    assert "Cc recipients are sent as To" in lost_text(conversion)


def test_only_hidden_recipients_get_a_copy_each_so_none_sees_another() -> None:
    message = base(To="undisclosed-recipients:;")
    message.set_content("x")
    conversion = convert(message, "a@example.net", "b@example.net")
    assert conversion.payload["personalizations"] == [
        {"to": [{"email": "a@example.net"}]},
        {"to": [{"email": "b@example.net"}]},
    ]
    assert "copy addressed To itself" in lost_text(conversion)


def test_addresses_differing_only_in_case_are_sent_once_and_it_is_said() -> None:
    message = base(To="Bob@example.net")
    message.set_content("x")
    conversion = convert(message, "Bob@example.net", "bob@example.net")
    assert conversion.payload["personalizations"] == [{"to": [{"email": "Bob@example.net"}]}]
    assert "<bob@example.net> and <Bob@example.net> differ only in letter case" in lost_text(
        conversion
    )


def test_names_with_commas_are_quoted_in_personalizations() -> None:
    message = base(From='"Shop, Inc." <app@example.com>', To='"Doe, Jane" <jane@example.net>')
    message.set_content("x")
    payload = convert(message, "jane@example.net").payload
    assert payload["personalizations"][0]["to"] == [
        {"email": "jane@example.net", "name": '"Doe, Jane"'}
    ]
    assert payload["from"] == {"email": "app@example.com", "name": "Shop, Inc."}


def test_too_many_recipients_are_refused() -> None:
    recipients = tuple(f"r{i}@example.net" for i in range(MAX_RECIPIENTS + 1))
    envelope = make_envelope(recipients=recipients)
    with pytest.raises(PermanentRelayError) as caught:
        to_sendgrid(envelope)
    assert caught.value.reply is not None and caught.value.reply.enhanced == "5.5.3"


def test_exactly_the_limit_is_accepted() -> None:
    recipients = tuple(f"r{i}@example.net" for i in range(MAX_RECIPIENTS))
    conversion = to_sendgrid(make_envelope(recipients=recipients))
    validate(conversion.payload)


def test_missing_from_uses_the_envelope_sender_and_says_so() -> None:
    message = b"To: rcpt@example.net\r\nSubject: s\r\n\r\nbody\r\n"
    conversion = convert(message, sender="app@example.com")
    assert conversion.payload["from"] == {"email": "app@example.com"}
    assert "no From header" in lost_text(conversion)


def test_missing_from_and_null_sender_is_refused() -> None:
    message = b"To: rcpt@example.net\r\nSubject: s\r\n\r\nbody\r\n"
    with pytest.raises(PermanentRelayError):
        to_sendgrid(Envelope("", ("rcpt@example.net",), message, "q"))


def test_several_from_addresses_keep_the_first_and_say_so() -> None:
    message = base(From="a@example.com, b@example.com", Sender="a@example.com")
    message.set_content("x")
    conversion = convert(message)
    assert conversion.payload["from"] == {"email": "a@example.com"}
    assert "From holds 2 addresses" in lost_text(conversion)


# -- headers --------------------------------------------------------------------------------------


def test_custom_headers_are_kept_and_reserved_ones_dropped_and_reported() -> None:
    message = base(
        X_Campaign="spring",
        List_Unsubscribe="<mailto:unsub@example.com>",
        In_Reply_To="<parent@example.com>",
        Received="from a by b; Mon, 23 Nov 2026 11:40:57 +0000",
        DKIM_Signature="v=1; a=rsa-sha256; d=example.com; s=s; b=abc",
        X_SG_EID="x",
        Sender="Robot <robot@example.com>",
        Return_Path="<bounce@example.com>",
    )
    message["Received"] = "from c by d; Mon, 23 Nov 2026 11:40:57 +0000"
    message["X-Campaign"] = "second"
    message.set_content("x")
    conversion = convert(message)
    headers = conversion.payload["headers"]
    assert headers == {
        "Message-ID": "<m1@example.com>",
        "Date": "Mon, 23 Nov 2026 11:40:57 +0000",
        "X-Campaign": "spring",
        "List-Unsubscribe": "<mailto:unsub@example.com>",
        "In-Reply-To": "<parent@example.com>",
    }
    text = lost_text(conversion)
    assert "Received (x2)" in text and "DKIM-Signature" in text and "X-SG-EID" in text
    assert "Sender header" in text and "Return-Path header" in text
    assert "X-Campaign" in text, "the repeated header is reported"


def test_mime_structure_headers_are_not_reported() -> None:
    message = base()
    message.set_content("x")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="a.pdf")
    conversion = convert(message)
    assert "MIME-Version" not in conversion.payload["headers"]
    assert conversion.lost == ()


def test_folded_header_is_unfolded() -> None:
    raw = (
        b"From: app@example.com\r\nTo: rcpt@example.net\r\nSubject: s\r\n"
        b"X-Long: first part\r\n second part\r\n\r\nbody\r\n"
    )
    assert convert(raw).payload["headers"]["X-Long"] == "first part second part"


# -- non-ASCII ------------------------------------------------------------------------------------


def test_encoded_words_are_decoded_in_fields() -> None:
    raw = (
        b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <app@example.com>\r\n"
        b"To: =?iso-8859-1?q?Z=FCrich_Team?= <rcpt@example.net>\r\n"
        b"Subject: =?utf-8?b?w4TDpMO2IHRlc3Q=?= =?utf-8?q?_=E2=82=AC?=\r\n"
        b"X-Encoded: =?utf-8?q?caf=C3=A9?=\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe\r\n"
    )
    payload = convert(raw).payload
    assert payload["from"] == {"email": "app@example.com", "name": "Jürgen Müller"}
    assert payload["personalizations"][0]["to"][0]["name"] == "Zürich Team"
    assert payload["subject"] == "Ääö test €"
    assert payload["content"][0]["value"] == "Grüße\n"
    assert payload["headers"]["X-Encoded"] == "=?utf-8?q?caf=C3=A9?=", "kept as written"


def test_raw_utf8_header_is_sent_as_encoded_words() -> None:
    raw = (
        "From: Jürgen <app@example.com>\r\nTo: rcpt@example.net\r\nSubject: Grüße\r\n"
        "X-Note: Grüße aus Köln\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n"
    ).encode()
    payload = convert(raw).payload
    value = payload["headers"]["X-Note"]
    assert value.isascii()
    assert str(make_header(decode_header(value))) == "Grüße aus Köln"
    assert payload["subject"] == "Grüße"
    assert payload["from"]["name"] == "Jürgen"


def test_unknown_charset_is_read_as_utf8_and_reported() -> None:
    raw = (
        "From: app@example.com\r\nTo: rcpt@example.net\r\nSubject: s\r\n"
        "Content-Type: text/plain; charset=x-unknown\r\n\r\nné\r\n"
    ).encode()
    conversion = convert(raw)
    assert conversion.payload["content"][0]["value"] == "né\n"
    assert "x-unknown" in lost_text(conversion)


def test_missing_subject_is_blank_and_reported() -> None:
    raw = b"From: app@example.com\r\nTo: rcpt@example.net\r\n\r\nbody\r\n"
    conversion = convert(raw)
    assert conversion.payload["subject"] == " "
    assert "no subject" in lost_text(conversion)


def test_no_custom_args_without_a_queue_id() -> None:
    envelope = make_envelope(make_message(), id="")
    assert "custom_args" not in to_sendgrid(envelope).payload


names = st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=30)


@settings(max_examples=60, deadline=None)
@given(
    subject=names,
    body=st.text(st.characters(exclude_categories=["Cs"]), max_size=80),
    name=names,
)
def test_any_text_converts_to_an_acceptable_utf8_request(
    subject: str, body: str, name: str
) -> None:
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = email.headerregistry.Address(name.strip(), "app", "example.com")
    message["To"] = "rcpt@example.net"
    message["Subject"] = subject
    message.set_content(body)
    conversion = convert(message)
    payload: dict[str, Any] = conversion.payload
    # Folding may change runs of spaces, never the words.
    assert payload["subject"].split() == subject.split()
    assert payload["subject"]
    json.dumps(payload, ensure_ascii=False).encode("utf-8")  # no lone surrogates
