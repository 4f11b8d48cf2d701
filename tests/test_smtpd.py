"""SMTP submission ([[smtpd]]): a real listener on 127.0.0.1 port 0 in a daemon in this process,
aiosmtplib as the application, the in-test SMTP sink as the relay's peer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
import ssl
import textwrap
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
from click.testing import CliRunner
from corehelpers import make_message
from smtpserver import SMTPPeer
from sourcerun import running

from mqd.admin.render import render_status
from mqd.admin.status import SourceStatus, Status
from mqd.cli.main import cli
from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.preflight import check
from mqd.daemon.root import Daemon
from mqd.errors import ConfigError
from mqd.events import Queued
from mqd.intake.smtpd import users
from mqd.intake.smtpd.data import Reader
from mqd.intake.smtpd.session import Connection, bare_line_ending
from mqd.intake.smtpd.users import Verifier, hash_password, read_users, verify_password
from mqd.plugins.host import PluginHost
from mqd.testing import wait_until
from mqd.tracking.tracker import records_for

MESSAGE = make_message(sender="app@example.com", to=("alice@example.net",), subject="hello")


@pytest.fixture
def smtpd_config(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path, smtp_server: SMTPPeer
) -> Callable[..., Config]:
    """``make(smtpd=...)``: a config relaying to ``smtp_server`` with one [[smtpd]] table (its
    extra lines given) listening on 127.0.0.1, port 0, allowing ``*@example.com``."""

    def make(smtpd: str = "", listen: str = '["127.0.0.1:0"]', extra: str = "") -> Config:
        text = "\n".join(
            [
                textwrap.dedent(extra),
                "[queue]",
                f'dir = "{queue_dir}"',
                'retry = { initial = "1s", max = "2s", lifetime = "1h" }',
                "[[spool]]",
                f'path = "{spool}"',
                'allowed_senders = ["*@example.com"]',
                "[relays.sink]",
                'plugin = "smtp"',
                'host = "127.0.0.1"',
                f"port = {smtp_server.port}",
                'security = "none"',
                "[[smtpd]]",
                f"listen = {listen}",
                'relay = "sink"',
                'allowed_senders = ["*@example.com"]',
                textwrap.dedent(smtpd),
            ]
        )
        return load_config(write_config(text))

    return make


def client(port: int, **kwargs: Any) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10, **kwargs)


async def test_loopback_submission_is_relayed_with_its_smtp_envelope(
    smtpd_config: Callable[..., Config], host: PluginHost, smtp_server: SMTPPeer
) -> None:
    async with running(smtpd_config(), host) as mqd:
        async with client(mqd.port) as smtp:
            await smtp.ehlo()
            extensions = set(smtp.esmtp_extensions)
            assert {"pipelining", "8bitmime", "smtputf8", "size"} <= extensions
            assert "auth" not in extensions  # loopback: a null client's localhost:25
            # The envelope, not the headers: bob is a Bcc the application keeps to itself.
            errors, reply = await smtp.sendmail(
                "app@example.com", ["alice@example.net", "bob@example.net"], MESSAGE
            )
        assert errors == {} and reply.startswith("2.0.0 OK queued as ")
        queue_id = reply.rsplit(" ", 1)[1]
        [received] = await asyncio.to_thread(smtp_server.wait_for, 1)
        assert received.mail_from == "app@example.com"
        assert received.rcpt_tos == ["alice@example.net", "bob@example.net"]
        assert b"X-Sender" not in received.data and b"X-Receiver" not in received.data
        assert b"Subject: hello" in received.data
        # This hop's trace field, in front of the message's own (RFC 5321 section 4.4).
        assert re.match(
            rb"Received: from \S+ \(\[127\.0\.0\.1\]\)\r\n\tby \S+ \(mqd\) with ESMTP;",
            received.data,
        )
        [queued] = [e for e in mqd.events if isinstance(e, Queued)]
        assert queued.message_id == queue_id
        assert queued.source == "smtpd[0]" and queued.login is None
        assert (queued.peer or "").startswith("127.0.0.1:")
        [record] = records_for(queued)  # the timeline's queued event names its source
        assert record.detail["source"] == "smtpd[0]" and "login" not in record.detail
        status = mqd.daemon.sources.status()[0]
        assert (status.accepted, status.refused) == (1, 0)


async def test_smtputf8_addresses_and_8bit_content_arrive_as_sent(
    smtpd_config: Callable[..., Config], host: PluginHost, smtp_server: SMTPPeer
) -> None:
    config = smtpd_config()
    async with running(config, host) as mqd, client(mqd.port) as smtp:
        message = make_message(to=("jürgen@example.net",), body="Grüße, 日本語\n")
        await smtp.sendmail(
            "app@example.com", ["jürgen@example.net"], message, mail_options=["SMTPUTF8"]
        )
    [received] = await asyncio.to_thread(smtp_server.wait_for, 1)
    assert received.rcpt_tos == ["jürgen@example.net"]
    assert "Grüße, 日本語".encode() in received.data


async def test_pipelined_commands_are_answered_in_order(
    smtpd_config: Callable[..., Config], host: PluginHost, smtp_server: SMTPPeer
) -> None:
    async with running(smtpd_config(), host) as mqd:
        reader, writer = await asyncio.open_connection("127.0.0.1", mqd.port)
        await reader.readline()
        writer.write(b"EHLO app.test\r\n")
        while not (await reader.readline()).startswith(b"250 "):
            pass
        # One write: MAIL, two RCPTs (one refused) and DATA, as a PIPELINING client sends them.
        writer.write(
            b"MAIL FROM:<app@example.com>\r\nRCPT TO:<a@example.net>\r\n"
            b"RCPT TO:<bad address@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
        )
        replies = [await asyncio.wait_for(reader.readline(), 10) for _ in range(5)]
        assert [r[:3] for r in replies] == [b"250", b"250", b"553", b"250", b"354"]
        writer.write(re.sub(rb"(?<!\r)\n", b"\r\n", MESSAGE) + b".\r\nQUIT\r\n")
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"250 2.0.0")
        writer.close()
    [received] = await asyncio.to_thread(smtp_server.wait_for, 1)
    assert received.rcpt_tos == ["a@example.net", "b@example.net"]


async def test_a_queue_that_cannot_take_the_message_gets_451_and_nothing_is_lost(
    smtpd_config: Callable[..., Config], host: PluginHost, smtp_server: SMTPPeer
) -> None:
    async with running(smtpd_config(), host) as mqd:
        store = mqd.daemon.store
        accept = store.accept

        async def full_disk(batch: Any) -> None:
            raise OSError(28, "No space left on device")

        store.accept = full_disk  # type: ignore[method-assign]
        async with client(mqd.port) as smtp:
            with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
                await smtp.sendmail("app@example.com", ["alice@example.net"], MESSAGE)
            assert deferred.value.code == 451 and deferred.value.message.startswith("4.3.0 ")
            assert "No space left on device" in deferred.value.message
            [fault] = (await mqd.daemon.admin.status()).faults  # said once, shown by mqd status
            assert fault.what == "queueing from the sources"
            store.accept = accept  # type: ignore[method-assign]
            await smtp.sendmail("app@example.com", ["alice@example.net"], MESSAGE)  # the retry
        await asyncio.to_thread(smtp_server.wait_for, 1)
        assert mqd.daemon.sources.status()[0].refused == 1
        assert (await mqd.daemon.admin.status()).faults == []  # cleared by the retry


async def test_250_only_once_the_message_is_durable(
    smtpd_config: Callable[..., Config],
    host: PluginHost,
    queue_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order: list[str] = []
    push = Connection.push

    async def recording_push(self: Connection, status: Any) -> None:
        if str(status).startswith("250 2.0.0"):
            order.append("250")
        await push(self, status)

    monkeypatch.setattr(Connection, "push", recording_push)
    async with running(smtpd_config(), host) as mqd:
        store = mqd.daemon.store
        accept = store.accept
        entered, release = asyncio.Event(), asyncio.Event()

        async def held_accept(batch: Any) -> Any:
            entered.set()
            await release.wait()
            repeats = await accept(batch)
            order.append("durable")
            return repeats

        store.accept = held_accept  # type: ignore[method-assign]
        async with client(mqd.port) as smtp:
            sending = asyncio.create_task(
                smtp.sendmail("app@example.com", ["alice@example.net"], MESSAGE)
            )
            await asyncio.wait_for(entered.wait(), 10)
            assert order == []  # the store has it in hand: no answer yet
            release.set()
            _, reply = await asyncio.wait_for(sending, 10)
        assert order == ["durable", "250"]
        queue_id = reply.rsplit(" ", 1)[1]
        bodies = list((queue_dir / "messages").glob(f"*/{queue_id}.eml"))
        assert len(bodies) == 1 and bodies[0].parent.name == "smtpd.0"
        assert bodies[0].read_bytes().startswith(b"X-Sender: <app@example.com>\r\n")


async def test_concurrent_submissions_share_a_batch(
    smtpd_config: Callable[..., Config], host: PluginHost, smtp_server: SMTPPeer
) -> None:
    async with running(smtpd_config(), host) as mqd:
        store = mqd.daemon.store
        accept = store.accept
        batches: list[int] = []
        gate = asyncio.Event()

        async def counting_accept(batch: Any) -> Any:
            batches.append(len(batch))
            await gate.wait()
            return await accept(batch)

        store.accept = counting_accept  # type: ignore[method-assign]

        async def send(n: int) -> None:
            async with client(mqd.port) as smtp:
                await smtp.sendmail("app@example.com", [f"r{n}@example.net"], MESSAGE)

        sends = [asyncio.create_task(send(n)) for n in range(8)]
        [listener] = mqd.daemon.sources.sources[0].listeners  # type: ignore[attr-defined]
        # The first batch is held by the store; the other seven arrive meanwhile.
        await wait_until(lambda: listener.handing_over == 8, "eight hand-overs under way")
        gate.set()
        await asyncio.wait_for(asyncio.gather(*sends), 20)
        assert sum(batches) == 8 and len(batches) < 8
        await asyncio.to_thread(smtp_server.wait_for, 8)


async def test_a_sender_not_allowed_gets_550_5_7_1_at_mail_from(
    smtpd_config: Callable[..., Config], host: PluginHost, smtp_server: SMTPPeer
) -> None:
    async with running(smtpd_config(), host) as mqd:
        async with client(mqd.port) as smtp:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                await smtp.sendmail("mallory@evil.test", ["alice@example.net"], MESSAGE)
            assert refused.value.code == 550
            assert refused.value.message.startswith("5.7.1 ")
            assert "mallory@evil.test" in refused.value.message
            # The From header is checked with the message: what recipients see.
            forged = make_message(sender="ceo@evil.test", to=("alice@example.net",))
            with pytest.raises(aiosmtplib.SMTPDataError) as data_refused:
                await smtp.sendmail("app@example.com", ["alice@example.net"], forged)
            assert data_refused.value.code == 550
            assert data_refused.value.message.startswith("5.7.1 ")
        status = mqd.daemon.sources.status()[0]
        assert (status.accepted, status.refused) == (0, 2)
    assert smtp_server.messages == []


async def test_too_large_too_many_recipients_and_long_lines_get_precise_answers(
    smtpd_config: Callable[..., Config], host: PluginHost
) -> None:
    config = smtpd_config('max_message_size = "2KiB"\nmax_recipients = 2')
    async with running(config, host) as mqd, client(mqd.port) as smtp:
        await smtp.ehlo()
        assert smtp.esmtp_extensions["size"] == "2048"
        big = make_message(body="x" * 70 + "\r\n" * 40 + "y" * 70 * 40)
        with pytest.raises(aiosmtplib.SMTPResponseException) as too_big:
            await smtp.sendmail("app@example.com", ["alice@example.net"], big)
        assert too_big.value.code == 552 and too_big.value.message.startswith("5.3.4 ")
        await smtp.rset()
        await smtp.mail("app@example.com")
        await smtp.rcpt("a@example.net")
        await smtp.rcpt("b@example.net")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as too_many:
            await smtp.rcpt("c@example.net")
        assert too_many.value.code == 452 and too_many.value.message.startswith("4.5.3 ")
        await smtp.rset()
        long_line = make_message(body="z" * 1200)
        with pytest.raises(aiosmtplib.SMTPDataError) as too_long:
            await smtp.sendmail("app@example.com", ["alice@example.net"], long_line)
        assert too_long.value.code == 500 and too_long.value.message.startswith("5.5.2 ")


#: Known SMTP smuggling sequences: an end of data other than CRLF.CRLF, then a second message.
SMUGGLING = [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n\x00.\r\n"]


@pytest.mark.parametrize("mode", ["normalize", "refuse"])
@pytest.mark.parametrize("fake_end", SMUGGLING, ids=repr)
async def test_smuggling_sequences_cannot_split_a_message(
    smtpd_config: Callable[..., Config],
    host: PluginHost,
    smtp_server: SMTPPeer,
    fake_end: bytes,
    mode: str,
) -> None:
    async with running(smtpd_config(f'bare_line_endings = "{mode}"'), host) as mqd:
        reader, writer = await asyncio.open_connection("127.0.0.1", mqd.port)

        async def reply() -> bytes:
            lines = [await asyncio.wait_for(reader.readline(), 10)]
            while lines[-1][3:4] == b"-":
                lines.append(await asyncio.wait_for(reader.readline(), 10))
            return lines[-1]

        assert (await reply()).startswith(b"220")
        envelope = (b"EHLO app.test", b"MAIL FROM:<app@example.com>", b"RCPT TO:<a@example.net>")
        for command in envelope:
            writer.write(command + b"\r\n")
            assert (await reply()).startswith(b"250"), command
        clean = re.sub(rb"(?<!\r)\n", b"\r\n", MESSAGE)
        writer.write(b"DATA\r\n")
        assert (await reply()).startswith(b"354")
        writer.write(clean + b".\r\n")  # the control: the same message, ended as it must be
        assert (await reply()).startswith(b"250 2.0.0")
        for command in (b"MAIL FROM:<app@example.com>", b"RCPT TO:<a@example.net>"):
            writer.write(command + b"\r\n")
            assert (await reply()).startswith(b"250"), command
        writer.write(b"DATA\r\n")
        assert (await reply()).startswith(b"354")
        smuggled = (
            b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
            b"From: ceo@example.com\r\nTo: victim@example.net\r\nSubject: smuggled\r\n\r\npay\r\n"
        )
        writer.write(clean.rstrip(b"\r\n") + fake_end + smuggled + b".\r\n")
        answer = await reply()
        writer.write(b"QUIT\r\n")
        await reply()
        writer.close()
        await writer.wait_closed()
        if mode == "refuse" or b"\x00" in fake_end:
            assert answer.startswith(b"554 5.6.0"), answer
            expected = 1
        else:  # one message, its line endings made CRLF, the fake end a line of its own
            assert answer.startswith(b"250 2.0.0"), answer
            expected = 2
        assert mqd.daemon.sources.status()[0].accepted == expected

        async def delivered() -> bool:
            return (await mqd.daemon.store.counts()).total == 0

        await wait_until(delivered, "the queue empty: every relay session ended")
    received = await asyncio.to_thread(smtp_server.wait_for, expected)
    assert len(received) == expected
    assert all(message.rcpt_tos == ["a@example.net"] for message in received)
    assert ("MAIL", "ceo@example.com") not in smtp_server.commands  # the relay did not split it
    if expected == 2:
        assert b"\r\n..\r\n" not in received[1].data  # (the sink took the relay's stuffing off)
        assert b"MAIL FROM:<ceo@example.com>\r\n" in received[1].data  # text, not a command
        assert not bare_line_ending(received[1].data)


async def test_an_address_in_use_is_a_config_error_naming_listen(
    smtpd_config: Callable[..., Config], host: PluginHost
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = Daemon(smtpd_config(listen=f'["127.0.0.1:{port}"]'), host=host)
        with pytest.raises(ConfigError, match="the port is in use") as refused:
            await asyncio.wait_for(daemon.run(), 15)
    assert refused.value.key == "smtpd[0].listen"


def test_mqd_smtpd_passwd_prints_a_users_file_line() -> None:
    result = CliRunner().invoke(cli, ["smtpd", "passwd", "billing"], input="s3cret\n")
    assert result.exit_code == 0, result.output
    name, hashed = result.output.strip().split(":", 1)
    assert name == "billing" and verify_password("s3cret", hashed)
    assert CliRunner().invoke(cli, ["smtpd", "passwd", "a:b"], input="x\n").exit_code == 2


async def test_one_connection_more_than_max_connections_gets_421(
    smtpd_config: Callable[..., Config], host: PluginHost
) -> None:
    async with running(smtpd_config("max_connections = 1"), host) as mqd:
        async with client(mqd.port) as first:
            second = client(mqd.port)
            with pytest.raises(aiosmtplib.SMTPConnectResponseError) as turned_away:
                await second.connect()
            assert turned_away.value.code == 421
            assert mqd.daemon.sources.status()[0].connections == 1
            await first.noop()
        async with client(mqd.port) as again:  # its place is free again
            await again.noop()


async def test_the_ehlo_reply_is_one_reply_of_many_lines(
    smtpd_config: Callable[..., Config], host: PluginHost
) -> None:
    config = smtpd_config('hostname = "mx.example"\nmax_message_size = "2KiB"')
    async with running(config, host) as mqd:
        reader, writer = await asyncio.open_connection("127.0.0.1", mqd.port)
        assert (await reader.readline()).startswith(b"220")
        writer.write(b"EHLO client.example\r\n")
        lines = [await reader.readline()]
        while lines[-1].startswith(b"250-"):
            lines.append(await reader.readline())
        assert lines == [
            b"250-mx.example\r\n",
            b"250-SIZE 2048\r\n",
            b"250-8BITMIME\r\n",
            b"250-SMTPUTF8\r\n",
            b"250-PIPELINING\r\n",
            b"250 HELP\r\n",
        ]
        writer.write(b"NOOP\r\n")  # nothing more was written
        assert await reader.readline() == b"250 OK\r\n"
        writer.close()


async def test_an_idle_client_is_disconnected(
    smtpd_config: Callable[..., Config], host: PluginHost
) -> None:
    async with running(smtpd_config('idle_timeout = "0.3s"'), host) as mqd:
        reader, writer = await asyncio.open_connection("127.0.0.1", mqd.port)
        assert (await reader.readline()).startswith(b"220")
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        writer.close()
        # After commands too (each moves the deadline the timer waits for).
        reader, writer = await asyncio.open_connection("127.0.0.1", mqd.port)
        assert (await reader.readline()).startswith(b"220")
        for _ in range(3):
            writer.write(b"NOOP\r\n")
            assert (await reader.readline()).startswith(b"250")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()


async def test_stop_answers_the_hand_over_under_way_then_closes(
    smtpd_config: Callable[..., Config], host: PluginHost
) -> None:
    config = smtpd_config()
    daemon = Daemon(config, host=host, shutdown_timeout=5)
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 10)
    [address] = daemon.sources.sources[0].status().listening
    port = int(address.rsplit(":", 1)[1])
    accept = daemon.store.accept
    entered, release = asyncio.Event(), asyncio.Event()

    async def held_accept(batch: Any) -> Any:
        entered.set()
        await release.wait()
        return await accept(batch)

    daemon.store.accept = held_accept  # type: ignore[method-assign]
    [listener] = daemon.sources.sources[0].listeners  # type: ignore[attr-defined]
    async with client(port) as smtp:
        sending = asyncio.create_task(smtp.sendmail("app@example.com", ["a@example.net"], MESSAGE))
        await asyncio.wait_for(entered.wait(), 10)
        daemon.request_stop()
        await wait_until(
            lambda: listener.server is None or not listener.server.is_serving(), "closed"
        )
        release.set()  # the store takes it only now: the stop waited for it
        _, reply = await asyncio.wait_for(sending, 10)
        assert reply.startswith("2.0.0 OK queued as "), reply
    await asyncio.wait_for(task, 15)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_status_and_metrics_show_each_source(
    smtpd_config: Callable[..., Config], host: PluginHost
) -> None:
    config = smtpd_config(extra="[metrics]\nenabled = true\nport = 0\n")
    async with running(config, host) as mqd:
        async with client(mqd.port) as smtp:
            await smtp.sendmail("app@example.com", ["alice@example.net"], MESSAGE)
            with pytest.raises(aiosmtplib.SMTPSenderRefused):
                await smtp.sendmail("mallory@evil.test", ["alice@example.net"], MESSAGE)
            status = await mqd.daemon.admin.status()
            [source] = status.sources
            assert source == SourceStatus(
                name="smtpd[0]",
                kind="smtpd",
                listening=[f"127.0.0.1:{mqd.port}"],
                connections=1,
                accepted=1,
                refused=1,
            )
            # The JSON form (mqd status --json, /api/v1/status) and back, and the text.
            assert Status.from_dict(status.to_dict()) == status
            text = "\n".join(render_status(status.to_dict()))
            assert f"smtpd[0]: 127.0.0.1:{mqd.port}; 1 connected, 1 accepted, 1 refused" in text
            assert mqd.daemon.metrics is not None
            scrape = (await mqd.daemon.servers.metrics.render()).decode()  # type: ignore[union-attr]
        assert 'mqd_source_messages_total{outcome="accepted",source="smtpd[0]"} 1.0' in scrape
        assert 'mqd_source_messages_total{outcome="refused",source="smtpd[0]"} 1.0' in scrape
        assert 'mqd_source_connections{source="smtpd[0]"} 1.0' in scrape


async def test_reload_keeps_the_listener_and_applies_the_new_table(
    smtpd_config: Callable[..., Config], host: PluginHost
) -> None:
    with socket.socket() as probe:  # a free port, named in the file so that it stays the same
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = smtpd_config(listen=f'["127.0.0.1:{port}"]')
    async with running(config, host) as mqd:
        async with client(port) as smtp:
            await smtp.sendmail("app@example.com", ["a@example.net", "b@example.net"], MESSAGE)
            assert config.source is not None
            config.source.write_text(config.source.read_text() + "max_recipients = 1\n")
            summary = await mqd.daemon.reload()
            assert "sources smtpd[0]" in summary
            # The connection open across the reload goes on, under the new table.
            await smtp.mail("app@example.com")
            await smtp.rcpt("a@example.net")
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as too_many:
                await smtp.rcpt("b@example.net")
            assert too_many.value.code == 452
        assert mqd.port == port
        assert mqd.daemon.sources.status()[0].accepted == 1  # counted on


async def test_a_body_without_state_is_rebuilt_with_its_smtp_envelope(
    smtpd_config: Callable[..., Config], host: PluginHost, smtp_server: SMTPPeer
) -> None:
    """Accepted, then the daemon stopped before any attempt (the relay paused): the next daemon
    rebuilds the entry from the body, with the envelope given over SMTP, not the headers."""
    config = smtpd_config()
    async with running(config, host) as mqd:

        async def no_lease(*args: object, **kwargs: object) -> list[object]:
            await asyncio.sleep(0.01)  # sleep-ok: a store with nothing due, as a poll would find
            return []

        mqd.daemon.store.lease = no_lease  # type: ignore[method-assign]  # (never delivers)
        async with client(mqd.port) as smtp:
            await smtp.sendmail("app@example.com", ["hidden@example.net"], MESSAGE)
    assert smtp_server.messages == []
    async with running(config, host):
        [received] = await asyncio.to_thread(smtp_server.wait_for, 1)
    assert received.mail_from == "app@example.com"
    assert received.rcpt_tos == ["hidden@example.net"]  # not the To header's alice


# -- AUTH and TLS on an address other than loopback --------------------------------------------


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtpd-users"
    path.write_text(
        "# logins\n"
        f"shop:{hash_password('shop-secret')}\n"
        f"billing:{hash_password('billing-secret')}:billing@example.com\n"
    )
    return path


def _setup(value: Any, owner: Connection) -> Any:
    """What of a connection's attribute says how it is set up (not which objects it holds)."""
    if isinstance(value, types.MethodType):
        return (
            "bound",
            value.__func__,
            "itself" if value.__self__ is owner else type(value.__self__),
        )
    if isinstance(value, dict):
        return {key: _setup(item, owner) for key, item in value.items()}
    if isinstance(value, tuple):
        return (type(value), *(_setup(item, owner) for item in value))
    if value is owner:
        return "itself"
    if isinstance(value, (int, str, float, type(None), list, ssl.SSLContext)):
        return value
    if isinstance(value, asyncio.StreamReader):
        return asyncio.StreamReader  # (a copy's: a data.Reader)
    return type(value)  # (futures, streams, the handler, the loop ...)


