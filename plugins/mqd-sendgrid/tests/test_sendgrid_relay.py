"""The relay against a real HTTP server speaking SendGrid's contract: every class of answer,
timeouts, refused connections, and the once-per-message warning."""

from __future__ import annotations

import logging
import socket
import time
from email.utils import formatdate

import httpx
import pytest
from conftest import MakeRelay
from mqd import Outcome, PermanentRelayError, RelayError, TransientRelayError
from mqd.message.classify import classify_reply
from mqd.testing import make_envelope, make_message
from sendgrid_fake import FakeSendGrid

from mqd_sendgrid import SendGridRelay

SIGNED = (
    b"From: app@example.com\r\nTo: rcpt@example.net\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/signed; protocol="application/pgp-signature"; boundary="s"\r\n\r\n'
    b"--s\r\nContent-Type: text/plain\r\n\r\nx\r\n--s\r\n"
    b"Content-Type: application/pgp-signature\r\n\r\nsig\r\n--s--\r\n"
)


async def failure(make_relay: MakeRelay, **keys: object) -> RelayError:
    relay = make_relay(**keys)
    with pytest.raises(RelayError) as caught:
        await relay.deliver(make_envelope(id="q0001"))
    return caught.value


def client_of(relay: SendGridRelay) -> httpx.AsyncClient | None:
    return relay._client


def outcome(error: RelayError) -> Outcome:
    assert error.reply is not None
    return classify_reply(error.reply)


# -- delivered ------------------------------------------------------------------------------------


async def test_accepted_message_is_delivered_to_every_recipient(
    fake: FakeSendGrid, make_relay: MakeRelay
) -> None:
    relay = make_relay()
    rcpts = ("ann@example.net", "bob@example.net")
    result = await relay.deliver(make_envelope(make_message(to=rcpts), recipients=rcpts))
    assert set(result.replies) == set(rcpts)
    for reply in result.replies.values():
        assert (reply.code, reply.enhanced) == (250, "2.0.0")
        assert classify_reply(reply) is Outcome.DELIVERED
    [request] = fake.requests
    assert request.status == 202
    assert request.headers["Authorization"] == "Bearer SG.test-key.0123456789"
    assert request.headers["User-Agent"].startswith("mqd-sendgrid/")
    assert result.provider_id is not None and result.provider_id in str(result.replies[rcpts[0]])
    assert result.remote == "127.0.0.1"
    body = request.json
    assert body["custom_args"] == {"mqd_id": "0000000000test"}
    assert [a["email"] for a in body["personalizations"][0]["to"]] == list(rcpts)


async def test_provider_id_is_the_x_message_id_header(
    fake: FakeSendGrid, make_relay: MakeRelay
) -> None:
    fake.answer(202, X_Message_Id="abc123DEF")
    result = await make_relay().deliver(make_envelope())
    assert result.provider_id == "abc123DEF"


async def test_config_fields_are_sent_with_every_message(
    fake: FakeSendGrid, make_relay: MakeRelay
) -> None:
    relay = make_relay(
        categories=["transactional", "web"],
        ip_pool="transactional",
        click_tracking=False,
        open_tracking=True,
    )
    await relay.deliver(make_envelope())
    body = fake.sent[0]
    assert body["categories"] == ["transactional", "web"]
    assert body["ip_pool_name"] == "transactional"
    assert body["tracking_settings"] == {
        "click_tracking": {"enable": False},
        "open_tracking": {"enable": True},
    }
    assert "mail_settings" not in body


async def test_sandbox_mode_is_asked_for_and_its_200_counts_as_delivered(
    fake: FakeSendGrid, make_relay: MakeRelay
) -> None:
    relay = make_relay(sandbox_mode=True)
    result = await relay.deliver(make_envelope())
    assert fake.requests[0].json["mail_settings"] == {"sandbox_mode": {"enable": True}}
    assert fake.requests[0].status == 200
    reply = result.replies["rcpt@example.net"]
    assert reply.code == 250 and "sandbox" in reply.message
    assert "sandbox" in relay.describe()


