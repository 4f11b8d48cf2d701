"""Delivery through moto's SES server: what SES receives, and what the relay answers."""

from __future__ import annotations

import pytest
from mqd import Envelope, PermanentRelayError
from mqd.testing import make_envelope, make_message
from ses_moto import MotoSES
from ses_support import MakeRelay

from mqd_ses.settings import DEFAULT_MAX_MESSAGE_SIZE

MULTIPART = (
    b"From: App <app@example.com>\r\n"
    b"To: Rcpt <rcpt@example.net>\r\n"
    b"Subject: =?utf-8?q?R=C3=A9sum=C3=A9?=\r\n"
    b"Message-ID: <fixed-1@example.com>\r\n"
    b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
    b"X-Custom:   spaced   value\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe, trailing spaces   \r\n"
    b".leading dot\r\n"
    b"--b1\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>hi</p>\r\n"
    b"--b1--\r\n"
)


async def test_delivers_the_raw_message_untouched_with_envelope_and_tags(
    moto: MotoSES, make_relay: MakeRelay
) -> None:
    relay = make_relay(
        moto.endpoint_url,
        configuration_set="transactional",
        tags={"app": "billing", "env": "test-1"},
    )
    envelope = make_envelope(
        MULTIPART, sender="bounces@example.com", recipients=["rcpt@example.net"], id="18f3a2b4c5d"
    )

    result = await relay.deliver(envelope)

    [sent] = moto.sent()
    assert sent["raw_data"].encode("utf-8") == MULTIPART
    assert "rcpt@example.net" in sent["destinations"]
    assert sent["source"] == "bounces@example.com"
    reply = result.replies["rcpt@example.net"]
    assert (reply.code, reply.enhanced) == (250, "2.0.0")
    assert sent["id"] in reply.message
    assert result.provider_id == sent["id"]
    assert result.remote == "127.0.0.1"

    [request] = moto.requests()
    assert request["Content"]["Raw"]["Data"] == MULTIPART
    assert request["FromEmailAddress"] == "bounces@example.com"
    assert request["Destination"] == {"ToAddresses": ["rcpt@example.net"]}
    assert request["ConfigurationSetName"] == "transactional"
    assert request["EmailTags"] == [
        {"Name": "mqd_id", "Value": "18f3a2b4c5d"},
        {"Name": "app", "Value": "billing"},
        {"Name": "env", "Value": "test-1"},
    ]


async def test_envelope_recipients_missing_from_the_headers_are_sent_to(
    moto: MotoSES, make_relay: MakeRelay
) -> None:
    """A Bcc recipient (mqd removed the header) is in Destination and nowhere in the message."""
    relay = make_relay(moto.endpoint_url)
    message = make_message(to=["visible@example.net"])
    envelope = make_envelope(message, recipients=["visible@example.net", "hidden@example.org"])

    result = await relay.deliver(envelope)

    assert {r: reply.code for r, reply in result.replies.items()} == {
        "visible@example.net": 250,
        "hidden@example.org": 250,
    }
    [request] = moto.requests()
    assert request["Destination"] == {"ToAddresses": ["visible@example.net", "hidden@example.org"]}
    [sent] = moto.sent()
    assert "hidden@example.org" in sent["destinations"]
    assert b"hidden" not in sent["raw_data"].encode()


async def test_an_unverified_sender_is_a_permanent_failure_with_ses_text(
    moto: MotoSES, make_relay: MakeRelay
) -> None:
    relay = make_relay(moto.endpoint_url)
    envelope = make_envelope(sender="app@unverified.example")

    with pytest.raises(PermanentRelayError) as caught:
        await relay.deliver(envelope)

    reply = caught.value.reply
    assert reply is not None
    assert (reply.code, reply.enhanced) == (554, "5.7.1")
    assert reply.message.startswith("MessageRejected: ")
    assert "Did not have authority to send from email app@unverified.example" in reply.message
    assert "relay test" in str(caught.value)
    assert moto.sent() == []


