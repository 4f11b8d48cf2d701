"""The SES webhook: SNS messages signed with a real key whose certificate a real local HTTP server
serves, verified and turned into events; everything forged, altered, stale or misdirected is
refused before anything is fetched from an unknown place or recorded."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from mqd import ConfigError, ProviderEvent, Status, WebhookRejected, WebhookReply, WebhookRequest
from ses_support import MakeRelay

from mqd_ses import SESRelay
from mqd_ses.testing import (
    TOPIC_ARN,
    new_signing_cert,
    ses_bounce_notification,
    ses_event,
    sign_sns,
    sns_headers,
    sns_notification,
    sns_subscription_confirmation,
    sns_time,
)
from mqd_ses.webhook import SESWebhook, sns_string_to_sign, url_refusal

MQD_ID = "018f2b3c4d5a1b2c3d4e5f"
SES_ID = "0100018f2b3c4d5e-6f7a8b9c-1d2e-4f3a-9b8c-7d6e5f4a3b2c-000000"
OTHER_TOPIC = "arn:aws:sns:us-east-1:123456789012:someone-elses"


@dataclass
class LocalServer:
    """A real HTTP server on 127.0.0.1: serves ``pem`` at /certs/cert.pem, confirms at
    /confirm, and counts every request by path."""

    key: rsa.RSAPrivateKey
    pem: bytes
    base: str = ""
    hits: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def cert_url(self) -> str:
        return f"{self.base}/certs/cert.pem"

    @property
    def confirm_url(self) -> str:
        return f"{self.base}/confirm?Action=ConfirmSubscription&TopicArn={TOPIC_ARN}&Token=abc"

    async def handle(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        status = self.statuses.get(request.path, 200)
        if status != 200:
            return web.Response(status=status, text="no")
        if request.path == "/certs/cert.pem":
            return web.Response(body=self.pem, content_type="application/x-pem-file")
        if request.path == "/certs/garbage.pem":
            return web.Response(text="not a certificate")
        if request.path == "/confirm":
            return web.Response(
                text="<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>"
                f"{TOPIC_ARN}:1234</SubscriptionArn></ConfirmSubscriptionResult>"
                "</ConfirmSubscriptionResponse>",
                content_type="text/xml",
            )
        return web.Response(status=404)


async def start_server(key: rsa.RSAPrivateKey, pem: bytes) -> tuple[LocalServer, web.AppRunner]:
    server = LocalServer(key, pem)
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.base = f"http://127.0.0.1:{port}"
    return server, runner


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The webhook honours HTTP(S)_PROXY; these tests talk to 127.0.0.1 only."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def signing() -> tuple[rsa.RSAPrivateKey, bytes]:
    return new_signing_cert()


@pytest.fixture
async def sns(signing: tuple[rsa.RSAPrivateKey, bytes]) -> AsyncIterator[LocalServer]:
    """The allowed server: its /certs/ are in webhook_certificate_urls."""
    server, runner = await start_server(*signing)
    yield server
    await runner.cleanup()


@pytest.fixture
async def elsewhere(signing: tuple[rsa.RSAPrivateKey, bytes]) -> AsyncIterator[LocalServer]:
    """Another server with the same (valid) certificate, whose URLs are not allowed."""
    server, runner = await start_server(*signing)
    yield server
    await runner.cleanup()


MakeWebhook = Callable[..., SESWebhook]


@pytest.fixture
def make_webhook(make_relay: MakeRelay, sns: LocalServer) -> MakeWebhook:
    """``make_webhook(**keys)``: the webhook of a relay built from a table with the test topic
    and the local server's /certs/ allowed (and a /confirm prefix for confirmations)."""

    def make(**keys: Any) -> SESWebhook:
        table: dict[str, Any] = {
            "webhook_topics": [TOPIC_ARN],
            "webhook_certificate_urls": [f"{sns.base}/certs/", f"{sns.base}/confirm"],
            **keys,
        }
        relay = make_relay(None, **table)
        webhook = relay.webhook()
        assert isinstance(webhook, SESWebhook)
        return webhook

    return make


def request(
    message: dict[str, Any],
    *,
    received_at: float | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    body: bytes | None = None,
) -> WebhookRequest:
    return WebhookRequest(
        method=method,
        headers=sns_headers(message) if headers is None else headers,
        body=json.dumps(message).encode() if body is None else body,
        remote="127.0.0.1",
        received_at=time.time() if received_at is None else received_at,
    )


async def rejected(webhook: SESWebhook, req: WebhookRequest) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as caught:
        await webhook.handle(req)
    return caught.value


def signed_event(
    server: LocalServer,
    event: dict[str, Any],
    *,
    version: int = 2,
    topic_arn: str = TOPIC_ARN,
    timestamp: str | None = None,
) -> dict[str, Any]:
    message = sns_notification(event, topic_arn=topic_arn, timestamp=timestamp)
    return sign_sns(message, server.key, server.cert_url, version)


