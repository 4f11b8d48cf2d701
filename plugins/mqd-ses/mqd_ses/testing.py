"""Helpers for tests of the SES webhook: a signing certificate of your own, SNS messages signed
with it, and SES events as SNS delivers them.

Serve the certificate from a local HTTP server and allow its URL with the relay's
``webhook_certificate_urls``; then a message from :func:`sign_sns` verifies exactly as one
from SNS does::

    key, pem = new_signing_cert()
    # serve ``pem`` at http://127.0.0.1:<port>/cert.pem ...
    message = sign_sns(ses_bounce_notification(recipient="bob@example.com", mqd_id=queue_id,
                                               topic_arn=TOPIC), key, cert_url)
    # POST json.dumps(message) with the header x-amz-sns-message-type: Notification
"""

from __future__ import annotations

import base64
import datetime
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from .settings import MQD_ID_TAG
from .webhook import sns_string_to_sign

__all__ = [
    "TOPIC_ARN",
    "new_signing_cert",
    "ses_bounce_notification",
    "ses_event",
    "sign_sns",
    "sns_headers",
    "sns_notification",
    "sns_subscription_confirmation",
    "sns_time",
]

#: A topic ARN for tests (list it in the relay's ``webhook_topics``).
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:mqd-ses-events"


def new_signing_cert() -> tuple[rsa.RSAPrivateKey, bytes]:
    """A fresh RSA key and a self-signed certificate for it (PEM), like SNS's signing pair."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.us-east-1.amazonaws.com")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, certificate.public_bytes(serialization.Encoding.PEM)


def sign_sns(
    message: Mapping[str, Any], private_key: rsa.RSAPrivateKey, cert_url: str, version: int = 2
) -> dict[str, Any]:
    """A copy of the SNS ``message`` with SignatureVersion, SigningCertURL and Signature set,
    signed as SNS signs (SignatureVersion 1: SHA1withRSA; 2: SHA256withRSA)."""
    algorithm: hashes.HashAlgorithm
    if version == 1:
        algorithm = hashes.SHA1()  # noqa: S303 - what SNS's SignatureVersion 1 is
    elif version == 2:
        algorithm = hashes.SHA256()
    else:
        raise ValueError(f"SNS has SignatureVersion 1 and 2, not {version!r}")
    signed = dict(message)
    signed["SignatureVersion"] = str(version)
    signed["SigningCertURL"] = cert_url
    signature = private_key.sign(sns_string_to_sign(signed), padding.PKCS1v15(), algorithm)
    signed["Signature"] = base64.b64encode(signature).decode("ascii")
    return signed


def sns_headers(message: Mapping[str, Any]) -> dict[str, str]:
    """The headers SNS sends with ``message`` (lower-case names, as WebhookRequest has them)."""
    headers = {
        "x-amz-sns-message-type": str(message["Type"]),
        "x-amz-sns-message-id": str(message["MessageId"]),
        "x-amz-sns-topic-arn": str(message["TopicArn"]),
        "content-type": "text/plain; charset=UTF-8",
        "user-agent": "Amazon Simple Notification Service Agent",
    }
    if message["Type"] == "Notification":
        headers["x-amz-sns-subscription-arn"] = f"{message['TopicArn']}:{uuid.uuid4()}"
    return headers


def sns_time(at: datetime.datetime | float | None = None) -> str:
    """An SNS Timestamp (UTC, milliseconds, ``Z``) for ``at`` (a datetime, seconds since the
    epoch, or now)."""
    if at is None:
        moment = datetime.datetime.now(datetime.UTC)
    elif isinstance(at, datetime.datetime):
        moment = at.astimezone(datetime.UTC)
    else:
        moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def sns_notification(
    event: Mapping[str, Any],
    *,
    topic_arn: str = TOPIC_ARN,
    message_id: str | None = None,
    timestamp: str | None = None,
    subject: str | None = None,
) -> dict[str, Any]:
    """An unsigned SNS Notification whose Message is ``event`` as JSON (sign it with
    :func:`sign_sns`)."""
    message: dict[str, Any] = {
        "Type": "Notification",
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": topic_arn,
        "Message": json.dumps(event, separators=(",", ":")),
        "Timestamp": timestamp or sns_time(),
        "UnsubscribeURL": (
            "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn="
            f"{topic_arn}:{uuid.uuid4()}"
        ),
    }
    if subject is not None:
        message["Subject"] = subject
    return message


def sns_subscription_confirmation(
    subscribe_url: str,
    *,
    topic_arn: str = TOPIC_ARN,
    token: str = "2336412f37fb687f5d51e6e2425a8a5874b3d8c8ef0d6b9b2ba6ea0a6e1f6f5e",  # noqa: S107 - a sample
    kind: str = "SubscriptionConfirmation",
    timestamp: str | None = None,
) -> dict[str, Any]:
    """An unsigned SubscriptionConfirmation (or, with ``kind``, UnsubscribeConfirmation)."""
    return {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "Token": token,
        "TopicArn": topic_arn,
        "Message": (
            f"You have chosen to subscribe to the topic {topic_arn}.\n"
            "To confirm the subscription, visit the SubscribeURL included in this message."
        ),
        "SubscribeURL": subscribe_url,
        "Timestamp": timestamp or sns_time(),
    }


def ses_event(
    event_type: str,
    *,
    recipients: Sequence[str],
    mqd_id: str | None = None,
    message_id: str = "0100018f2b3c4d5e-6f7a8b9c-1d2e-4f3a-9b8c-7d6e5f4a3b2c-000000",
    sender: str = "noreply@example.com",
    body: Mapping[str, Any] | None = None,
    identity_notification: bool = False,
    sent_at: str | None = None,
) -> dict[str, Any]:
    """An SES event record as SES publishes it to SNS: event publishing's ``eventType`` (with
    the message tags, ``mqd_id`` among them), or with ``identity_notification`` an identity's
    feedback notification (``notificationType``, no tags). ``body`` is the event's own object
    (``bounce``, ``delivery``, ...)."""
    mail: dict[str, Any] = {
        "timestamp": sent_at or sns_time(),
        "source": sender,
        "sourceArn": f"arn:aws:ses:us-east-1:123456789012:identity/{sender.split('@')[-1]}",
        "sendingAccountId": "123456789012",
        "messageId": message_id,
        "destination": list(recipients),
        "headersTruncated": False,
    }
    key = {
        "Rendering Failure": "failure",
        "DeliveryDelay": "deliveryDelay",
    }.get(event_type, event_type.lower())
    if identity_notification:
        return {"notificationType": event_type, "mail": mail, key: dict(body or {})}
    tags: dict[str, list[str]] = {
        "ses:configuration-set": ["transactional"],
        "ses:from-domain": [sender.split("@")[-1]],
    }
    if mqd_id is not None:
        tags[MQD_ID_TAG] = [mqd_id]
    mail["tags"] = tags
    return {"eventType": event_type, "mail": mail, key: dict(body or {})}


def ses_bounce_notification(
    *,
    recipient: str,
    mqd_id: str | None = None,
    message_id: str = "0100018f2b3c4d5e-6f7a8b9c-1d2e-4f3a-9b8c-7d6e5f4a3b2c-000000",
    topic_arn: str = TOPIC_ARN,
    bounce_type: str = "Permanent",
    bounce_subtype: str = "General",
    diagnostic_code: str = "smtp; 550 5.1.1 user unknown",
    sns_message_id: str | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """An unsigned SNS Notification carrying an SES (event publishing) Bounce for
    ``recipient`` of the SES message ``message_id``, tagged with ``mqd_id``."""
    now = timestamp or sns_time()
    bounce = {
        "bounceType": bounce_type,
        "bounceSubType": bounce_subtype,
        "bouncedRecipients": [
            {
                "emailAddress": recipient,
                "action": "failed",
                "status": "5.1.1" if bounce_type == "Permanent" else "4.0.0",
                "diagnosticCode": diagnostic_code,
            }
        ],
        "timestamp": now,
        "feedbackId": f"01000157c44f053b-{uuid.uuid4()}-000000",
        "reportingMTA": "dsn; a8-30.smtp-out.amazonses.com",
    }
    event = ses_event(
        "Bounce", recipients=[recipient], mqd_id=mqd_id, message_id=message_id, body=bounce
    )
    return sns_notification(event, topic_arn=topic_arn, message_id=sns_message_id, timestamp=now)
