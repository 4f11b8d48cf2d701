"""Hostile and broken input through a real daemon run and a real SMTP sink: each file gets its
fate (delivered, rejected to failed/ with a reason, or bounced) and nothing else happens: no
crash, no loop, no message to anyone it was not addressed to.

Unit-level cases (every parse error, address problems, safe opening of spool files) live in
test_envelope.py and test_spool.py; properties over arbitrary input in
test_envelope_properties.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from corehelpers import drop, make_message, run_once
from smtpserver import SMTPPeer

from mqd.config.schema import Config


def reasons(queue_dir: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((queue_dir / "failed").glob("*.json"))]


def everyone(peer: SMTPPeer) -> list[str]:
    return sorted(r for m in peer.messages for r in m.rcpt_tos)


SMUGGLING = [
    b"\n.\n",  # bare LF dot LF: ends DATA on servers that accept bare LF
    b"\r.\r\n",  # bare CR
    b"\n.\r\n",
    b"\r\n.\r",
    b"\r\n.\n",
]


@pytest.mark.parametrize("terminator", SMUGGLING, ids=repr)
async def test_smtp_smuggling_cannot_end_data_early(
    terminator: bytes, plain_config: Config, spool: Path, smtp_server: SMTPPeer, host
) -> None:
    smuggled = (
        b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nwire the money\r\n.\r\n"
    )
    data = (
        b"From: app@example.com\r\nTo: alice@example.net\r\nSubject: hi\r\n\r\n"
        b"first part" + terminator + smuggled + b"last line\r\n"
    )
    drop(spool, data)
    await run_once(plain_config, host)

    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == ["alice@example.net"]
    assert b"victim@example.net" in received.data and received.data.rstrip().endswith(b"last line")
    assert everyone(smtp_server) == ["alice@example.net"]
    # Every line ending on the wire is CRLF: no bare CR or LF reached the server.
    wire = received.data.replace(b"\r\n", b"")
    assert b"\r" not in wire and b"\n" not in wire


async def test_a_line_over_998_octets_bounces_once_and_never_loops(
    plain_config: Config, spool: Path, smtp_server: SMTPPeer, host, queue_dir: Path
) -> None:
    """mqd does not rewrap lines (that would change the content); a server that refuses a
    1,500-octet line answers 5xx, so the sender gets one bounce naming the reason. The bounce
    carries only the original's headers, so it goes through."""
    drop(spool, make_message(body="x" * 1500 + "\n"))
    await run_once(plain_config, host)
    await run_once(plain_config, host)
    dsns = [m for m in smtp_server.messages if m.mail_from in ("", "<>")]
    assert [m.rcpt_tos for m in dsns] == [["app@example.com"]]
    assert b"Line too long" in dsns[0].data
    [reason] = reasons(queue_dir)
    assert "Line too long" in str(reason["reason"])
    assert not list((queue_dir / "state").iterdir())


async def test_a_header_line_over_998_octets_cannot_make_a_bounce_loop(
    plain_config: Config, spool: Path, smtp_server: SMTPPeer, host, queue_dir: Path
) -> None:
    """Here the bounce itself repeats the long header and is refused too: a DSN from <> never
    bounces, so it ends in failed/ next to the original and nothing is retried."""
    drop(spool, make_message(extra_headers=("X-Long: " + "y" * 1500,)))
    for _ in range(3):
        await run_once(plain_config, host)
    assert smtp_server.messages == []
    stages = sorted(str(r["sender"]) for r in reasons(queue_dir))
    assert stages == ["", "app@example.com"]
    assert not list((queue_dir / "state").iterdir())


@pytest.mark.parametrize(
    ("from_header", "why"),
    [
        ('"app@example.com" <evil@attacker.test>', "evil@attacker.test"),  # display-name trick
        ("app@example.com.attacker.test", "app@example.com.attacker.test"),
        ("\u0430pp@example.com", "\u0430pp@example.com"),  # Cyrillic a in the local part
        ("app@ex\u0430mple.com", "ex\u0430mple.com"),  # Cyrillic a in the domain
        ("=?utf-8?q?app=40example=2Ecom?= <evil@attacker.test>", "evil@attacker.test"),
        ("evil@attacker.test (app@example.com)", "evil@attacker.test"),  # a comment
    ],
)
async def test_spoofing_attempts_are_rejected_and_nothing_is_sent(
    from_header: str,
    why: str,
    plain_config: Config,
    spool: Path,
    smtp_server: SMTPPeer,
    host,
    queue_dir: Path,
) -> None:
    data = (
        f"From: {from_header}\r\nTo: alice@example.net\r\nSubject: pay now\r\n\r\nhi\r\n"
    ).encode()
    drop(spool, data)
    await run_once(plain_config, host)
    assert smtp_server.messages == []
    [reason] = reasons(queue_dir)
    assert reason["stage"] in ("policy", "intake")
    assert why in str(reason["reason"]) or reason["stage"] == "intake"


async def test_case_and_a_trailing_dot_are_the_same_sender(
    plain_config: Config, spool: Path, smtp_server: SMTPPeer, host
) -> None:
    """Documented normalisation: domains compare case-insensitively and without a trailing dot,
    local parts case-insensitively (the allow-list names app@example.com); the trailing dot is
    dropped from the envelope, since many servers refuse it."""
    drop(spool, make_message(sender="APP@Example.COM.", to=("alice@example.net.",)))
    await run_once(plain_config, host)
    [received] = smtp_server.wait_for(1)
    assert received.mail_from == "APP@Example.COM" and received.rcpt_tos == ["alice@example.net"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01\x02binary\xff\xfe" * 50,
        b"From: app@example.com\r\nTo: alice@example.net\r\nSubject: \x00nul\r\n\r\nbody",
        b"no header block at all, just text\r\n",
        b"From: app@example.com\r\nTo: alice@example.net",  # no separator, no body
        b"X-Sender: app@example.com\r\nX-Receiver: alice@example.net\r\nbcc@evil.test\r\n\r\n",
        b"X-Sender: app@example.com\r\nX-Receiver: <alice@example.net>\rRCPT TO:<v@e.test>\r\n"
        b"From: app@example.com\r\n\r\nhi",
    ],
    ids=["empty", "binary", "nul-in-header", "no-headers", "no-separator", "stray-line", "cr"],
)
async def test_broken_files_never_reach_anyone_unexpected(
    data: bytes, plain_config: Config, spool: Path, smtp_server: SMTPPeer, host, queue_dir: Path
) -> None:
    drop(spool, data)
    await run_once(plain_config, host)
    # alice may get it; the allowed sender may get a bounce for an unusable recipient.
    assert set(everyone(smtp_server)) <= {"alice@example.net", "app@example.com"}
    assert "v@e.test" not in everyone(smtp_server)
    assert not [p for p in spool.iterdir() if p.suffix == ".eml"]
    assert not list((queue_dir / "state").iterdir())
    for reason in reasons(queue_dir):
        assert reason["reason"], "every refusal says why"