@pytest.mark.parametrize("logins", [False, True])
async def test_connections_copied_from_a_model_are_set_up_as_aiosmtpd_sets_one_up(
    smtpd_config: Callable[..., Config],
    host: PluginHost,
    users_file: Path,
    tls_files: tuple[Path, Path],
    logins: bool,
) -> None:
    cert, key = tls_files
    config = (
        smtpd_config(
            f'tls = "starttls"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
            f'users_file = "{users_file}"',
            listen='["0.0.0.0:0"]',
        )
        if logins
        else smtpd_config()
    )
    [listener] = Daemon(config, host=host).sources.sources[0].listeners  # type: ignore[attr-defined]
    full = listener._new_connection()  # by aiosmtpd's __init__
    first, second = listener._connection(), listener._connection()
    expected = {name: _setup(value, full) for name, value in vars(full).items()}
    for copy in (first, second):
        assert {name: _setup(value, copy) for name, value in vars(copy).items()} == expected
    assert first._closed is not second._closed and first._strong_reader is not second._strong_reader
    assert isinstance(first._strong_reader, Reader)
    assert first._strong_reader._limit == full._strong_reader._limit  # lines: aiosmtpd's limit
    assert first._smtp_methods["DATA"].__self__ is first
    assert first._auth_methods["LOGIN"].method.__self__ is first
    assert (first._authenticator is not None) is logins


