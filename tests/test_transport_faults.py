"""Transport faults at every SMTP stage, through the real SMTP relay and real sockets: a 421 or
4xx anywhere defers, a 5xx where it concerns the message bounces, stalls hit the timeouts, cut
connections are retried, bad certificates defer with a message that names the fix, and one stalled
server never holds up delivery through another relay.

Per-command refusals through aiosmtpd (RCPT 4xx/5xx, MAIL 5xx, end of data, SIZE, STARTTLS
missing, a refused login) are in test_smtp_relay.py; OAuth2 failures in test_oauth2.py.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from corehelpers import USERS, drop
from faultsmtp import DROP, STALL, CuttingProxy, FaultSMTP
from smtpserver import SMTPPeer

from mqd.config.load import load_config
from mqd.config.options import Options
from mqd.daemon.root import Daemon
from mqd.errors import PermanentRelayError, TransientRelayError
from mqd.message.envelope import Envelope
from mqd.plugins.host import PluginHost
from mqd.relays.base import DeliveryResult
from mqd.relays.smtp.relay import SMTPRelay
from mqd.testing import wait_until

MESSAGE = b"From: app@example.com\r\nTo: a@example.net\r\nSubject: t\r\n\r\n" + b"line\r\n" * 200
ENVELOPE = Envelope("app@example.com", ("a@example.net", "b@example.net"), MESSAGE, "faulttest")


def relay(port: int, **options: object) -> SMTPRelay:
    table = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "connect_timeout": "2s",
        "command_timeout": "1s",
        "data_timeout": "1s",
        **options,
    }
    return SMTPRelay.from_options("r", Options(table, section="relays.r", path=None))


@pytest.fixture
def fault() -> Iterator[Callable[..., FaultSMTP]]:
    servers: list[FaultSMTP] = []

    def make(**replies: str) -> FaultSMTP:
        server = FaultSMTP(
            {k.replace("_", ":", 1) if k.startswith("rcpt_") else k: v for k, v in replies.items()}
        ).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


async def outcome(server_port: int, **options: object) -> DeliveryResult | Exception:
    r = relay(server_port, **options)
    try:
        return await r.deliver(ENVELOPE)
    except (TransientRelayError, PermanentRelayError) as exc:
        return exc
    finally:
        await r.aclose()


def codes(result: DeliveryResult | Exception) -> dict[str, int]:
    assert isinstance(result, DeliveryResult), result
    return {a: r.code for a, r in result.replies.items()}


@pytest.mark.parametrize("stage", ["greeting", "ehlo", "mail", "rcpt", "data", "end"])
async def test_421_at_any_stage_defers(stage: str, fault) -> None:
    server = fault(**{stage: "421 4.3.2 service shutting down"})
    result = await outcome(server.port)
    if isinstance(result, Exception):
        assert isinstance(result, TransientRelayError), result
    else:
        assert set(codes(result).values()) == {421}
    assert server.delivered == []


@pytest.mark.parametrize(
    ("stage", "reply", "expected"),
    [
        ("mail", "451 4.3.0 try later", 451),
        ("mail", "550 5.7.1 sender rejected", 550),
        ("data", "451 4.3.0 no data now", 451),
        ("data", "554 5.3.0 no data for you", 554),
        ("end", "452 4.3.1 insufficient storage", 452),
        ("end", "552 5.3.4 too big", 552),
    ],
)
async def test_4xx_and_5xx_apply_to_every_recipient(stage, reply, expected, fault) -> None:
    server = fault(**{stage: reply})
    assert set(codes(await outcome(server.port)).values()) == {expected}


async def test_partial_recipients_each_get_their_own_answer(fault) -> None:
    server = fault(**{"rcpt_b@example.net": "550 5.1.1 no such user"})
    assert codes(await outcome(server.port)) == {"a@example.net": 250, "b@example.net": 550}
    assert len(server.delivered) == 1


@pytest.mark.parametrize("stage", ["greeting", "ehlo", "mail", "rcpt", "data", "end"])
async def test_a_stall_at_any_stage_times_out_and_defers(stage: str, fault) -> None:
    server = fault(**{stage: STALL})
    result = await outcome(server.port)
    assert isinstance(result, TransientRelayError), result
    assert server.delivered == []


@pytest.mark.parametrize("stage", ["greeting", "mail", "mid-data", "end"])
async def test_a_dropped_connection_defers(stage: str, fault) -> None:
    server = fault(**{stage: DROP})
    result = await outcome(server.port)
    assert isinstance(result, TransientRelayError), result


async def test_slow_answers_within_the_timeouts_still_deliver() -> None:
    server = FaultSMTP(delay=0.3).start()
    try:
        assert set(codes(await outcome(server.port)).values()) == {250}
    finally:
        server.stop()


async def test_a_connection_cut_after_n_bytes_defers_and_a_whole_one_delivers(fault) -> None:
    server = fault()
    cutting = CuttingProxy(server.port, cut_after=400).start()
    slow = CuttingProxy(server.port, delay=0.05).start()
    try:
        assert isinstance(await outcome(cutting.port), TransientRelayError)
        assert cutting.cuts == 1 and server.delivered == []
        assert set(codes(await outcome(slow.port)).values()) == {250}
        assert len(server.delivered) == 1
    finally:
        cutting.stop()
        slow.stop()


@pytest.fixture(params=["wrong-host", "expired", "self-signed"])
def bad_cert_server(request, ca: trustme.CA) -> Iterator[SMTPPeer]:  # type: ignore[no-untyped-def]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    now = datetime.datetime.now(datetime.UTC)
    if request.param == "wrong-host":
        ca.issue_cert("wrong.test").configure_cert(context)
    elif request.param == "expired":
        ca.issue_cert(
            "127.0.0.1",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        ).configure_cert(context)
    else:
        trustme.CA().issue_cert("127.0.0.1").configure_cert(context)  # a CA nobody trusts
    peer = SMTPPeer(tls_context=context, require_starttls=True, users=USERS).start()
    yield peer
    peer.stop()


async def test_a_bad_certificate_defers_names_the_fix_and_sends_no_password(
    bad_cert_server: SMTPPeer, ca_file: Path
) -> None:
    result = await outcome(
        bad_cert_server.port,
        security="starttls",
        tls_ca_file=str(ca_file),
        username="relay-user",
        password="s3cret-pass",
    )
    assert isinstance(result, TransientRelayError), result
    assert "certificate" in str(result) and "tls_ca_file" in str(result)
    assert bad_cert_server.messages == []


async def test_one_stalled_server_does_not_hold_up_another_relay(
    write_config, tmp_path: Path, queue_dir: Path, smtp_server: SMTPPeer, fault
) -> None:
    stalled = fault(greeting=STALL)
    slow_spool, fast_spool = tmp_path / "slow", tmp_path / "fast"
    config = load_config(
        write_config(
            f"""
            [queue]
            dir = "{queue_dir}"
            concurrency = 6
            [[spool]]
            path = "{slow_spool}"
            relay = "stalled"
            allowed_senders = ["app@example.com"]
            [[spool]]
            path = "{fast_spool}"
            relay = "healthy"
            allowed_senders = ["app@example.com"]
            [relays.stalled]
            plugin = "smtp"
            host = "127.0.0.1"
            port = {stalled.port}
            security = "none"
            connect_timeout = "1m"
            [relays.healthy]
            plugin = "smtp"
            host = "127.0.0.1"
            port = {smtp_server.port}
            security = "none"
            """
        )
    )
    daemon = Daemon(config, host=PluginHost(entry_points=False), shutdown_timeout=1)
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 10)
    try:
        for n in range(3):
            drop(slow_spool, to=(f"slow{n}@example.net",))
        stuck = await wait_until(
            lambda: daemon.in_flight if len(daemon.in_flight) == 3 else None,
            "three deliveries stuck on the stalled relay",
            10,
        )
        for n in range(3):
            drop(fast_spool, to=(f"fast{n}@example.net",))
        await asyncio.to_thread(smtp_server.wait_for, 3, 10)
        # Delivered while the stalled relay's three were still waiting for a greeting.
        assert stuck <= daemon.in_flight
    finally:
        daemon.request_stop()
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