async def test_more_than_50_recipients_are_split_into_calls_of_50(
    moto: MotoSES, make_relay: MakeRelay
) -> None:
    relay = make_relay(moto.endpoint_url)
    recipients = [f"user{n:03}@example.net" for n in range(120)]
    message = make_message(headers={"To": "undisclosed-recipients:;"})
    envelope = make_envelope(message, recipients=recipients)

    result = await relay.deliver(envelope)

    requests = moto.requests()
    assert [r["Destination"]["ToAddresses"] for r in requests] == [
        recipients[:50],
        recipients[50:100],
        recipients[100:],
    ]
    sent = moto.sent()
    assert [s["destinations"] for s in sent] == [
        recipients[:50],
        recipients[50:100],
        recipients[100:],
    ]
    ids = [s["id"] for s in sent]
    assert result.provider_id == ",".join(ids)
    assert set(result.replies) == set(recipients)
    for index, rcpt in enumerate(recipients):
        reply = result.replies[rcpt]
        assert reply.code == 250
        assert ids[index // 50] in reply.message


async def test_a_message_over_the_size_limit_fails_permanently_without_a_call(
    moto: MotoSES, make_relay: MakeRelay
) -> None:
    relay = make_relay(moto.endpoint_url, max_message_size="1KiB")
    envelope = make_envelope(make_message(body="x" * 70 + "\r\n" * 20))
    assert len(envelope.message) <= 1024
    await relay.deliver(envelope)  # fits

    big = make_envelope(make_message(body=("y" * 70 + "\r\n") * 20))
    with pytest.raises(PermanentRelayError) as caught:
        await relay.deliver(big)

    reply = caught.value.reply
    assert reply is not None
    assert (reply.code, reply.enhanced) == (552, "5.3.4")
    assert "1024" in reply.message
    assert len(moto.requests()) == 1  # only the one that fit


async def test_the_default_size_limit_is_ses_v2s_40_mib(make_relay: MakeRelay) -> None:
    relay = make_relay(None)
    assert relay.settings.max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 40 * 1024 * 1024


async def test_the_null_sender_lets_ses_take_the_from_header(
    moto: MotoSES, make_relay: MakeRelay
) -> None:
    """mqd's bounces go out from <>: no FromEmailAddress, SES uses From (a verified identity)."""
    relay = make_relay(moto.endpoint_url)
    bounce = make_message(sender="mailer-daemon@example.com", to=["app@example.org"])
    envelope = Envelope("", ("app@example.org",), bounce, "0000000000bnc")

    result = await relay.deliver(envelope)

    assert result.replies["app@example.org"].code == 250
    [request] = moto.requests()
    assert "FromEmailAddress" not in request
    [sent] = moto.sent()
    assert sent["source"] == "mailer-daemon@example.com"


async def test_addresses_ses_cannot_take_are_refused_per_recipient(
    moto: MotoSES, make_relay: MakeRelay
) -> None:
    """No SMTPUTF8 at SES: a non-ASCII local part is refused alone; a non-ASCII domain goes as
    Punycode and keeps its own spelling in the replies."""
    relay = make_relay(moto.endpoint_url)
    recipients = ["jürgen@example.net", "ok@example.net", "rcpt@bücher.example"]
    envelope = make_envelope(make_message(to=["ok@example.net"]), recipients=recipients)

    result = await relay.deliver(envelope)

    refused = result.replies["jürgen@example.net"]
    assert (refused.code, refused.enhanced) == (553, "5.6.7")
    assert result.replies["ok@example.net"].code == 250
    assert result.replies["rcpt@bücher.example"].code == 250
    [request] = moto.requests()
    assert request["Destination"] == {
        "ToAddresses": ["ok@example.net", "rcpt@xn--bcher-kva.example"]
    }


async def test_a_non_ascii_sender_fails_permanently_without_a_call(
    moto: MotoSES, make_relay: MakeRelay
) -> None:
    relay = make_relay(moto.endpoint_url)
    with pytest.raises(PermanentRelayError) as caught:
        await relay.deliver(make_envelope(sender="jürgen@example.com"))
    assert caught.value.reply is not None
    assert caught.value.reply.code == 553
    assert moto.requests() == []


async def test_no_queue_id_and_no_tags_send_no_email_tags(
    moto: MotoSES, make_relay: MakeRelay
) -> None:
    relay = make_relay(moto.endpoint_url)
    await relay.deliver(make_envelope(id=""))
    [request] = moto.requests()
    assert "EmailTags" not in request
    assert "ConfigurationSetName" not in request


async def test_one_client_serves_many_deliveries_and_aclose_releases_it(
    moto: MotoSES, make_relay: MakeRelay
) -> None:
    relay = make_relay(moto.endpoint_url)
    for n in range(3):
        result = await relay.deliver(make_envelope(id=f"id{n}"))
        assert result.replies["rcpt@example.net"].code == 250
    await relay.aclose()
    result = await relay.deliver(make_envelope(id="after-close"))  # a new client on demand
    assert result.replies["rcpt@example.net"].code == 250
    tags = [r["EmailTags"][0]["Value"] for r in moto.requests()]
    assert tags == ["id0", "id1", "id2", "after-close"]


def test_describe_names_region_endpoint_profile_and_configuration_set(
    make_relay: MakeRelay, aws_env: object
) -> None:
    relay = make_relay("https://email.eu-west-1.amazonaws.com", region="eu-west-1")
    assert relay.describe() == "ses eu-west-1 via https://email.eu-west-1.amazonaws.com"
    relay = make_relay(None, region="eu-west-1", configuration_set="tx")
    assert relay.describe() == "ses eu-west-1 configuration set tx"