def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_an_address_other_than_loopback_needs_logins_and_tls(
    smtpd_config: Callable[..., Config], host: PluginHost, users_file: Path
) -> None:
    with pytest.raises(ConfigError, match=r"users_file.*is required"):
        Daemon(smtpd_config(listen='["0.0.0.0:0"]'), host=host)
    with pytest.raises(ConfigError, match='"starttls" or "implicit" is required'):
        Daemon(smtpd_config(f'users_file = "{users_file}"', listen='["0.0.0.0:0"]'), host=host)


def test_a_misspelt_key_is_named_by_the_daemon_and_config_check(
    smtpd_config: Callable[..., Config], host: PluginHost
) -> None:
    config = smtpd_config("max_recipient = 5")
    with pytest.raises(
        ConfigError, match=r"smtpd\[0\]\.max_recipient.*did you mean 'max_recipients'"
    ):
        Daemon(config, host=host)
    assert config.source is not None
    with pytest.raises(ConfigError, match=r"smtpd\[0\]\.max_recipient"):
        check(config.source, host)


async def test_starttls_then_auth_then_the_logins_own_senders(
    smtpd_config: Callable[..., Config],
    host: PluginHost,
    smtp_server: SMTPPeer,
    tls_files: tuple[Path, Path],
    users_file: Path,
    ca: trustme.CA,
) -> None:
    cert, key = tls_files
    settings = f'tls = "starttls"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    settings += f'users_file = "{users_file}"'
    async with running(smtpd_config(settings, listen='["0.0.0.0:0"]'), host) as mqd:
        async with client(mqd.port, tls_context=client_tls(ca)) as smtp:
            await smtp.ehlo()
            assert "starttls" in smtp.esmtp_extensions and "auth" not in smtp.esmtp_extensions
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as plaintext:
                await smtp.mail("app@example.com")  # nothing before STARTTLS
            assert plaintext.value.code == 530 and plaintext.value.message.startswith("5.7.0")
            await smtp.starttls()
            await smtp.ehlo()
            assert {"plain", "login"} <= set(smtp.server_auth_methods)
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as anonymous:
                await smtp.mail("app@example.com")
            assert anonymous.value.code == 530 and anonymous.value.message.startswith("5.7.0")
            with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                await smtp.login("shop", "wrong")
            await smtp.login("billing", "billing-secret")
            # *@example.com is the table's list; billing's own list narrows it.
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as narrowed:
                await smtp.sendmail("shop@example.com", ["alice@example.net"], MESSAGE)
            assert narrowed.value.code == 550 and "login billing" in narrowed.value.message
            billing = make_message(sender="billing@example.com", subject="invoice")
            await smtp.sendmail("billing@example.com", ["alice@example.net"], billing)
        [received] = await asyncio.to_thread(smtp_server.wait_for, 1)
        assert received.mail_from == "billing@example.com"
        assert b"(mqd) with ESMTPSA;" in received.data
        [queued] = [e for e in mqd.events if isinstance(e, Queued)]
        assert (queued.source, queued.login) == ("smtpd[0]", "billing")
        [record] = records_for(queued)
        assert (record.detail["source"], record.detail["login"]) == ("smtpd[0]", "billing")


