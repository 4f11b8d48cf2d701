"""End to end in one process: spool -> daemon -> a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import email
import json
from pathlib import Path

from conftest import drop, make_message, run_once

from mqd.config import Config
from mqd.plugins import PluginHost
from mqd.queue.entry import QueueEntry


async def test_delivers_and_strips_envelope_headers(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    drop(spool, make_message(to=("alice@example.net",), bcc=("hidden@example.net",)))
    daemon = await run_once(plain_config, host)
    [received] = smtp_server.wait_for(1)
    assert received.mail_from == "app@example.com"
    assert sorted(received.rcpt_tos) == ["alice@example.net", "hidden@example.net"]
    assert b"hidden@example.net" not in received.data
    assert b"\nBcc:" not in received.data and not received.data.startswith(b"Bcc:")
    assert daemon.queue_size == 0
    assert list(spool.glob("*.eml")) == []
    assert list((plain_config.queue.dir / "state").iterdir()) == []


async def test_x_sender_envelope_wins_and_is_stripped(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    message = make_message(
        sender="display@elsewhere.test",
        to=("header@example.net",),
        envelope=("app@example.com", ("env1@example.net", "env2@example.net")),
    )
    drop(spool, message)
    await run_once(plain_config, host)
    [received] = smtp_server.wait_for(1)
    assert received.mail_from == "app@example.com"
    assert received.rcpt_tos == ["env1@example.net", "env2@example.net"]
    assert b"X-Sender" not in received.data and b"X-Receiver" not in received.data
    assert b"To: header@example.net" in received.data


async def test_permanent_failure_bounces_to_sender_from_null_sender(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    drop(spool, make_message(to=("perm-bob@example.net", "alice@example.net")))
    await run_once(plain_config, host)
    messages = smtp_server.wait_for(2)
    original, bounce = messages
    assert original.rcpt_tos == ["alice@example.net"]
    assert bounce.mail_from == "<>"  # aiosmtpd's spelling of the null sender
    assert bounce.rcpt_tos == ["app@example.com"]
    dsn = email.message_from_bytes(bounce.data)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["From"] == "Mail Delivery System <mailer-daemon@mqd.test>"
    status = bounce.data.decode()
    assert "Final-Recipient: rfc822; perm-bob@example.net" in status
    assert "Status: 5.1.1" in status
    assert "Action: failed" in status
    assert "alice@example.net" not in status.split("message/delivery-status")[1].split("--")[0]
    failed = plain_config.queue.dir / "failed"
    [reason_file] = failed.glob("*.json")
    reason = json.loads(reason_file.read_text())
    assert "550 5.1.1" in reason["reason"]
    assert reason_file.with_suffix(".eml").exists()


async def test_transient_failure_is_persisted_and_retried(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    drop(spool, make_message(to=("temp-carol@example.net", "alice@example.net")))
    daemon = await run_once(plain_config, host)
    smtp_server.wait_for(1)
    [entry] = daemon.entries.values()
    assert entry.attempts == 1
    state = QueueEntry.from_json(
        (plain_config.queue.dir / "state" / f"{entry.id}.json").read_bytes()
    )
    assert state.attempts == 1
    assert state.next_attempt_at > state.last_attempt_at
    statuses = {r.address: r.status.value for r in state.recipients}
    assert statuses == {"temp-carol@example.net": "pending", "alice@example.net": "delivered"}
    # The server recovers; the next attempt sends only to the recipient still pending.
    smtp_server.temp_failures = False
    state.next_attempt_at = 0
    (plain_config.queue.dir / "state" / f"{entry.id}.json").write_bytes(state.to_json())
    daemon = await run_once(plain_config, host)
    messages = smtp_server.wait_for(2)
    assert messages[1].rcpt_tos == ["temp-carol@example.net"]
    assert daemon.queue_size == 0
    assert not (plain_config.queue.dir / "state" / f"{entry.id}.json").exists()