async def test_one_client_is_reused_and_aclose_releases_it(
    fake: FakeSendGrid, make_relay: MakeRelay
) -> None:
    relay = make_relay()
    assert client_of(relay) is None, "nothing is connected before the first delivery"
    await relay.deliver(make_envelope(id="a"))
    client = client_of(relay)
    await relay.deliver(make_envelope(id="b"))
    assert client is not None and client_of(relay) is client
    await relay.aclose()
    assert client_of(relay) is None and client.is_closed
    await relay.deliver(make_envelope(id="c"))  # a closed relay reconnects when used again
    assert len(fake.sent) == 3


# -- transient ------------------------------------------------------------------------------------


async def test_429_is_transient_with_retry_after_seconds(
    fake: FakeSendGrid, make_relay: MakeRelay
) -> None:
    fake.answer(
        429, {"errors": [{"field": None, "message": "too many requests"}]}, Retry_After="120"
    )
    error = await failure(make_relay)
    assert isinstance(error, TransientRelayError)
    assert error.retry_after == 120
    assert error.reply is not None and (error.reply.code, error.reply.enhanced) == (451, "4.7.0")
    assert "too many requests" in error.reply.message
    assert outcome(error) is Outcome.TRANSIENT


async def test_429_retry_after_as_an_http_date(fake: FakeSendGrid, make_relay: MakeRelay) -> None:
    fake.answer(429, Retry_After=formatdate(time.time() + 300, usegmt=True))
    error = await failure(make_relay)
    assert error.retry_after is not None and 250 < error.retry_after <= 301


async def test_429_without_retry_after_uses_the_rate_limit_reset(
    fake: FakeSendGrid, make_relay: MakeRelay
) -> None:
    fake.answer(429, X_RateLimit_Reset=str(int(time.time()) + 600))
    error = await failure(make_relay)
    assert error.retry_after is not None and 550 < error.retry_after <= 601


async def test_429_with_a_huge_retry_after_is_capped_at_a_day(
    fake: FakeSendGrid, make_relay: MakeRelay
) -> None:
    fake.answer(429, Retry_After="99999999")
    assert (await failure(make_relay)).retry_after == 86400


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_transient(
    fake: FakeSendGrid, make_relay: MakeRelay, status: int
) -> None:
    fake.answer(status, "upstream trouble", Retry_After="30")
    error = await failure(make_relay)
    assert isinstance(error, TransientRelayError)
    assert error.retry_after == 30
    assert error.reply is not None and str(status) in error.reply.message
    assert "upstream trouble" in error.reply.message
    assert outcome(error) is Outcome.TRANSIENT