async def test_on_loopback_a_login_is_optional_and_brings_its_own_senders(
    smtpd_config: Callable[..., Config], host: PluginHost, users_file: Path
) -> None:
    async with running(smtpd_config(f'users_file = "{users_file}"'), host) as mqd:
        async with client(mqd.port) as anonymous:  # no login needed on loopback
            await anonymous.sendmail("shop@example.com", ["alice@example.net"], MESSAGE)
        async with client(mqd.port) as smtp:
            await smtp.ehlo()
            assert "plain" in smtp.server_auth_methods  # no network crossed: no TLS needed
            await smtp.login("billing", "billing-secret")
            with pytest.raises(aiosmtplib.SMTPSenderRefused):
                await smtp.mail("shop@example.com")
        [queued] = [e for e in mqd.events if isinstance(e, Queued)]  # the anonymous one
        assert queued.login is None


async def test_implicit_tls_offers_auth_from_the_start(
    smtpd_config: Callable[..., Config],
    host: PluginHost,
    smtp_server: SMTPPeer,
    tls_files: tuple[Path, Path],
    users_file: Path,
    ca: trustme.CA,
) -> None:
    cert, key = tls_files
    settings = f'tls = "implicit"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    settings += f'users_file = "{users_file}"'
    async with running(smtpd_config(settings, listen='["0.0.0.0:0"]'), host) as mqd:
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=mqd.port, use_tls=True, tls_context=client_tls(ca)
        )
        async with smtp:
            await smtp.ehlo()
            assert "plain" in smtp.server_auth_methods
            await smtp.login("shop", "shop-secret")
            await smtp.sendmail("shop@example.com", ["alice@example.net"], MESSAGE)
        [received] = await asyncio.to_thread(smtp_server.wait_for, 1)
        assert received.mail_from == "shop@example.com"
        assert b"(mqd) with ESMTPSA;" in received.data  # implicit TLS counts as TLS