# -- genuine events --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
async def test_a_genuine_bounce_becomes_a_bounced_event(
    make_webhook: MakeWebhook, sns: LocalServer, version: int
) -> None:
    webhook = make_webhook()
    assert webhook.source == "ses"
    message = sign_sns(
        ses_bounce_notification(recipient="bob@example.net", mqd_id=MQD_ID, message_id=SES_ID),
        sns.key,
        sns.cert_url,
        version,
    )
    reply = await webhook.handle(request(message))
    assert (reply.status, reply.body) == (200, "ok")
    [event] = reply.events
    bounce = json.loads(message["Message"])["bounce"]
    assert event == ProviderEvent(
        status=Status.BOUNCED,
        at=pytest.approx(_epoch(bounce["timestamp"])),  # type: ignore[arg-type]
        event_id=f"{message['MessageId']}:bob@example.net",
        recipient="bob@example.net",
        mqd_id=MQD_ID,
        provider_id=SES_ID,
        reply="smtp; 550 5.1.1 user unknown",
        detail={
            "event": "Bounce",
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "feedbackId": bounce["feedbackId"],
            "reportingMTA": "dsn; a8-30.smtp-out.amazonses.com",
            "status": "5.1.1",
            "action": "failed",
        },
    )


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


OPENED_AT = "2024-05-01T10:00:19.652Z"
CASES: list[tuple[str, dict[str, Any], Status, str | None, dict[str, Any]]] = [
    (
        "Delivery",
        {
            "timestamp": OPENED_AT,
            "processingTimeMillis": 546,
            "recipients": ["bob@example.net"],
            "smtpResponse": "250 2.0.0 OK  1714557619 q9si",
            "reportingMTA": "a8-30.smtp-out.amazonses.com",
        },
        Status.DELIVERED,
        "250 2.0.0 OK  1714557619 q9si",
        {"reportingMTA": "a8-30.smtp-out.amazonses.com", "processingTimeMillis": 546},
    ),
    (
        "Complaint",
        {
            "complainedRecipients": [{"emailAddress": "bob@example.net"}],
            "timestamp": OPENED_AT,
            "feedbackId": "0100018f-feedback-000000",
            "complaintFeedbackType": "abuse",
        },
        Status.COMPLAINED,
        None,
        {"complaintFeedbackType": "abuse", "feedbackId": "0100018f-feedback-000000"},
    ),
    (
        "Open",
        {"ipAddress": "192.0.2.1", "timestamp": OPENED_AT, "userAgent": "Mozilla/5.0"},
        Status.OPENED,
        None,
        {"userAgent": "Mozilla/5.0"},
    ),
    (
        "Click",
        {
            "ipAddress": "192.0.2.1",
            "timestamp": OPENED_AT,
            "userAgent": "Mozilla/5.0",
            "link": "https://shop.example.com/orders/42",
            "linkTags": {"campaign": ["may"]},
        },
        Status.CLICKED,
        None,
        {
            "link": "https://shop.example.com/orders/42",
            "linkTags": {"campaign": ["may"]},
            "userAgent": "Mozilla/5.0",
        },
    ),
    ("Send", {}, Status.DISPATCHED, None, {}),
    ("Reject", {"reason": "Bad content"}, Status.DROPPED, "Bad content", {"reason": "Bad content"}),
    (
        "DeliveryDelay",
        {
            "timestamp": OPENED_AT,
            "delayType": "TransientCommunicationFailure",
            "expirationTime": "2024-05-02T10:00:19.000Z",
            "delayedRecipients": [
                {
                    "emailAddress": "bob@example.net",
                    "status": "4.4.1",
                    "diagnosticCode": "smtp; 421 4.4.1 Unable to connect to remote host",
                }
            ],
        },
        Status.DEFERRED,
        "smtp; 421 4.4.1 Unable to connect to remote host",
        {
            "delayType": "TransientCommunicationFailure",
            "expirationTime": "2024-05-02T10:00:19.000Z",
            "status": "4.4.1",
        },
    ),
    (
        "Rendering Failure",
        {"templateName": "welcome", "errorMessage": "Attribute 'name' is not present"},
        Status.DROPPED,
        "Attribute 'name' is not present",
        {"templateName": "welcome", "errorMessage": "Attribute 'name' is not present"},
    ),
    (
        "Subscription",
        {
            "contactList": "newsletter",
            "timestamp": OPENED_AT,
            "source": "UnsubscribeHeader",
            "newTopicPreferences": {"unsubscribeAll": True},
            "oldTopicPreferences": {"unsubscribeAll": False},
        },
        Status.UNSUBSCRIBED,
        None,
        {
            "contactList": "newsletter",
            "source": "UnsubscribeHeader",
            "newTopicPreferences": {"unsubscribeAll": True},
        },
    ),
]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(
    ("event_type", "body", "status", "reply", "detail"), CASES, ids=[c[0] for c in CASES]
)
async def test_each_event_publishing_type_maps_to_its_status(
    make_webhook: MakeWebhook,
    sns: LocalServer,
    version: int,
    event_type: str,
    body: dict[str, Any],
    status: Status,
    reply: str | None,
    detail: dict[str, Any],
) -> None:
    sent_at = "2024-05-01T09:59:59.001Z"
    event = ses_event(
        event_type,
        recipients=["bob@example.net"],
        mqd_id=MQD_ID,
        message_id=SES_ID,
        body=body,
        sent_at=sent_at,
    )
    message = signed_event(sns, event, version=version)
    [got] = (await make_webhook().handle(request(message))).events
    assert got.status is status
    assert (got.recipient, got.mqd_id, got.provider_id, got.reply) == (
        "bob@example.net",
        MQD_ID,
        SES_ID,
        reply,
    )
    assert got.event_id == f"{message['MessageId']}:bob@example.net"
    # the event's own time; a Send, Reject or Rendering Failure has none: the send's
    assert got.at == pytest.approx(_epoch(OPENED_AT if "timestamp" in body else sent_at))
    assert got.detail == {"event": event_type, **detail}


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(
    ("kind", "body", "status", "reply"),
    [
        (
            "Bounce",
            {
                "bounceType": "Permanent",
                "bounceSubType": "NoEmail",
                "bouncedRecipients": [
                    {"emailAddress": "bob@example.net", "diagnosticCode": "smtp; 550 5.1.1"}
                ],
                "timestamp": OPENED_AT,
            },
            Status.BOUNCED,
            "smtp; 550 5.1.1",
        ),
        (
            "Complaint",
            {"complainedRecipients": [{"emailAddress": "bob@example.net"}], "timestamp": OPENED_AT},
            Status.COMPLAINED,
            None,
        ),
        (
            "Delivery",
            {
                "timestamp": OPENED_AT,
                "recipients": ["bob@example.net"],
                "smtpResponse": "250 ok",
            },
            Status.DELIVERED,
            "250 ok",
        ),
    ],
)
async def test_identity_notifications_map_too_and_match_by_the_ses_message_id(
    make_webhook: MakeWebhook,
    sns: LocalServer,
    version: int,
    kind: str,
    body: dict[str, Any],
    status: Status,
    reply: str | None,
) -> None:
    event = ses_event(
        kind,
        recipients=["bob@example.net"],
        message_id=SES_ID,
        body=body,
        identity_notification=True,
    )
    assert "notificationType" in event
    assert "tags" not in event["mail"]
    [got] = (await make_webhook().handle(request(signed_event(sns, event, version=version)))).events
    assert (got.status, got.recipient, got.reply) == (status, "bob@example.net", reply)
    assert got.at == pytest.approx(_epoch(OPENED_AT))
    # identity notifications carry no message tags: the core matches by provider_id
    assert (got.mqd_id, got.provider_id) == (None, SES_ID)


