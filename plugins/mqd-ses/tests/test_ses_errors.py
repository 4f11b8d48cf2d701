"""How SES's answers and failures become mqd outcomes: a scripted endpoint for the errors moto
cannot produce, moto for missing credentials, closed ports and slow answers for the network."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
from mqd import PermanentRelayError, RelayError, TransientRelayError
from mqd.testing import make_envelope
from ses_fake import Answer, FakeSES, error, ok
from ses_moto import MotoSES
from ses_support import MakeRelay


@dataclass(frozen=True)
class Case:
    answer: Answer
    permanent: bool
    code: int
    enhanced: str
    retry_after: float | None = None
    #: Text the ERROR log must contain (None: no ERROR expected).
    logged: str | None = None


CASES = {
    "throttled 429": Case(
        error(429, "TooManyRequestsException", "Maximum sending rate exceeded."),
        False,
        451,
        "4.4.5",
    ),
    "limit exceeded": Case(
        error(400, "LimitExceededException", "Daily message quota exceeded."), False, 451, "4.4.5"
    ),
    "throttling (query style)": Case(
        error(400, "Throttling", "Rate exceeded"), False, 451, "4.4.5"
    ),
    "internal failure": Case(error(500, "InternalFailure", "oops"), False, 451, "4.3.0"),
    "unavailable with Retry-After": Case(
        error(503, "ServiceUnavailable", "busy", {"Retry-After": "7"}), False, 451, "4.3.0", 7.0
    ),
    "a proxy's HTML 502": Case(Answer(502, b"<html>Bad Gateway</html>"), False, 451, "4.3.0"),
    "message rejected": Case(
        error(400, "MessageRejected", "Email address is not verified."), True, 554, "5.7.1"
    ),
    "MAIL FROM domain not verified": Case(
        error(400, "MailFromDomainNotVerifiedException", "MAIL FROM domain not verified"),
        True,
        550,
        "5.7.1",
        logged="custom MAIL FROM domain",
    ),
    "bad request": Case(
        error(400, "BadRequestException", "Illegal header 'X'."), True, 554, "5.6.0"
    ),
    "too large for the endpoint": Case(Answer(413, b""), True, 552, "5.3.4"),
    "sending paused": Case(
        error(400, "SendingPausedException", "Sending is paused for this account."),
        False,
        451,
        "4.7.0",
        300.0,
        "resume sending",
    ),
    "account suspended": Case(
        error(400, "AccountSuspendedException", "The account is suspended."),
        False,
        451,
        "4.7.0",
        300.0,
        "AWS Support",
    ),
    "configuration set missing": Case(
        error(404, "NotFoundException", "Configuration set <tx> does not exist."),
        False,
        451,
        "4.3.5",
        60.0,
        "configuration set 'tx'",
    ),
    "access denied": Case(
        error(403, "AccessDeniedException", "not authorized to perform ses:SendEmail"),
        False,
        451,
        "4.7.0",
        60.0,
        "ses:SendRawEmail",
    ),
    "unknown access key": Case(
        error(403, "UnrecognizedClientException", "The security token is invalid."),
        False,
        451,
        "4.7.0",
        60.0,
        "clock",
    ),
    "bad signature": Case(
        error(403, "InvalidSignatureException", "Signature expired"),
        False,
        451,
        "4.7.0",
        60.0,
        "access key id and secret key",
    ),
    "expired token": Case(
        error(
            400, "ExpiredTokenException", "The security token included in the request is expired"
        ),
        False,
        451,
        "4.7.0",
        60.0,
        "renew the session token",
    ),
    "something new": Case(error(418, "TeapotException", "short and stout"), False, 451, "4.3.0"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_ses_answers_map_to_outcomes(
    case: Case,
    fake_ses: FakeSES,
    make_relay: MakeRelay,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_ses.script(case.answer)
    relay = make_relay(fake_ses.endpoint_url, configuration_set="tx")

    with (
        caplog.at_level(logging.WARNING, logger="mqd.relay.ses"),
        pytest.raises(RelayError) as caught,
    ):
        await relay.deliver(make_envelope())

    exc = caught.value
    assert isinstance(exc, PermanentRelayError if case.permanent else TransientRelayError)
    assert exc.reply is not None
    assert (exc.reply.code, exc.reply.enhanced) == (case.code, case.enhanced)
    assert exc.retry_after == case.retry_after
    assert isinstance(exc.__cause__, Exception)  # chained from botocore's exception
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if case.logged is None:
        assert errors == []
    else:
        assert len(errors) == 1
        assert case.logged in errors[0]
        assert case.logged in str(exc)  # the error itself says what to fix, too
    assert len(fake_ses.requests) == 1  # api_attempts = 1: botocore did not retry


async def test_ses_text_reaches_the_reply(fake_ses: FakeSES, make_relay: MakeRelay) -> None:
    fake_ses.script(error(400, "MessageRejected", "Illegal address: <bad@@example.net>"))
    relay = make_relay(fake_ses.endpoint_url)
    with pytest.raises(PermanentRelayError) as caught:
        await relay.deliver(make_envelope())
    assert caught.value.reply is not None
    assert caught.value.reply.message == "MessageRejected: Illegal address: <bad@@example.net>"


async def test_the_request_carries_the_raw_message_base64_through_botocore(
    fake_ses: FakeSES, make_relay: MakeRelay
) -> None:
    fake_ses.script(ok("msg-1"))
    relay = make_relay(fake_ses.endpoint_url)
    envelope = make_envelope()
    result = await relay.deliver(envelope)
    assert result.provider_id == "msg-1"
    [request] = fake_ses.requests
    assert request["Content"]["Raw"]["Data"] == envelope.message


async def test_botocore_retries_a_throttle_once_with_api_attempts_2(
    fake_ses: FakeSES, make_relay: MakeRelay
) -> None:
    fake_ses.script(error(429, "TooManyRequestsException", "slow down"), ok("msg-2"))
    relay = make_relay(fake_ses.endpoint_url, api_attempts=2)
    result = await relay.deliver(make_envelope())
    assert result.replies["rcpt@example.net"].code == 250
    assert len(fake_ses.requests) == 2


async def test_api_attempts_1_leaves_every_retry_to_the_queue(
    fake_ses: FakeSES, make_relay: MakeRelay
) -> None:
    fake_ses.script(error(500, "InternalFailure", "oops"), ok("never"))
    relay = make_relay(fake_ses.endpoint_url, api_attempts=1)
    with pytest.raises(TransientRelayError):
        await relay.deliver(make_envelope())
    assert len(fake_ses.requests) == 1


# -- several calls for one message --------------------------------------------------------------

RECIPIENTS = [f"user{n:03}@example.net" for n in range(120)]


async def test_a_throttle_after_a_sent_call_defers_only_the_rest(
    fake_ses: FakeSES, make_relay: MakeRelay
) -> None:
    fake_ses.script(ok("first"), error(429, "TooManyRequestsException", "slow down"))
    relay = make_relay(fake_ses.endpoint_url)

    result = await relay.deliver(make_envelope(recipients=RECIPIENTS))

    assert {result.replies[r].code for r in RECIPIENTS[:50]} == {250}
    assert {(result.replies[r].code, result.replies[r].enhanced) for r in RECIPIENTS[50:]} == {
        (451, "4.4.5")
    }
    assert result.provider_id == "first"
    assert len(fake_ses.requests) == 2  # the third call was not tried


async def test_a_rejected_call_fails_only_its_own_recipients(
    fake_ses: FakeSES, make_relay: MakeRelay
) -> None:
    fake_ses.script(ok("a"), error(400, "MessageRejected", "recipient not verified"), ok("c"))
    relay = make_relay(fake_ses.endpoint_url)

    result = await relay.deliver(make_envelope(recipients=RECIPIENTS))

    codes = [result.replies[r].code for r in RECIPIENTS]
    assert codes == [250] * 50 + [554] * 50 + [250] * 20
    assert result.provider_id == "a,c"
    assert len(fake_ses.requests) == 3


async def test_a_first_call_failing_fails_the_whole_message(
    fake_ses: FakeSES, make_relay: MakeRelay
) -> None:
    fake_ses.script(error(400, "SendingPausedException", "paused"))
    relay = make_relay(fake_ses.endpoint_url)
    with pytest.raises(TransientRelayError) as caught:
        await relay.deliver(make_envelope(recipients=RECIPIENTS))
    assert caught.value.retry_after == 300.0  # kept: the queue pauses the relay
    assert len(fake_ses.requests) == 1


# -- credentials and the network ----------------------------------------------------------------


async def test_missing_credentials_defer_with_a_clear_text_and_recover(
    moto: MotoSES,
    make_relay: MakeRelay,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    relay = make_relay(moto.endpoint_url)

    with (
        caplog.at_level(logging.ERROR, logger="mqd.relay.ses"),
        pytest.raises(TransientRelayError) as caught,
    ):
        await relay.deliver(make_envelope())

    text = str(caught.value)
    assert "no usable AWS credentials" in text
    assert "AWS_ACCESS_KEY_ID" in text
    assert "instance" in text
    assert caught.value.retry_after == 60.0
    assert caught.value.reply is not None
    assert caught.value.reply.code == 451
    assert any("no usable AWS credentials" in r.getMessage() for r in caplog.records)
    assert moto.requests() == []

    # The operator fixes it: the next attempt looks the credentials up again.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFIXED")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fixed-secret")
    result = await relay.deliver(make_envelope())
    assert result.replies["rcpt@example.net"].code == 250


async def test_a_profile_without_credentials_names_the_profile(
    moto: MotoSES,
    make_relay: MakeRelay,
    monkeypatch: pytest.MonkeyPatch,
    aws_env: Path,
) -> None:
    aws_env.parent.mkdir(parents=True, exist_ok=True)
    aws_env.write_text("[profile mailer]\nregion = us-east-1\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    relay = make_relay(moto.endpoint_url, profile="mailer")
    with pytest.raises(TransientRelayError) as caught:
        await relay.deliver(make_envelope())
    assert "profile 'mailer'" in str(caught.value)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_closed_port_defers(make_relay: MakeRelay) -> None:
    relay = make_relay(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(TransientRelayError) as caught:
        await relay.deliver(make_envelope())
    assert caught.value.reply is not None
    assert (caught.value.reply.code, caught.value.reply.enhanced) == (451, "4.4.1")
    assert "cannot reach SES" in str(caught.value)


async def test_no_answer_in_time_defers(fake_ses: FakeSES, make_relay: MakeRelay) -> None:
    fake_ses.script(Answer(200, b'{"MessageId": "late"}', delay=30.0))
    relay = make_relay(fake_ses.endpoint_url, read_timeout="200ms")
    with pytest.raises(TransientRelayError) as caught:
        await relay.deliver(make_envelope())
    assert caught.value.reply is not None
    assert (caught.value.reply.code, caught.value.reply.enhanced) == (451, "4.4.2")
    assert "read_timeout" in str(caught.value)