def test_a_login_that_matched_is_not_hashed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = hash_password("pw")
    verifier = Verifier()
    calls: list[str] = []
    real = users.verify_password

    def counting(password: str, stored: str) -> bool:
        calls.append(password)
        return real(password, stored)

    monkeypatch.setattr(users, "verify_password", counting)
    assert verifier.verify("pw", hashed) and verifier.verify("pw", hashed)
    assert not verifier.verify("wrong", hashed) and not verifier.verify("wrong", hashed)
    assert calls == ["pw", "wrong", "wrong"]  # a wrong password costs its full check each time


def test_password_hashes_and_the_users_file(tmp_path: Path) -> None:
    hashed = hash_password("correct horse")
    assert hashed.startswith("$scrypt$n=16384,r=8,p=1$")
    assert verify_password("correct horse", hashed)
    assert not verify_password("wrong horse", hashed)
    assert not verify_password("correct horse", "$md5$x$y$z")
    salt = b"0123456789abcdef"
    key = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 1000, 32)
    b64 = lambda data: base64.b64encode(data).decode().rstrip("=")  # noqa: E731
    pbkdf2 = f"$pbkdf2-sha256$1000${b64(salt)}${b64(key)}"
    assert verify_password("pw", pbkdf2) and not verify_password("pw2", pbkdf2)
    path = tmp_path / "users"
    path.write_text(f"a:{hashed}\n\n# comment\nb:{pbkdf2}:*@example.com, x@example.org\n")
    users = read_users(path)
    assert users["b"].allowed_senders == ("*@example.com", "x@example.org")
    assert users["a"].allowed_senders == ()
    for bad, problem in (
        ("nohash\n", "line 1: expected name:hash"),
        ("a:$scrypt$n=1$x$y\n", "line 1 (a): the hash cannot be read"),
        (f"a:{hashed}\na:{hashed}\n", "line 2: the login 'a' is given twice"),
        (f"a:{hashed}:not an address\n", "line 1 (a)"),
    ):
        path.write_text(bad)
        with pytest.raises(ValueError, match=re.escape(problem)):
            read_users(path)