async def test_a_transient_bounce_is_bounced_and_a_suppressed_one_dropped(
    make_webhook: MakeWebhook, sns: LocalServer
) -> None:
    webhook = make_webhook()
    transient = ses_bounce_notification(
        recipient="full@example.net",
        mqd_id=MQD_ID,
        bounce_type="Transient",
        bounce_subtype="MailboxFull",
        diagnostic_code="smtp; 452 4.2.2 mailbox full",
    )
    [event] = (await webhook.handle(request(sign_sns(transient, sns.key, sns.cert_url)))).events
    assert event.status is Status.BOUNCED
    assert (event.detail["bounceType"], event.detail["bounceSubType"]) == (
        "Transient",
        "MailboxFull",
    )
    assert event.reply == "smtp; 452 4.2.2 mailbox full"
    suppressed = ses_bounce_notification(
        recipient="gone@example.net", bounce_subtype="OnAccountSuppressionList"
    )
    [event] = (await webhook.handle(request(sign_sns(suppressed, sns.key, sns.cert_url)))).events
    assert event.status is Status.DROPPED
    assert event.detail["bounceSubType"] == "OnAccountSuppressionList"


async def test_one_event_per_recipient_each_with_its_own_reply(
    make_webhook: MakeWebhook, sns: LocalServer
) -> None:
    body = {
        "bounceType": "Permanent",
        "bounceSubType": "General",
        "bouncedRecipients": [
            {"emailAddress": "a@example.net", "diagnosticCode": "smtp; 550 a"},
            {"emailAddress": "b@example.net", "diagnosticCode": "smtp; 550 b"},
        ],
        "timestamp": OPENED_AT,
    }
    event = ses_event(
        "Bounce",
        recipients=["a@example.net", "b@example.net", "c@example.net"],
        mqd_id=MQD_ID,
        body=body,
    )
    message = signed_event(sns, event)
    events = (await make_webhook().handle(request(message))).events
    assert [(e.recipient, e.reply) for e in events] == [
        ("a@example.net", "smtp; 550 a"),
        ("b@example.net", "smtp; 550 b"),
    ]
    assert len({e.event_id for e in events}) == 2
    # an open is the message's: one per destination
    opened = ses_event("Open", recipients=["a@example.net", "c@example.net"], body={})
    events = (await make_webhook().handle(request(signed_event(sns, opened)))).events
    assert [e.recipient for e in events] == ["a@example.net", "c@example.net"]


async def test_an_unknown_ses_event_type_is_answered_and_records_nothing(
    make_webhook: MakeWebhook, sns: LocalServer
) -> None:
    event = ses_event("Teleport", recipients=["bob@example.net"], body={})
    reply = await make_webhook().handle(request(signed_event(sns, event)))
    assert (reply.status, list(reply.events)) == (200, [])


async def test_the_certificate_is_fetched_once_and_cached(
    make_webhook: MakeWebhook, sns: LocalServer
) -> None:
    webhook = make_webhook()
    messages = [
        sign_sns(ses_bounce_notification(recipient=f"r{i}@example.net"), sns.key, sns.cert_url)
        for i in range(6)
    ]
    replies = await asyncio.gather(*(webhook.handle(request(m)) for m in messages[:5]))
    assert all(len(r.events) == 1 for r in replies)
    await webhook.handle(request(messages[5]))
    assert sns.hits["/certs/cert.pem"] == 1


# -- against AWS's own signature ------------------------------------------------------------------

