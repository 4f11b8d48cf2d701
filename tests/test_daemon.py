"""End to end in one process: spool -> daemon -> a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import email
import json
import time
from pathlib import Path

import pytest
from corehelpers import drop, make_message, run_once

from mqd.admin.client import request
from mqd.config.schema import Config
from mqd.plugins.host import PluginHost
from mqd.queue.entry import QueueEntry, id_time
from mqd.testing.harness import queued_entries_async


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
    assert await queued_entries_async(daemon.config) == []
    assert list(spool.glob("*.eml")) == []
    assert list((plain_config.queue.dir / "state").iterdir()) == []


async def test_x_sender_envelope_wins_and_is_stripped(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    message = make_message(
        sender="display@example.org",  # allowed, as a From must be (check_from)
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
    [entry] = await queued_entries_async(daemon.config)
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
    assert await queued_entries_async(daemon.config) == []
    assert not (plain_config.queue.dir / "state" / f"{entry.id}.json").exists()


async def test_sender_not_allowed_goes_to_failed_without_any_network_traffic(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    drop(spool, make_message(sender="intruder@evil.test", to=("victim@example.net",)))
    await run_once(plain_config, host)
    assert smtp_server.connections == 0
    failed = plain_config.queue.dir / "failed"
    [reason_file] = failed.glob("*.json")
    reason = json.loads(reason_file.read_text())
    assert reason["stage"] == "policy"
    assert "intruder@evil.test" in reason["reason"] and "allowed_senders" in reason["reason"]
    assert reason_file.with_suffix(".eml").read_bytes().startswith(b"From: intruder@evil.test")


async def test_bad_input_goes_to_failed_and_the_daemon_goes_on(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    bad = {
        "empty.eml": b"",
        "binary.eml": bytes(range(256)) * 4,
        "garbage.eml": b"this is not a message\r\nat all\r\n",
        "norcpt.eml": b"From: app@example.com\r\nSubject: nobody\r\n\r\nbody\r\n",
    }
    for name, data in bad.items():
        (spool / name).write_bytes(data)
    drop(spool, make_message(to=("alice@example.net",)))
    await run_once(plain_config, host)
    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == ["alice@example.net"]
    reasons = {}
    for reason_file in (plain_config.queue.dir / "failed").glob("*.json"):
        reason = json.loads(reason_file.read_text())
        reasons[reason["file"]] = reason["reason"]
        assert reason_file.with_suffix(".eml").exists()
    assert set(reasons) == set(bad)
    assert "empty" in reasons["empty.eml"]
    assert "NUL" in reasons["binary.eml"]
    assert "not a header field" in reasons["garbage.eml"]
    assert "no recipients" in reasons["norcpt.eml"]
    assert list(spool.iterdir()) == []


async def test_invalid_recipient_bounces_while_the_others_are_delivered(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    message = make_message(envelope=("app@example.com", ("alice@example.net", "bad address@x")))
    drop(spool, message)
    await run_once(plain_config, host)
    original, bounce = smtp_server.wait_for(2)
    assert original.rcpt_tos == ["alice@example.net"]
    assert bounce.rcpt_tos == ["app@example.com"]
    assert b"Status: 5.1.3" in bounce.data


async def test_lifetime_exceeded_bounces_with_4_4_7(
    sink_config, spool: Path, queue_dir: Path, smtp_server, host: PluginHost
) -> None:
    config = sink_config(queue='retry = { initial = "1s", max = "1s", lifetime = "0s" }')
    drop(spool, make_message(to=("temp-dave@example.net",)))
    daemon = await run_once(config, host)
    [bounce] = smtp_server.wait_for(1)
    assert bounce.mail_from == "<>"
    assert b"Status: 4.4.7" in bounce.data
    assert b"retries exhausted" in bounce.data
    assert await queued_entries_async(daemon.config) == []
    [reason] = (queue_dir / "failed").glob("*.json")
    assert "4.4.7" in reason.read_text() or "retries exhausted" in reason.read_text()


async def test_a_bounce_that_fails_is_never_bounced(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    # Every RCPT fails permanently, the bounce to app@example.com included.
    smtp_server.rcpt_replies["app@example.com"] = "550 5.1.1 sender mailbox gone"
    drop(spool, make_message(to=("perm-x@example.net",)))
    daemon = await run_once(plain_config, host)
    assert smtp_server.messages == []
    assert await queued_entries_async(daemon.config) == []
    failed = sorted((plain_config.queue.dir / "failed").glob("*.json"))
    assert len(failed) == 2  # the original and its bounce; no bounce of the bounce
    bounce_reason = json.loads(failed[1].read_text())
    assert bounce_reason["sender"] == ""


async def test_dropped_connection_during_data_is_retried(
    plain_config: Config, host: PluginHost, spool: Path, smtp_server
) -> None:
    smtp_server.drop_in_data = True
    drop(spool, make_message(to=("alice@example.net",)))
    daemon = await run_once(plain_config, host)
    [entry] = await queued_entries_async(daemon.config)
    assert entry.attempts == 1 and entry.pending
    assert "4.4.2" in (entry.last_reply or "")
    smtp_server.drop_in_data = False
    await request(daemon.config, "retry", {"ids": [entry.id]})
    await run_once(plain_config, host)
    assert len(smtp_server.wait_for(1)) == 1


async def test_watch_picks_up_a_new_file_without_a_rescan(
    sink_config, spool: Path, smtp_server, host: PluginHost
) -> None:
    import asyncio

    from mqd.daemon.root import Daemon

    for watch in ("inotify", "watchfiles"):
        config = sink_config(queue=f'scan_interval = "1h"\nwatch = "{watch}"')
        daemon = Daemon(config, host=host, shutdown_timeout=5)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.ready.wait(), 10)
        # The start-up scan is over (its watcher started before it): only the watch can see
        # the file now.
        await asyncio.wait_for(daemon.spools.idle.wait(), 10)
        count = len(smtp_server.messages)
        drop(spool, make_message(to=("alice@example.net",), subject=watch))
        await asyncio.to_thread(smtp_server.wait_for, count + 1, 10)
        daemon.request_stop()
        await asyncio.wait_for(task, 10)


async def test_a_body_recovered_without_state_keeps_its_age(
    sink_config, spool: Path, queue_dir: Path, smtp_server, host: PluginHost
) -> None:
    """A message accepted and never attempted has no state file; taken in again from its body
    after a crash, it keeps the age its queue id records, so its lifetime does not restart."""
    config = sink_config(queue='retry = { initial = "1s", max = "1s", lifetime = "1h" }')
    two_hours_ago = f"{int((time.time() - 7200) * 1000):011x}{'ab' * 5}"
    assert id_time(two_hours_ago) == pytest.approx(time.time() - 7200, abs=1)
    body_dir = queue_dir / "messages" / config.spools[0].key
    body_dir.mkdir(parents=True)
    (body_dir / f"{two_hours_ago}.eml").write_bytes(make_message(to=("temp-erin@example.net",)))
    daemon = await run_once(config, host)
    [bounce] = smtp_server.wait_for(1)
    assert b"Status: 4.4.7" in bounce.data
    assert await queued_entries_async(daemon.config) == []
    assert [p.stem for p in (queue_dir / "failed").glob("*.json")] == [two_hours_ago]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc/self/fd")
async def test_the_first_attempt_does_not_wait_for_the_claims_fsyncs(
    plain_config: Config,
    spool: Path,
    smtp_server,
    host: PluginHost,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A producer fsyncs a file before renaming it into the spool, so the claimed body is
    durable already: the message goes out while the fsyncs that make the claim durable still
    run (here held until the sink has it), and the daemon stops only after they end."""
    import asyncio
    import os
    import threading

    import mqd.intake.pipeline

    if not mqd.intake.pipeline.SEND_WHILE_SYNCING:
        pytest.skip("Windows waits for the fsyncs (no rename or delete of an open file)")
    drop(spool)
    arrived, synced = threading.Event(), []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".eml"):  # the body's
            synced.append(arrived.wait(5))  # True: the sink had it before this fsync ended
        real_fsync(fd)

    async def on_arrival() -> None:
        await asyncio.to_thread(smtp_server.wait_for, 1, 10)
        arrived.set()

    monkeypatch.setattr(os, "fsync", fsync)
    watcher = asyncio.create_task(on_arrival())
    await run_once(plain_config, host)
    await watcher
    assert synced == [True]
    assert [m.rcpt_tos for m in smtp_server.messages] == [["alice@example.net"]]