async def test_wrong_api_key_defers_and_logs_an_error(
    fake: FakeSendGrid, make_relay: MakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    fake.api_key = "SG.another-key"
    with caplog.at_level(logging.ERROR, logger="mqd.relay.sendgrid"):
        error = await failure(make_relay)
    assert isinstance(error, TransientRelayError), "never bounce mail for the operator's key"
    assert outcome(error) is Outcome.TRANSIENT
    assert error.reply is not None and "401" in error.reply.message
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "api_key_file" in record.getMessage() and "authorization grant" in record.getMessage()


async def test_forbidden_defers_and_says_what_to_check(
    fake: FakeSendGrid, make_relay: MakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    message = "The from address does not match a verified Sender Identity."
    fake.answer(403, {"errors": [{"field": "from", "message": message}]})
    with caplog.at_level(logging.ERROR, logger="mqd.relay.sendgrid"):
        error = await failure(make_relay)
    assert isinstance(error, TransientRelayError)
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert "Mail Send permission" in logged and "verified Sender Identity" in logged


async def test_wrong_base_url_defers_and_logs_an_error(
    fake: FakeSendGrid, make_relay: MakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="mqd.relay.sendgrid"):
        error = await failure(make_relay, base_url=fake.url + "/not-sendgrid")
    assert isinstance(error, TransientRelayError)
    assert error.reply is not None and error.reply.enhanced == "4.3.5"
    assert any("base_url" in r.getMessage() for r in caplog.records)


async def test_server_that_never_answers_times_out_as_transient(
    fake: FakeSendGrid, make_relay: MakeRelay
) -> None:
    fake.stall = True
    error = await failure(make_relay, timeout="0.3s")
    assert isinstance(error, TransientRelayError)
    assert error.reply is not None and (error.reply.code, error.reply.enhanced) == (451, "4.4.1")
    assert "did not answer" in str(error)
    assert isinstance(error.__cause__, Exception), "chained from httpx's exception"
    assert len(fake.requests) == 1, "the request did arrive"


async def test_refused_connection_is_transient(make_relay: MakeRelay) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = await failure(make_relay, base_url=f"http://127.0.0.1:{port}")
    assert isinstance(error, TransientRelayError)
    assert error.reply is not None and error.reply.enhanced == "4.4.1"
    assert "cannot connect" in str(error) and "base_url" in str(error)


async def test_unexpected_redirect_is_not_followed(
    fake: FakeSendGrid, make_relay: MakeRelay
) -> None:
    fake.answer(301, Location="http://127.0.0.1:1/elsewhere")
    error = await failure(make_relay)
    assert isinstance(error, TransientRelayError)
    assert len(fake.requests) == 1


# -- permanent ------------------------------------------------------------------------------------


async def test_400_is_permanent_with_the_api_error_text(
    fake: FakeSendGrid, make_relay: MakeRelay
) -> None:
    fake.answer(
        400,
        {
            "errors": [
                {
                    "field": "from.email",
                    "message": "does not contain a valid address.",
                    "help": None,
                },
                {"field": None, "message": "Bad Request"},
            ]
        },
    )
    error = await failure(make_relay)
    assert isinstance(error, PermanentRelayError)
    assert error.reply is not None and (error.reply.code, error.reply.enhanced) == (554, "5.6.0")
    assert "from.email: does not contain a valid address.; Bad Request" in error.reply.message
    assert outcome(error) is Outcome.PERMANENT


async def test_413_is_permanent_message_too_large(
    fake: FakeSendGrid, make_relay: MakeRelay
) -> None:
    fake.answer(413, {"errors": [{"message": "payload too large"}]})
    error = await failure(make_relay)
    assert isinstance(error, PermanentRelayError)
    assert error.reply is not None and (error.reply.code, error.reply.enhanced) == (552, "5.3.4")
    assert "payload too large" in error.reply.message


async def test_signed_message_is_refused_without_a_request(
    fake: FakeSendGrid, make_relay: MakeRelay
) -> None:
    relay = make_relay()
    with pytest.raises(PermanentRelayError):
        await relay.deliver(make_envelope(SIGNED))
    assert fake.requests == []


# -- what cannot be carried -----------------------------------------------------------------------


async def test_one_warning_per_message_names_the_queue_id_and_what_is_lost(
    fake: FakeSendGrid, make_relay: MakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    message = make_message(headers={"Sender": "robot@example.com"})
    relay = make_relay()
    with caplog.at_level(logging.WARNING, logger="mqd.relay.sendgrid"):
        await relay.deliver(make_envelope(message, id="0123abcdef"))
        await relay.deliver(make_envelope(message, id="0123abcdef"))  # a retry
        await relay.deliver(make_envelope(message, id="0456abcdef"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("0123abcdef") and "Sender header" in warnings[0]
    assert warnings[1].startswith("0456abcdef")
    assert "Sender" not in fake.sent[0].get("headers", {})


async def test_a_faithful_message_logs_no_warning(
    fake: FakeSendGrid, make_relay: MakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mqd.relay.sendgrid"):
        await make_relay().deliver(make_envelope())
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert len(fake.sent) == 1