#: A message SNS itself published and signed (SignatureVersion 1) in 2015, and the certificate
#: it was signed with (sns.amazonaws.com, issued by VeriSign), as captured in the tests of the
#: AWS::SNS::Verify Perl distribution. SigningCertURL is not signed, so the test points it at the
#: local server.
AWS_CERTIFICATE = b"""\
-----BEGIN CERTIFICATE-----
MIIFFzCCA/+gAwIBAgIQfXvtWTP5lfZLpmyNHLk1TDANBgkqhkiG9w0BAQUFADCB
tTELMAkGA1UEBhMCVVMxFzAVBgNVBAoTDlZlcmlTaWduLCBJbmMuMR8wHQYDVQQL
ExZWZXJpU2lnbiBUcnVzdCBOZXR3b3JrMTswOQYDVQQLEzJUZXJtcyBvZiB1c2Ug
YXQgaHR0cHM6Ly93d3cudmVyaXNpZ24uY29tL3JwYSAoYykxMDEvMC0GA1UEAxMm
VmVyaVNpZ24gQ2xhc3MgMyBTZWN1cmUgU2VydmVyIENBIC0gRzMwHhcNMTQwODIz
MDAwMDAwWhcNMTUwODIyMjM1OTU5WjBrMQswCQYDVQQGEwJVUzETMBEGA1UECBMK
V2FzaGluZ3RvbjEQMA4GA1UEBxQHU2VhdHRsZTEZMBcGA1UEChQQQW1hem9uLmNv
bSwgSW5jLjEaMBgGA1UEAxQRc25zLmFtYXpvbmF3cy5jb20wggEiMA0GCSqGSIb3
DQEBAQUAA4IBDwAwggEKAoIBAQDP/HD18qyBx4IgBvgVCkLTW18bULmoaaOQYtRY
yVpPxIFkNSHxT4uYH9knKUqddKQd1TEXHh0bF50lBiHZpuascNc3+FP2YKbF2t/z
a+zHfLipW01np85VDdIWedvB9TpnMdY9PQYTVx41+2fnei9WgjwXVM085WRSECh3
aRdkvOjwTN/Tlrgy3hoebVN3V5kB67b139m3xAlZjoB8MPdk/tlsk+wgVxuAY/gz
xGIZRJxlgEtsu2g8+rDkjS2tk3457Cz8aXRZSCGi+BB6yN2WhvWwPzSDJMDKxwXY
I8fGw0xutF4WHN414KBUp/s/+E6Ib7GxLUCwFon1swKRz9NxAgMBAAGjggFqMIIB
ZjAcBgNVHREEFTATghFzbnMuYW1hem9uYXdzLmNvbTAJBgNVHRMEAjAAMA4GA1Ud
DwEB/wQEAwIFoDAdBgNVHSUEFjAUBggrBgEFBQcDAQYIKwYBBQUHAwIwZQYDVR0g
BF4wXDBaBgpghkgBhvhFAQc2MEwwIwYIKwYBBQUHAgEWF2h0dHBzOi8vZC5zeW1j
Yi5jb20vY3BzMCUGCCsGAQUFBwICMBkaF2h0dHBzOi8vZC5zeW1jYi5jb20vcnBh
MB8GA1UdIwQYMBaAFA1EXBZTRMGCfh0gqyX0AWPYvnmlMCsGA1UdHwQkMCIwIKAe
oByGGmh0dHA6Ly9zZC5zeW1jYi5jb20vc2QuY3JsMFcGCCsGAQUFBwEBBEswSTAf
BggrBgEFBQcwAYYTaHR0cDovL3NkLnN5bWNkLmNvbTAmBggrBgEFBQcwAoYaaHR0
cDovL3NkLnN5bWNiLmNvbS9zZC5jcnQwDQYJKoZIhvcNAQEFBQADggEBABm5RaeH
sLtJftDeGghHAUkco8wkCshKQO1obhuMDJkJHAHbUrweP4Gw7WRhHNHo1jgA6Q61
NXik2w6H7SDVngCVIqOLFsr1DQ7fB5oSevMwjLvlaLxWBAvgKPSsjCt+QF1aNQiv
sfhOIgiJZTObBERsSs9FXWQ/vMkoisPKYJGn3KigzZj0GXSAB0do8Ejq8siBczgM
9o8NixqVvD7AOoE/QWXCtRDMRnQ5oIAc/Q9iUCJ8oAlbljDFkSqwgunpaG0iuHQZ
6Q4iHgmrgHM302H9fFxupyW46zwLH9gmbrUulmLRZT14bIzd0cZXqIl6nd8il4nq
kqQRCW8P2LDot4s=
-----END CERTIFICATE-----
"""
AWS_TOPIC = "arn:aws:sns:us-east-1:041977924901:foo"
AWS_MESSAGE: dict[str, Any] = {
    "Type": "Notification",
    "MessageId": "a890c547-5d98-55e2-971d-8826fff56413",
    "TopicArn": AWS_TOPIC,
    "Subject": "test subject",
    "Message": "test message",
    "Timestamp": "2015-02-20T20:59:25.401Z",
    "SignatureVersion": "1",
    "Signature": (
        "kzi3JBQz64uFAXG9ZuAwPI2gYW5tT7OF83oeHb8v0/XRPsy0keq2NHTCpQVRxCgPOJ/QUB2Yl/L29/W4hiHMo9+N"
        "s0hrqyasgUfjq+XkVR1WDuYLtNaEA1vLnA0H9usSh3eVVlLhpYzoT4GUoGgstRVvFceW2QVF9EYUQyromlcbOVt"
        "VpKCEINAvGEEKJNGTXQQUkPUka3YMhHitgQg1WlFBmf+oweSYUEj8+RoguWsn6vluxD0VtIOGOml5jlUecfhDqne"
        "tF5pUVYMqCHPfHn6RBguiW+XD6XWsdKKxkjqo90a65Nlb72gPSRw6+sIEIgf4J39WFZK+FCpeSm0qAg=="
    ),
    "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-d6d679a1d18e95c2f9ffcf11f4f9e198.pem",
}


