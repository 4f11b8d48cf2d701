"""The Signed Event Webhook: genuine batches become ProviderEvents (every mapping row); forged,
altered, stale or malformed requests are refused before anything is parsed; the config keys.

Every signature here is made with a real P-256 key generated for the test, the way SendGrid
signs: ECDSA/SHA-256 over the timestamp header's digits followed by the raw body."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeRelay
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from mqd import ConfigError, ProviderEvent, Status, WebhookRejected, WebhookReply, WebhookRequest
from mqd.testing import make_envelope, relay_from_table
from sendgrid_fake import FakeSendGrid

from mqd_sendgrid import SendGridRelay, SendGridWebhook
from mqd_sendgrid.testing import new_key_pair, signed_headers
from mqd_sendgrid.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER

NOW = 1_700_000_000.0
MESSAGE_ID = "W86EgYT6SQKk0lRflfLRsA"
SG_MESSAGE_ID = f"{MESSAGE_ID}.filterdrecv-5bc6d5b-4s9pf-1-65A1B2C3-4.0"


@pytest.fixture(scope="module")
def keys() -> tuple[ec.EllipticCurvePrivateKey, str]:
    return new_key_pair()


@pytest.fixture
def webhook(keys: tuple[ec.EllipticCurvePrivateKey, str], key_file: Path) -> SendGridWebhook:
    """The webhook the relay builds from its config, as the daemon would get it."""
    relay = relay_from_table(
        "sendgrid", {"api_key_file": key_file, "webhook_verification_key": keys[1]}, name="sg"
    )
    hook = relay.webhook()
    assert isinstance(hook, SendGridWebhook)
    return hook


def request(
    body: bytes,
    headers: dict[str, str],
    *,
    method: str = "POST",
    received_at: float = NOW,
) -> WebhookRequest:
    return WebhookRequest(
        method=method,
        headers={name.lower(): value for name, value in headers.items()},
        body=body,
        remote="127.0.0.1",
        received_at=received_at,
    )


def signed(
    private_key: ec.EllipticCurvePrivateKey, events: Any, *, timestamp: int = int(NOW)
) -> WebhookRequest:
    body = json.dumps(events).encode()
    return request(body, signed_headers(private_key, body, timestamp))


def event(name: str, **fields: Any) -> dict[str, Any]:
    base = {
        "email": "rcpt@example.net",
        "timestamp": 1_699_999_000,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": name,
        "category": ["transactional"],
        "sg_event_id": f"ev-{name}",
        "sg_message_id": SG_MESSAGE_ID,
        "mqd_id": "0193a4c2e1f07d1a2b3c",
    }
    return {**base, **fields}


async def rejected(webhook: SendGridWebhook, req: WebhookRequest) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as caught:
        await webhook.handle(req)
    return caught.value


# -- genuine batches ------------------------------------------------------------------------------


async def test_a_genuine_batch_maps_every_event(
    webhook: SendGridWebhook, keys: tuple[ec.EllipticCurvePrivateKey, str]
) -> None:
    batch = [
        event("processed"),
        event("deferred", response="450 4.2.1 mailbox busy, try later", attempt="2"),
        event("delivered", response="250 2.0.0 OK queued as 1234", ip="168.1.1.1"),
        event(
            "bounce",
            type="bounce",
            status="5.1.1",
            reason="550 5.1.1 The email account that you tried to reach does not exist",
            bounce_classification="Invalid Address",
        ),
        event("bounce", sg_event_id="ev-blocked", type="blocked", reason="550 blocked by RBL"),
        event("dropped", reason="Bounced Address", status="5.0.0"),
        event("open", useragent="Mozilla/5.0", ip="10.0.0.1", sg_machine_open=False),
        event("click", url="https://example.com/a?b=c", url_offset={"index": 0}),
        event("spamreport"),
        event("unsubscribe"),
        event("group_unsubscribe", asm_group_id=42),
        event("group_resubscribe", asm_group_id=42),
        event("machine_learning_surprise"),
    ]
    reply = await webhook.handle(signed(keys[0], batch))
    assert isinstance(reply, WebhookReply)
    assert reply.status == 200
    statuses = [(e.event_id, e.status) for e in reply.events]
    assert statuses == [
        ("ev-processed", Status.DISPATCHED),
        ("ev-deferred", Status.DEFERRED),
        ("ev-delivered", Status.DELIVERED),
        ("ev-bounce", Status.BOUNCED),
        ("ev-blocked", Status.BOUNCED),
        ("ev-dropped", Status.DROPPED),
        ("ev-open", Status.OPENED),
        ("ev-click", Status.CLICKED),
        ("ev-spamreport", Status.COMPLAINED),
        ("ev-unsubscribe", Status.UNSUBSCRIBED),
        ("ev-group_unsubscribe", Status.UNSUBSCRIBED),
    ]
    for e in reply.events:
        assert e.recipient == "rcpt@example.net"
        assert e.at == 1_699_999_000.0
        assert e.mqd_id == "0193a4c2e1f07d1a2b3c"
        assert e.provider_id == MESSAGE_ID
    by_id = {e.event_id: e for e in reply.events}
    assert by_id["ev-bounce"] == ProviderEvent(
        status=Status.BOUNCED,
        at=1_699_999_000.0,
        event_id="ev-bounce",
        recipient="rcpt@example.net",
        mqd_id="0193a4c2e1f07d1a2b3c",
        provider_id=MESSAGE_ID,
        reply="550 5.1.1 The email account that you tried to reach does not exist",
        detail={
            "event": "bounce",
            "type": "bounce",
            "status": "5.1.1",
            "bounce_classification": "Invalid Address",
            "sg_message_id": SG_MESSAGE_ID,
        },
    )
    assert by_id["ev-blocked"].detail["type"] == "blocked"
    assert by_id["ev-deferred"].reply == "450 4.2.1 mailbox busy, try later"
    assert by_id["ev-deferred"].detail == {
        "event": "deferred",
        "attempt": "2",
        "sg_message_id": SG_MESSAGE_ID,
    }
    assert by_id["ev-delivered"].reply == "250 2.0.0 OK queued as 1234"
    assert by_id["ev-dropped"].reply == "Bounced Address"
    assert by_id["ev-click"].detail == {
        "event": "click",
        "url": "https://example.com/a?b=c",
        "sg_message_id": SG_MESSAGE_ID,
    }
    # Nothing personal beyond the address is kept: no IP, no user agent.
    assert by_id["ev-open"].detail == {"event": "open", "sg_message_id": SG_MESSAGE_ID}
    assert by_id["ev-open"].reply is None


async def test_skipped_events_are_logged_at_debug(
    webhook: SendGridWebhook,
    keys: tuple[ec.EllipticCurvePrivateKey, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="mqd.webhook.sendgrid")
    reply = await webhook.handle(signed(keys[0], [event("group_resubscribe"), event("mystery")]))
    assert reply.events == []
    assert "'group_resubscribe' is not tracked" in caplog.text
    assert "'mystery' is not tracked" in caplog.text


async def test_an_empty_batch_is_fine(
    webhook: SendGridWebhook, keys: tuple[ec.EllipticCurvePrivateKey, str]
) -> None:
    assert (await webhook.handle(signed(keys[0], []))).events == []


async def test_without_sg_event_id_the_id_is_a_stable_hash(
    webhook: SendGridWebhook, keys: tuple[ec.EllipticCurvePrivateKey, str]
) -> None:
    one = event("open", sg_event_id=None)
    del one["sg_event_id"]
    reordered = dict(reversed(list(one.items())))
    later = {**one, "timestamp": one["timestamp"] + 1}
    reply = await webhook.handle(signed(keys[0], [one, reordered, later]))
    first, second, third = (e.event_id for e in reply.events)
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    assert first == second  # SendGrid's retry of the same event is recorded once
    assert first != third


async def test_sparse_events_keep_what_is_there(
    webhook: SendGridWebhook, keys: tuple[ec.EllipticCurvePrivateKey, str]
) -> None:
    reply = await webhook.handle(signed(keys[0], [{"event": "delivered", "sg_event_id": "x"}]))
    [only] = reply.events
    assert only == ProviderEvent(
        status=Status.DELIVERED, at=NOW, event_id="x", detail={"event": "delivered"}
    )


async def test_ids_match_what_the_send_recorded(
    fake: FakeSendGrid,
    make_relay: MakeRelay,
    keys: tuple[ec.EllipticCurvePrivateKey, str],
) -> None:
    """The send carries custom_args.mqd_id and records X-Message-Id; an event about that message
    carries both back (sg_message_id is the X-Message-Id plus a suffix)."""
    relay = make_relay(webhook_verification_key=keys[1])
    result = await relay.deliver(make_envelope(id="0193a4c2e1f07d1a2b3c"))
    assert fake.sent[0]["custom_args"] == {"mqd_id": "0193a4c2e1f07d1a2b3c"}
    assert result.provider_id
    hook = relay.webhook()
    assert hook is not None
    batch = [event("delivered", sg_message_id=f"{result.provider_id}.filter0001.16648.0")]
    [delivered] = (await hook.handle(signed(keys[0], batch))).events
    assert delivered.provider_id == result.provider_id
    assert delivered.mqd_id == "0193a4c2e1f07d1a2b3c"


# -- refused before anything is parsed -----------------------------------------------------------


async def test_forged_with_another_key_is_refused(webhook: SendGridWebhook) -> None:
    other, _ = new_key_pair()
    error = await rejected(webhook, signed(other, [event("delivered")]))
    assert error.status == 403
    assert "does not verify with webhook_verification_key" in str(error)


async def test_a_tampered_body_is_refused(
    webhook: SendGridWebhook, keys: tuple[ec.EllipticCurvePrivateKey, str]
) -> None:
    body = json.dumps([event("delivered")]).encode()
    headers = signed_headers(keys[0], body, int(NOW))
    tampered = body.replace(b"delivered", b"spamreport")
    error = await rejected(webhook, request(tampered, headers))
    assert error.status == 403
    assert "does not verify" in str(error)


async def test_a_moved_timestamp_is_refused(
    webhook: SendGridWebhook, keys: tuple[ec.EllipticCurvePrivateKey, str]
) -> None:
    """The timestamp is part of what is signed: it cannot be refreshed to replay a request."""
    body = json.dumps([event("delivered")]).encode()
    headers = signed_headers(keys[0], body, int(NOW) - 3600)
    headers[TIMESTAMP_HEADER] = str(int(NOW))
    assert "does not verify" in str(await rejected(webhook, request(body, headers)))


@pytest.mark.parametrize(
    ("offset", "says"), [(-301, "301s old"), (301, "301s in the future"), (-86400, "86400s old")]
)
async def test_stale_and_future_timestamps_are_refused(
    webhook: SendGridWebhook,
    keys: tuple[ec.EllipticCurvePrivateKey, str],
    offset: int,
    says: str,
) -> None:
    error = await rejected(webhook, signed(keys[0], [event("open")], timestamp=int(NOW) + offset))
    assert error.status == 403
    assert says in str(error)
    assert "webhook_max_age (300s)" in str(error)


@pytest.mark.parametrize("offset", [-300, 0, 300])
async def test_timestamps_within_max_age_either_way_are_accepted(
    webhook: SendGridWebhook, keys: tuple[ec.EllipticCurvePrivateKey, str], offset: int
) -> None:
    reply = await webhook.handle(signed(keys[0], [event("open")], timestamp=int(NOW) + offset))
    assert [e.status for e in reply.events] == [Status.OPENED]


async def test_max_age_comes_from_the_config(
    keys: tuple[ec.EllipticCurvePrivateKey, str], key_file: Path
) -> None:
    relay = relay_from_table(
        "sendgrid",
        {
            "api_key_file": key_file,
            "webhook_verification_key": keys[1],
            "webhook_max_age": "30s",
        },
    )
    hook = relay.webhook()
    assert isinstance(hook, SendGridWebhook)
    assert hook.max_age == 30.0
    error = await rejected(hook, signed(keys[0], [event("open")], timestamp=int(NOW) - 31))
    assert "31s old" in str(error)
    assert len(
        (await hook.handle(signed(keys[0], [event("open")], timestamp=int(NOW) - 29))).events
    )


@pytest.mark.parametrize("drop", [SIGNATURE_HEADER, TIMESTAMP_HEADER])
async def test_a_missing_header_is_refused(
    webhook: SendGridWebhook, keys: tuple[ec.EllipticCurvePrivateKey, str], drop: str
) -> None:
    body = json.dumps([event("delivered")]).encode()
    headers = signed_headers(keys[0], body, int(NOW))
    del headers[drop]
    error = await rejected(webhook, request(body, headers))
    assert error.status == 403
    assert f"no {drop} header" in str(error)


async def test_an_unsigned_request_names_both_headers(webhook: SendGridWebhook) -> None:
    error = await rejected(webhook, request(json.dumps([event("open")]).encode(), {}))
    assert f"no {SIGNATURE_HEADER} and no {TIMESTAMP_HEADER} header" in str(error)
    assert "Signed Event Webhook" in str(error)


@pytest.mark.parametrize(
    ("header", "value", "says"),
    [
        (SIGNATURE_HEADER, "not base64!!", "is not base64"),
        (SIGNATURE_HEADER, base64.b64encode(b"not a DER signature").decode(), "does not verify"),
        (SIGNATURE_HEADER, "", "no X-Twilio-Email-Event-Webhook-Signature header"),
        (TIMESTAMP_HEADER, "yesterday", "not a Unix time"),
        (TIMESTAMP_HEADER, "+1700000000", "not a Unix time"),
        (TIMESTAMP_HEADER, "1700000000.5", "not a Unix time"),
    ],
)
async def test_garbled_headers_are_refused(
    webhook: SendGridWebhook,
    keys: tuple[ec.EllipticCurvePrivateKey, str],
    header: str,
    value: str,
    says: str,
) -> None:
    body = json.dumps([event("delivered")]).encode()
    headers = signed_headers(keys[0], body, int(NOW))
    headers[header] = value
    error = await rejected(webhook, request(body, headers))
    assert error.status == 403
    assert says in str(error)


@pytest.mark.parametrize("method", ["GET", "PUT", "HEAD"])
async def test_a_method_other_than_post_is_refused(
    webhook: SendGridWebhook, keys: tuple[ec.EllipticCurvePrivateKey, str], method: str
) -> None:
    body = json.dumps([event("delivered")]).encode()
    req = request(body, signed_headers(keys[0], body, int(NOW)), method=method)
    error = await rejected(webhook, req)
    assert error.status == 405
    assert f"{method} instead of POST" in str(error)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe[]", "not JSON"),
        (b'{"event": "delivered"}', "a JSON object, not an array"),
        (b'[{"event": "delivered"}, "x"]', "array holding a non-object"),
        (b"null", "a JSON null"),
        (b"42", "a JSON number"),
    ],
)
async def test_a_signed_body_that_is_not_an_array_of_objects_is_a_400(
    webhook: SendGridWebhook,
    keys: tuple[ec.EllipticCurvePrivateKey, str],
    body: bytes,
    says: str,
) -> None:
    error = await rejected(webhook, request(body, signed_headers(keys[0], body, int(NOW))))
    assert error.status == 400
    assert says in str(error)


async def test_an_unsigned_bad_body_is_a_403_not_a_400(webhook: SendGridWebhook) -> None:
    """Nothing about an unsigned body is looked at, not even whether it is JSON."""
    assert (await rejected(webhook, request(b"not json", {}))).status == 403


# -- configuration --------------------------------------------------------------------------------


def test_no_key_no_webhook(key_file: Path) -> None:
    relay = relay_from_table("sendgrid", {"api_key_file": key_file})
    assert relay.webhook() is None


def test_the_webhook_is_built_once(
    keys: tuple[ec.EllipticCurvePrivateKey, str], key_file: Path
) -> None:
    relay = relay_from_table(
        "sendgrid", {"api_key_file": key_file, "webhook_verification_key": keys[1]}, name="sg"
    )
    assert isinstance(relay, SendGridRelay)
    first = relay.webhook()
    assert isinstance(first, SendGridWebhook)
    assert relay.webhook() is first
    assert (first.source, first.relay, first.max_age) == ("sendgrid", "sg", 300.0)


async def test_the_key_from_a_file_pem_or_base64(
    keys: tuple[ec.EllipticCurvePrivateKey, str], key_file: Path, tmp_path: Path
) -> None:
    pem = (
        keys[0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for name, content in (("key.b64", keys[1] + "\n"), ("key.pem", pem.decode())):
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        relay = relay_from_table(
            "sendgrid", {"api_key_file": key_file, "webhook_verification_key_file": path}
        )
        hook = relay.webhook()
        assert hook is not None
        assert len((await hook.handle(signed(keys[0], [event("open")]))).events) == 1


def _other_key(kind: str) -> str:
    if kind == "rsa":
        public: Any = rsa.generate_private_key(65537, 2048).public_key()
    else:
        public = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("not a key", "not a base64 EC public key"),
        (base64.b64encode(b"random bytes, not DER").decode(), "not a base64 EC public key"),
        ("", "not a base64 EC public key"),
        (_other_key("rsa"), "not an EC (ECDSA) public key"),
        (_other_key("p384"), "SendGrid signs with P-256"),
    ],
)
def test_a_bad_key_is_a_config_error(key_file: Path, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        relay_from_table("sendgrid", {"api_key_file": key_file, "webhook_verification_key": value})
    assert caught.value.key == "relays.test.webhook_verification_key"
    assert says in str(caught.value)
    assert "Signed Event Webhook" in str(caught.value)  # where to copy the right one from


def test_a_bad_key_file_is_a_config_error(key_file: Path, tmp_path: Path) -> None:
    table: dict[str, Any] = {"api_key_file": key_file}
    with pytest.raises(ConfigError) as caught:
        relay_from_table("sendgrid", {**table, "webhook_verification_key_file": tmp_path / "no"})
    assert caught.value.key == "relays.test.webhook_verification_key_file"
    assert "cannot read" in str(caught.value)
    garbage = tmp_path / "garbage"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError) as caught:
        relay_from_table("sendgrid", {**table, "webhook_verification_key_file": garbage})
    assert caught.value.key == "relays.test.webhook_verification_key_file"
    assert "not a base64 EC public key" in str(caught.value)


def test_both_key_keys_is_a_config_error(
    keys: tuple[ec.EllipticCurvePrivateKey, str], key_file: Path, tmp_path: Path
) -> None:
    path = tmp_path / "key"
    path.write_text(keys[1])
    with pytest.raises(ConfigError) as caught:
        relay_from_table(
            "sendgrid",
            {
                "api_key_file": key_file,
                "webhook_verification_key": keys[1],
                "webhook_verification_key_file": path,
            },
        )
    assert "give only one of" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "says"), [(-5, "cannot be negative"), ("-5m", "duration"), ("0s", "more than 0s")]
)
def test_a_bad_max_age_is_a_config_error(
    keys: tuple[ec.EllipticCurvePrivateKey, str], key_file: Path, value: object, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        relay_from_table(
            "sendgrid",
            {
                "api_key_file": key_file,
                "webhook_verification_key": keys[1],
                "webhook_max_age": value,
            },
        )
    assert caught.value.key == "relays.test.webhook_max_age"
    assert says in str(caught.value)


def test_a_misspelt_webhook_key_is_refused(
    keys: tuple[ec.EllipticCurvePrivateKey, str], key_file: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        relay_from_table(
            "sendgrid", {"api_key_file": key_file, "webhook_verification_kye": keys[1]}
        )
    assert "did you mean 'webhook_verification_key'" in str(caught.value)
