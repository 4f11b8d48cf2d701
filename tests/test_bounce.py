"""Unit tests for mqd.delivery.bounce: the RFC 3464 delivery status notification."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re

import pytest

from mqd.config.load import parse_config
from mqd.delivery.bounce import build_bounce, original_headers
from mqd.message.envelope import is_delivery_report, parse_message
from mqd.queue.entry import QueueEntry, RcptStatus, RecipientState

BOUNCE_SENDER = "mailer-daemon@mqd.test"
BARE_LF = re.compile(rb"(?<!\r)\n")
BARE_CR = re.compile(rb"\r(?!\n)")

ORIGINAL = (
    b"X-Sender: <app@example.com>\r\n"
    b"X-Receiver: <bob@example.net>\r\n"
    b"X-Receiver: <carol@example.net>\r\n"
    b"From: App <app@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Bcc: hidden1@example.net,\r\n"
    b"  hidden2@example.net\r\n"
    b"Subject: Your invoice\r\n"
    b"X-Receiver: late-receiver@example.net\r\n"
    b"Message-ID: <orig-1@example.com>\r\n"
    b"bcc: hidden3@example.net\r\n"
    b"X-Sender: late-sender@example.com\r\n"
    b"\r\n"
    b"SECRET BODY CONTENT\r\n"
    b"Bcc: body-line@example.net\r\n"
)


def failed(address, reply=None, status_code=None, remote=None) -> RecipientState:
    return RecipientState(address, RcptStatus.FAILED, reply, status_code, remote)


@pytest.fixture
def entry() -> QueueEntry:
    return QueueEntry(
        id="018f2a3b4c5d0123456789",
        sender="app@example.com",
        recipients=[
            failed("bob@example.net", "550 5.1.1 User unknown", "5.1.1", "mx.example.net"),
            failed("carol@example.net"),
            RecipientState("dave@example.net", RcptStatus.DELIVERED, "250 2.0.0 OK", "2.0.0"),
        ],
        relay="main",
        source="abc",
        created_at=1_700_000_000.0,
        next_attempt_at=1_700_000_000.0,
        attempts=3,
        last_attempt_at=1_700_000_600.0,
    )


def bounce_for(entry: QueueEntry, original: bytes = ORIGINAL, failures=None) -> bytes:
    if failures is None:
        failures = [r for r in entry.recipients if r.status is RcptStatus.FAILED]
    return build_bounce(
        entry,
        failures,
        original,
        bounce_sender=BOUNCE_SENDER,
        reporting_mta="mqd.test",
        dsn_id="dsn-1",
    )


def parts(data: bytes):
    message = email.message_from_bytes(data)
    assert message.is_multipart()
    return message, message.get_payload()


def test_is_a_multipart_report(entry):
    message, payload = parts(bounce_for(entry))
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["MIME-Version"] == "1.0"
    assert [p.get_content_type() for p in payload] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert message.defects == []
    assert all(p.defects == [] for p in payload)


def test_addressing(entry):
    data = bounce_for(entry)
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert [a.addr_spec for a in message["To"].addresses] == ["app@example.com"]
    assert [a.addr_spec for a in message["From"].addresses] == [BOUNCE_SENDER]
    assert message["Message-ID"] == "<dsn-1@mqd.test>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Subject"]
    assert email.utils.parsedate_to_datetime(message["Date"]) is not None


def test_is_recognised_as_a_delivery_report(entry):
    # what keeps mqd from bouncing its own bounces
    parsed = parse_message(bounce_for(entry))
    assert is_delivery_report(parsed.headers)
    assert parsed.recipients == ("app@example.com",)


def status_blocks(data: bytes):
    _, payload = parts(data)
    blocks = payload[1].get_payload()
    return blocks[0], blocks[1:]


def test_per_message_fields(entry):
    per_message, _ = status_blocks(bounce_for(entry))
    assert per_message["Reporting-MTA"] == "dns; mqd.test"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == (
        entry.created_at
    )


def test_one_block_per_failed_recipient(entry):
    _, blocks = status_blocks(bounce_for(entry))
    assert len(blocks) == 2
    bob, carol = blocks
    assert bob["Final-Recipient"] == "rfc822; bob@example.net"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 User unknown"
    assert bob["Remote-MTA"] == "dns; mx.example.net"
    assert email.utils.parsedate_to_datetime(bob["Last-Attempt-Date"]).timestamp() == (
        entry.last_attempt_at
    )
    assert carol["Final-Recipient"] == "rfc822; carol@example.net"
    assert carol["Action"] == "failed"
    assert carol["Status"] == "5.0.0"  # no status known: a generic permanent one
    assert carol["Remote-MTA"] is None  # not known: not invented
    assert carol["Diagnostic-Code"] is None
    # the delivered recipient is not reported
    assert all("dave@" not in (b["Final-Recipient"] or "") for b in blocks)


def test_many_failures_give_many_blocks(entry):
    failures = [failed(f"r{i}@example.net", f"550 5.1.1 no r{i}", "5.1.1") for i in range(5)]
    _, blocks = status_blocks(bounce_for(entry, failures=failures))
    assert [b["Final-Recipient"] for b in blocks] == [f"rfc822; r{i}@example.net" for i in range(5)]
    assert [b["Diagnostic-Code"] for b in blocks] == [f"smtp; 550 5.1.1 no r{i}" for i in range(5)]


def test_expired_message_status(entry):
    failures = [
        failed(
            "bob@example.net",
            "gave up after 5d; last reply: 451 4.4.1 cannot connect",
            "4.4.7",
        )
    ]
    _, [block] = status_blocks(bounce_for(entry, failures=failures))
    assert block["Status"] == "4.4.7"
    assert block["Action"] == "failed"


def test_no_last_attempt_date_before_any_attempt(entry):
    entry.last_attempt_at = None
    _, blocks = status_blocks(bounce_for(entry))
    assert all(b["Last-Attempt-Date"] is None for b in blocks)


def test_human_part_explains(entry):
    _, payload = parts(bounce_for(entry))
    text = payload[0].get_payload(decode=True).decode("utf-8")
    assert "<bob@example.net>: 550 5.1.1 User unknown" in text
    assert "<carol@example.net>: delivery failed" in text
    assert "Your invoice" in text
    assert "dave@" not in text


def test_attached_headers_without_envelope_lines_or_bcc(entry):
    data = bounce_for(entry)
    _, payload = parts(data)
    attached = payload[2].get_payload(decode=True)
    names = [line.split(b":", 1)[0].lower() for line in attached.split(b"\r\n") if line]
    assert names == [b"from", b"to", b"subject", b"message-id"]
    assert b"Subject: Your invoice\r\n" in attached
    assert b"Message-ID: <orig-1@example.com>\r\n" in attached
    for hidden in (b"hidden1", b"hidden2", b"hidden3", b"late-receiver", b"late-sender"):
        assert hidden not in data
    assert not re.search(rb"(?im)^(bcc|x-sender|x-receiver):", attached)
    # the body is not returned, not even a body line that looks like a header
    assert b"SECRET BODY CONTENT" not in data
    assert b"body-line@example.net" not in data


def test_crlf_throughout(entry):
    data = bounce_for(entry)
    assert b"\r\n" in data
    assert BARE_LF.search(data) is None
    assert BARE_CR.search(data) is None
    assert data.endswith(b"--\r\n")


def test_crlf_throughout_for_an_lf_original(entry):
    data = bounce_for(entry, original=ORIGINAL.replace(b"\r\n", b"\n"))
    assert BARE_LF.search(data) is None
    _, payload = parts(data)
    attached = payload[2].get_payload(decode=True)
    assert b"Subject: Your invoice\r\n" in attached
    assert b"hidden" not in data


def test_crlf_throughout_with_a_multi_line_reply(entry):
    # A reply can hold a line break (e.g. a relay error's text made into a reply); neither the
    # human part nor the status part may then carry a bare LF.
    failures = [failed("bob@example.net", "554 5.0.0 first line\nsecond line", "5.0.0")]
    data = bounce_for(entry, failures=failures)
    assert BARE_LF.search(data) is None
    _, [block] = status_blocks(data)
    assert block["Diagnostic-Code"] == "smtp; 554 5.0.0 first line second line"


def test_non_ascii_subject(entry):
    original = "From: app@example.com\r\nTo: b@example.net\r\nSubject: Grüße\r\n\r\nx".encode()
    data = bounce_for(entry, original=original)
    _, payload = parts(data)
    assert "Grüße" in payload[0].get_payload(decode=True).decode("utf-8")
    assert payload[0].get_content_charset() == "utf-8"


def test_null_sender_entry_is_not_bounceable():
    entry = QueueEntry(
        id="x",
        sender="",
        recipients=[failed("a@example.net")],
        relay="main",
        source="dsn",
        created_at=0,
        next_attempt_at=0,
    )
    assert entry.may_bounce is False


def test_original_headers():
    assert original_headers(ORIGINAL) == (
        b"From: App <app@example.com>\r\n"
        b"To: bob@example.net\r\n"
        b"Subject: Your invoice\r\n"
        b"Message-ID: <orig-1@example.com>\r\n"
    )


def test_original_headers_keep_folded_lines_of_kept_headers():
    original = (
        b"From: a@example.com\nSubject: long\n  continued\nBcc: x@example.net\n\tmore\n\nbody"
    )
    assert original_headers(original) == (
        b"From: a@example.com\r\nSubject: long\r\n  continued\r\n"
    )


def test_hook_uses_configured_bounce_sender(entry, host, tmp_path):
    config = parse_config(
        {
            "queue": {"dir": str(tmp_path / "q"), "bounce_sender": "bounces@mqd.example"},
            "spool": [{"path": str(tmp_path / "s")}],
            "relays": {"dev": {"plugin": "outbox", "path": str(tmp_path / "o")}},
        },
        None,
    )
    entry.bounces = 2
    failures = [r for r in entry.recipients if r.status is RcptStatus.FAILED]
    data = host.build_bounce(entry, failures, ORIGINAL, config)
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert [a.addr_spec for a in message["From"].addresses] == ["bounces@mqd.example"]
    assert message["Message-ID"].startswith(f"<{entry.id}b2@")
    assert message.get_content_type() == "multipart/report"


def test_hook_names_the_configured_hostname(entry, host, tmp_path):
    """queue.hostname is the Reporting-MTA, the host of the human part, the Message-ID's domain
    and the default domain of bounce_sender: never a bare `vm`."""
    config = parse_config(
        {
            "queue": {"dir": str(tmp_path / "q"), "hostname": "mail.example.org"},
            "spool": [{"path": str(tmp_path / "s")}],
            "relays": {"dev": {"plugin": "outbox", "path": str(tmp_path / "o")}},
        },
        None,
    )
    assert config.queue.bounce_sender == "mailer-daemon@mail.example.org"
    failures = [r for r in entry.recipients if r.status is RcptStatus.FAILED]
    data = host.build_bounce(entry, failures, ORIGINAL, config)
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message["Message-ID"] == f"<{entry.id}b0@mail.example.org>"
    _, (human, _, _) = parts(data)
    assert "at host mail.example.org." in human.get_payload(decode=True).decode()
    assert status_blocks(data)[0]["Reporting-MTA"] == "dns; mail.example.org"


@pytest.mark.parametrize(
    ("kernel", "canonical", "expected"),
    [
        ("web1.example.org", "unused", "web1.example.org"),  # already qualified
        ("vm", "vm.example.org", "vm.example.org"),  # the resolver knows it
        ("vm", "localhost", "vm"),  # /etc/hosts maps it to 127.0.0.1: keep the name
        ("vm", "vm", "vm"),
    ],
)
def test_the_default_hostname_is_the_qualified_name(monkeypatch, kernel, canonical, expected):
    import socket

    from mqd.config import hostname

    monkeypatch.setattr(socket, "gethostname", lambda: kernel)
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, 0, 0, canonical, ("", 0))]
    )
    hostname.local_hostname.cache_clear()
    try:
        assert hostname.local_hostname() == expected
    finally:
        hostname.local_hostname.cache_clear()


def test_a_hostname_with_spaces_is_refused(tmp_path):
    from mqd.errors import ConfigError

    with pytest.raises(ConfigError, match="hostname"):
        parse_config({"queue": {"dir": str(tmp_path / "q"), "hostname": "my host"}}, None)