async def test_a_message_signed_by_sns_itself_verifies(
    make_webhook: MakeWebhook, sns: LocalServer
) -> None:
    """The string to sign is checked against AWS's signature, not only against our own signer."""
    sns.pem = AWS_CERTIFICATE
    webhook = make_webhook(webhook_topics=[AWS_TOPIC])
    received = _epoch(AWS_MESSAGE["Timestamp"]) + 2
    genuine = {**AWS_MESSAGE, "SigningCertURL": sns.cert_url}
    # verified, then refused for what it says: "test message" is not an SES event
    error = await rejected(webhook, request(genuine, received_at=received))
    assert (error.status, "not an SES event" in str(error)) == (400, True)
    for name, value in (("Message", "test message!"), ("Subject", "test"), ("MessageId", "x")):
        altered = {**genuine, name: value}
        error = await rejected(webhook, request(altered, received_at=received))
        assert "does not verify" in str(error), name
    assert sns.hits["/certs/cert.pem"] == 1


def test_the_strings_to_sign_are_aws_s_documented_examples() -> None:
    notification = {
        "Type": "Notification",
        "MessageId": "4d4dc071-ddbf-465d-bba8-08f81c89da64",
        "TopicArn": "arn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P",
        "Subject": "My subject",
        "Message": "My Test Message",
        "Timestamp": "2019-01-31T04:37:04.321Z",
        "SignatureVersion": "2",
        "Signature": "ignored",
        "SigningCertURL": "ignored",
        "UnsubscribeURL": "ignored",
    }
    assert sns_string_to_sign(notification) == (
        b"Message\nMy Test Message\nMessageId\n4d4dc071-ddbf-465d-bba8-08f81c89da64\n"
        b"Subject\nMy subject\nTimestamp\n2019-01-31T04:37:04.321Z\n"
        b"TopicArn\narn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P\n"
        b"Type\nNotification\n"
    )
    del notification["Subject"]
    assert b"Subject" not in sns_string_to_sign(notification)
    confirmation = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "3d891288-136d-417f-bc05-901c108273ee",
        "Token": "233",
        "TopicArn": "arn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P",
        "Message": "My Test Message",
        "SubscribeURL": "https://sns.us-east-2.amazonaws.com/?Action=ConfirmSubscription&Token=233",
        "Timestamp": "2019-01-31T19:25:13.719Z",
        "Subject": "not signed for this type",
    }
    assert sns_string_to_sign(confirmation) == (
        b"Message\nMy Test Message\nMessageId\n3d891288-136d-417f-bc05-901c108273ee\n"
        b"SubscribeURL\nhttps://sns.us-east-2.amazonaws.com/?Action=ConfirmSubscription&Token=233\n"
        b"Timestamp\n2019-01-31T19:25:13.719Z\nToken\n233\n"
        b"TopicArn\narn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P\n"
        b"Type\nSubscriptionConfirmation\n"
    )


# -- refused ---------------------------------------------------------------------------------------


async def test_a_forged_signature_is_refused(make_webhook: MakeWebhook, sns: LocalServer) -> None:
    other_key, _ = new_signing_cert()
    message = sign_sns(
        ses_bounce_notification(recipient="bob@example.net"), other_key, sns.cert_url
    )
    error = await rejected(make_webhook(), request(message))
    assert error.status == 403
    assert "does not verify" in str(error)
    assert sns.hits["/certs/cert.pem"] == 1  # it was checked against the real certificate


@pytest.mark.parametrize("field_name", ["Message", "MessageId", "Timestamp", "Subject"])
async def test_an_altered_message_is_refused(
    make_webhook: MakeWebhook, sns: LocalServer, field_name: str
) -> None:
    message = sign_sns(
        ses_bounce_notification(recipient="bob@example.net", mqd_id=MQD_ID), sns.key, sns.cert_url
    )
    if field_name == "Message":
        event = json.loads(message["Message"])
        event["mail"]["tags"]["mqd_id"] = ["someone-elses-message"]
        message["Message"] = json.dumps(event)
    elif field_name == "Timestamp":
        message["Timestamp"] = sns_time(time.time() + 1)
    elif field_name == "Subject":
        message["Subject"] = "added after signing"
    else:
        message[field_name] = "f0000000-0000-4000-8000-000000000000"
    error = await rejected(make_webhook(), request(message))
    assert error.status == 403
    assert "does not verify" in str(error)


async def test_a_signed_subject_is_part_of_the_signature(
    make_webhook: MakeWebhook, sns: LocalServer
) -> None:
    event = ses_event("Send", recipients=["bob@example.net"], body={})
    message = sign_sns(
        sns_notification(event, subject="Amazon SES Email Event"), sns.key, sns.cert_url
    )
    assert len((await make_webhook().handle(request(message))).events) == 1
    message["Subject"] = "Something else"
    assert "does not verify" in str(await rejected(make_webhook(), request(message)))


async def test_a_topic_not_listed_is_refused_before_any_fetch(
    make_webhook: MakeWebhook, sns: LocalServer
) -> None:
    message = sign_sns(
        ses_bounce_notification(recipient="bob@example.net", topic_arn=OTHER_TOPIC),
        sns.key,
        sns.cert_url,
    )
    error = await rejected(make_webhook(), request(message))
    assert error.status == 403
    assert OTHER_TOPIC in str(error)
    assert "webhook_topics" in str(error)
    assert sum(sns.hits.values()) == 0


async def test_a_certificate_url_not_allowed_is_refused_even_when_the_signature_is_good(
    make_webhook: MakeWebhook, sns: LocalServer, elsewhere: LocalServer
) -> None:
    webhook = make_webhook()
    message = ses_bounce_notification(recipient="bob@example.net")
    # the same key, its certificate served from a server that is not allowed
    error = await rejected(webhook, request(sign_sns(message, sns.key, elsewhere.cert_url)))
    assert error.status == 403
    assert "SigningCertURL" in str(error)
    assert sum(elsewhere.hits.values()) == 0
    # and the allowed server, outside its allowed path
    outside = f"{sns.base}/elsewhere/cert.pem"
    error = await rejected(webhook, request(sign_sns(message, sns.key, outside)))
    assert "SigningCertURL" in str(error)
    assert sum(sns.hits.values()) == 0


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem", None),
        ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem", None),
        ("http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem", "not https"),
        ("https://sns.us-east-1.amazonaws.com.evil.example/x.pem", "not on an SNS host"),
        ("https://evil.example/sns.us-east-1.amazonaws.com/x.pem", "not on an SNS host"),
        ("https://sns.us-east-1.amazonaws.com@evil.example/x.pem", "user name"),
        ("https://s3.us-east-1.amazonaws.com/bucket/x.pem", "not on an SNS host"),
        ("https://sns.us-east-1.amazonaws.com:8443/x.pem", "port"),
        ("https://sns.us-east-1.amazonaws.com/x.txt", "not a .pem"),
        ("https://sns.us-east-1.amazonaws.com:bad/x.pem", "not a URL"),
        ("https://sns.us-east-1.amazonaws.com\\@evil.example/x.pem", "characters"),
        ("https://sns.us-east-1.amazonaws.com/x.pem\n", "characters"),
        ("https://sns.us-east-1.amazonaws.com/x y.pem", "characters"),
        ("https://snß.us-east-1.amazonaws.com/x.pem", "characters"),
        ("http://127.0.0.1:8080/certs/x.pem", None),  # the allowed prefix
        ("http://127.0.0.1:8080/certs/sub/x", None),
        ("http://127.0.0.1:8080/certs/../x.pem", "'..'"),
        ("http://127.0.0.1:8080/certs/%2e%2e/x.pem", "'..'"),
        ("http://127.0.0.1:8081/certs/x.pem", "not https"),
        ("http://localhost:8080/certs/x.pem", "not https"),
        ("https://127.0.0.1:8080/certs/x.pem", "not on an SNS host"),
        ("http://127.0.0.1:8080/certsx/x.pem", "not https"),
    ],
)
def test_which_certificate_urls_are_fetched(url: str, why: str | None) -> None:
    refusal = url_refusal(url, ["http://127.0.0.1:8080/certs/"], certificate=True)
    if why is None:
        assert refusal is None
    else:
        assert refusal is not None and why in refusal


@pytest.mark.parametrize(
    ("age", "accepted"),
    [(0, True), (-60, True), (3500, True), (3700, False), (-400, False)],
)
async def test_a_stale_or_future_timestamp_is_refused(
    make_webhook: MakeWebhook, sns: LocalServer, age: float, accepted: bool
) -> None:
    now = time.time()
    message = sign_sns(
        ses_bounce_notification(recipient="bob@example.net", timestamp=sns_time(now - age)),
        sns.key,
        sns.cert_url,
    )
    webhook = make_webhook()
    if accepted:
        assert len((await webhook.handle(request(message, received_at=now))).events) == 1
    else:
        error = await rejected(webhook, request(message, received_at=now))
        assert error.status == 403
        assert ("webhook_max_age" if age > 0 else "in the future") in str(error)
        assert sum(sns.hits.values()) == 0


async def test_webhook_max_age_sets_the_limit(make_webhook: MakeWebhook, sns: LocalServer) -> None:
    webhook = make_webhook(webhook_max_age="10m")
    now = time.time()
    for age, accepted in ((540, True), (660, False)):
        message = sign_sns(
            ses_bounce_notification(recipient="bob@example.net", timestamp=sns_time(now - age)),
            sns.key,
            sns.cert_url,
        )
        if accepted:
            assert (await webhook.handle(request(message, received_at=now))).events
        else:
            assert "600s" in str(await rejected(webhook, request(message, received_at=now)))


async def test_what_is_not_an_sns_message_is_answered_400_or_405(
    make_webhook: MakeWebhook, sns: LocalServer
) -> None:
    webhook = make_webhook()
    good = sign_sns(ses_bounce_notification(recipient="bob@example.net"), sns.key, sns.cert_url)
    cases: list[tuple[WebhookRequest, int, str]] = [
        (request(good, method="GET"), 405, "GET instead of POST"),
        (request(good, headers={}), 400, "x-amz-sns-message-type"),
        (request(good, body=b"{not json"), 400, "not SNS JSON"),
        (request(good, body=b"\xff\xfe"), 400, "not SNS JSON"),
        (request(good, body=b"[]"), 400, "not SNS JSON"),
        (request(good, body=b"[" * 100_000), 400, "not SNS JSON"),
        (request({**good, "Type": "Advert"}, headers=sns_headers(good)), 400, "Type"),
        (
            request(good, headers={"x-amz-sns-message-type": "SubscriptionConfirmation"}),
            400,
            "differs",
        ),
        (request({k: v for k, v in good.items() if k != "Signature"}), 400, "Signature is missing"),
        (request({**good, "Timestamp": 5}), 400, "Timestamp is not a string"),
        (request({**good, "Timestamp": "yesterday"}), 400, "ISO 8601"),
        (
            request(good, headers={**sns_headers(good), "x-amz-sns-rawdelivery": "true"}),
            400,
            "RawMessageDelivery",
        ),
    ]
    for req, status, text in cases:
        error = await rejected(webhook, req)
        assert (error.status, text in str(error)) == (status, True), (str(error), text)
    assert sum(sns.hits.values()) == 0


async def test_bad_signature_fields_are_refused(
    make_webhook: MakeWebhook, sns: LocalServer
) -> None:
    webhook = make_webhook()
    good = sign_sns(ses_bounce_notification(recipient="bob@example.net"), sns.key, sns.cert_url)
    error = await rejected(webhook, request({**good, "SignatureVersion": "3"}))
    assert (error.status, "SignatureVersion" in str(error)) == (403, True)
    error = await rejected(webhook, request({**good, "Signature": "!!not base64!!"}))
    assert (error.status, "base64" in str(error)) == (403, True)
    # a version-1 signature presented as version 2
    v1 = sign_sns(ses_bounce_notification(recipient="bob@example.net"), sns.key, sns.cert_url, 1)
    error = await rejected(webhook, request({**v1, "SignatureVersion": "2"}))
    assert "does not verify" in str(error)


async def test_a_genuine_message_that_is_not_an_ses_event_is_refused(
    make_webhook: MakeWebhook, sns: LocalServer
) -> None:
    for text in ("Hello from the SNS console", json.dumps({"eventType": "Bounce"}), "[1]"):
        message = sns_notification({})
        message["Message"] = text
        error = await rejected(make_webhook(), request(sign_sns(message, sns.key, sns.cert_url)))
        assert (error.status, "not an SES event" in str(error)) == (400, True)


async def test_a_certificate_that_cannot_be_fetched_asks_sns_to_retry(
    make_webhook: MakeWebhook, sns: LocalServer
) -> None:
    webhook = make_webhook()
    message = sign_sns(ses_bounce_notification(recipient="bob@example.net"), sns.key, sns.cert_url)
    sns.statuses["/certs/cert.pem"] = 500
    error = await rejected(webhook, request(message))
    assert (error.status, "HTTP 500" in str(error)) == (503, True)
    # not cached: once the server is back, the same message verifies
    del sns.statuses["/certs/cert.pem"]
    assert len((await webhook.handle(request(message))).events) == 1
    garbage = sign_sns(
        ses_bounce_notification(recipient="bob@example.net"),
        sns.key,
        f"{sns.base}/certs/garbage.pem",
    )
    error = await rejected(webhook, request(garbage))
    assert (error.status, "unusable" in str(error)) == (403, True)


async def test_a_certificate_server_that_does_not_answer_times_out(
    make_relay: MakeRelay, sns: LocalServer
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)  # sleep-ok: a fake certificate server that never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        relay = make_relay(
            None,
            webhook_topics=[TOPIC_ARN],
            webhook_certificate_urls=[f"http://127.0.0.1:{port}/"],
        )
        webhook = SESWebhook("test", relay.settings.webhook, fetch_timeout=0.3)  # type: ignore[arg-type]
        message = sign_sns(
            ses_bounce_notification(recipient="bob@example.net"),
            sns.key,
            f"http://127.0.0.1:{port}/cert.pem",
        )
        started = time.monotonic()
        error = await rejected(webhook, request(message))
        assert (error.status, "no answer within 0.3s" in str(error)) == (503, True)
        assert time.monotonic() - started < 5
    finally:
        server.close()


# -- subscriptions ---------------------------------------------------------------------------------


async def test_a_subscription_confirmation_is_confirmed_once_and_records_nothing(
    make_webhook: MakeWebhook, sns: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    message = sign_sns(sns_subscription_confirmation(sns.confirm_url), sns.key, sns.cert_url)
    with caplog.at_level(logging.WARNING, logger="mqd.relay.ses"):
        reply = await make_webhook().handle(request(message))
    assert reply == WebhookReply()
    assert not reply.events
    assert sns.hits["/confirm"] == 1
    [record] = [r for r in caplog.records if "confirmed" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert TOPIC_ARN in record.getMessage()
    assert f"{TOPIC_ARN}:1234" in record.getMessage()  # the SubscriptionArn SNS answered


async def test_a_subscribe_url_on_a_host_not_allowed_is_not_visited(
    make_webhook: MakeWebhook, sns: LocalServer, elsewhere: LocalServer
) -> None:
    webhook = make_webhook()
    for url in (
        elsewhere.confirm_url,
        f"{sns.base}/certs/../confirm",
        "https://sns.us-east-1.amazonaws.com.evil.example/?Action=ConfirmSubscription",
    ):
        message = sign_sns(sns_subscription_confirmation(url), sns.key, sns.cert_url)
        error = await rejected(webhook, request(message))
        assert (error.status, "SubscribeURL" in str(error)) == (403, True)
    assert sum(elsewhere.hits.values()) == 0
    assert sns.hits["/confirm"] == 0


async def test_an_altered_or_misdirected_confirmation_is_not_visited(
    make_webhook: MakeWebhook, sns: LocalServer
) -> None:
    webhook = make_webhook()
    message = sign_sns(
        sns_subscription_confirmation(f"{sns.base}/elsewhere"), sns.key, sns.cert_url
    )
    message["SubscribeURL"] = sns.confirm_url  # swapped after signing
    assert "does not verify" in str(await rejected(webhook, request(message)))
    foreign = sign_sns(
        sns_subscription_confirmation(sns.confirm_url, topic_arn=OTHER_TOPIC), sns.key, sns.cert_url
    )
    assert "webhook_topics" in str(await rejected(webhook, request(foreign)))
    stale = sign_sns(
        sns_subscription_confirmation(sns.confirm_url, timestamp=sns_time(time.time() - 7200)),
        sns.key,
        sns.cert_url,
    )
    assert "webhook_max_age" in str(await rejected(webhook, request(stale)))
    assert sns.hits["/confirm"] == 0


async def test_a_confirmation_that_fails_is_answered_503_for_sns_to_retry(
    make_webhook: MakeWebhook, sns: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    sns.statuses["/confirm"] = 500
    message = sign_sns(sns_subscription_confirmation(sns.confirm_url), sns.key, sns.cert_url)
    with caplog.at_level(logging.ERROR, logger="mqd.relay.ses"):
        reply = await make_webhook().handle(request(message))
    assert (reply.status, list(reply.events)) == (503, [])
    [record] = caplog.records
    assert "could not confirm" in record.getMessage()
    assert "Token=" not in record.getMessage()  # the confirmation token stays out of the log


async def test_an_unsubscribe_confirmation_is_logged_and_nothing_visited(
    make_webhook: MakeWebhook, sns: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    message = sign_sns(
        sns_subscription_confirmation(sns.confirm_url, kind="UnsubscribeConfirmation"),
        sns.key,
        sns.cert_url,
    )
    with caplog.at_level(logging.WARNING, logger="mqd.relay.ses"):
        reply = await make_webhook().handle(request(message))
    assert (reply.status, list(reply.events)) == (200, [])
    assert sns.hits["/confirm"] == 0
    assert any("unsubscribed" in r.getMessage() for r in caplog.records)


# -- configuration ---------------------------------------------------------------------------------


def test_no_webhook_without_topics(make_relay: MakeRelay) -> None:
    relay = make_relay(None)
    assert isinstance(relay, SESRelay)
    assert relay.settings.webhook is None
    assert relay.webhook() is None


def test_the_webhook_settings_and_their_defaults(make_relay: MakeRelay) -> None:
    relay = make_relay(None, webhook_topics=[TOPIC_ARN])
    webhook = relay.webhook()
    assert isinstance(webhook, SESWebhook)
    assert relay.webhook() is webhook  # one webhook, one certificate cache
    assert webhook.settings.topics == {TOPIC_ARN}
    assert (webhook.settings.certificate_urls, webhook.settings.max_age) == ((), 3600.0)
    china = "arn:aws-cn:sns:cn-north-1:123456789012:ses-events"
    relay = make_relay(
        None,
        webhook_topics=[TOPIC_ARN, china],
        webhook_certificate_urls=["https://sns-proxy.internal.example/certs/", "http://[::1]:80/"],
        webhook_max_age="15m",
    )
    settings = relay.settings.webhook
    assert settings is not None
    assert (settings.topics, settings.max_age) == (frozenset({TOPIC_ARN, china}), 900.0)


BAD_WEBHOOK_KEYS: list[tuple[dict[str, Any], str, str]] = [
    ({"webhook_topics": TOPIC_ARN}, "webhook_topics", "list of strings"),
    ({"webhook_topics": []}, "webhook_topics", "is empty"),
    ({"webhook_topics": [f"{TOPIC_ARN}.fifo"]}, "webhook_topics", "FIFO topic"),
    ({"webhook_topics": ["ses-events"]}, "webhook_topics", "not an SNS topic ARN"),
    (
        {"webhook_topics": ["arn:aws:ses:us-east-1:123456789012:identity/example.com"]},
        "webhook_topics",
        "not an SNS topic ARN",
    ),
    (
        {"webhook_topics": [TOPIC_ARN], "webhook_certificate_urls": ["http://certs.example/"]},
        "webhook_certificate_urls",
        "plain http to another machine",
    ),
    (
        {"webhook_topics": [TOPIC_ARN], "webhook_certificate_urls": ["ftp://certs.example/"]},
        "webhook_certificate_urls",
        "not an http(s) URL prefix",
    ),
    (
        {"webhook_topics": [TOPIC_ARN], "webhook_certificate_urls": ["https://u:p@h.example/"]},
        "webhook_certificate_urls",
        "without user",
    ),
    (
        {"webhook_topics": [TOPIC_ARN], "webhook_certificate_urls": ["https://h.example:x/"]},
        "webhook_certificate_urls",
        "not a URL",
    ),
    ({"webhook_topics": [TOPIC_ARN], "webhook_max_age": "0s"}, "webhook_max_age", "longer than 0s"),
    ({"webhook_topics": [TOPIC_ARN], "webhook_max_age": "soon"}, "webhook_max_age", "duration"),
    (
        {"webhook_certificate_urls": ["https://h.example/"]},
        "webhook_certificate_urls",
        "without webhook_topics",
    ),
    ({"webhook_max_age": "5m"}, "webhook_max_age", "without webhook_topics"),
    ({"webhook_topic": [TOPIC_ARN]}, "webhook_topic", "did you mean 'webhook_topics'"),
]


@pytest.mark.parametrize(("keys", "key", "text"), BAD_WEBHOOK_KEYS)
def test_bad_webhook_keys_name_their_key(
    make_relay: MakeRelay, keys: dict[str, Any], key: str, text: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_relay(None, **keys)
    assert caught.value.key == f"relays.test.{key}"
    assert text in str(caught.value)
