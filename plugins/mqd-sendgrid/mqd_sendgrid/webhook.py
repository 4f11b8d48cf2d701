"""SendGrid's Signed Event Webhook: verify a batch of events and turn it into ``ProviderEvent``s.

SendGrid signs each POST with ECDSA P-256 / SHA-256 over the bytes of the
``X-Twilio-Email-Event-Webhook-Timestamp`` header followed by the raw body, and sends the DER
signature, base64-encoded, in ``X-Twilio-Email-Event-Webhook-Signature``. The public key is the
"verification key" SendGrid shows once "Signed Event Webhook" is on: base64 of a DER
SubjectPublicKeyInfo. Nothing is parsed before the signature and the timestamp check out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from mqd import ProviderEvent, Status, Webhook, WebhookRejected, WebhookReply, WebhookRequest

__all__ = [
    "DEFAULT_MAX_AGE",
    "EVENT_STATUS",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SendGridWebhook",
    "load_verification_key",
    "to_provider_event",
]

log = logging.getLogger("mqd.webhook.sendgrid")

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
DEFAULT_MAX_AGE = 300.0

#: SendGrid's event names and the status each becomes; any other event is skipped.
EVENT_STATUS: Mapping[str, Status] = {
    "processed": Status.DISPATCHED,
    "delivered": Status.DELIVERED,
    "deferred": Status.DEFERRED,
    "bounce": Status.BOUNCED,
    "dropped": Status.DROPPED,
    "open": Status.OPENED,
    "click": Status.CLICKED,
    "spamreport": Status.COMPLAINED,
    "unsubscribe": Status.UNSUBSCRIBED,
    "group_unsubscribe": Status.UNSUBSCRIBED,
}
#: The event's own fields kept in ``detail`` (the rest is noise or personal data: IP, user agent).
DETAIL_FIELDS = (
    "event",
    "type",
    "status",
    "url",
    "attempt",
    "bounce_classification",
    "sg_message_id",
)
# Unix seconds as SendGrid sends them; int() alone would also take "+1", " 1" or "1_0".
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_MAX_REPLY = 1000
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def load_verification_key(text: str) -> ec.EllipticCurvePublicKey:
    """The P-256 public key in ``text``: SendGrid's base64 verification key (DER
    SubjectPublicKeyInfo), or the same key as PEM. ValueError saying what is wrong otherwise."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
        else:
            der = base64.b64decode("".join(text.split()), validate=True)
            key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a base64 EC public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"a {type(key).__name__.lstrip('_')}, not an EC (ECDSA) public key")
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"an EC key on {key.curve.name}, SendGrid signs with P-256 (secp256r1)")
    return key


class SendGridWebhook(Webhook):
    """Served at ``/webhooks/<relay name>`` when the relay has a ``webhook_verification_key``."""

    source = "sendgrid"

    def __init__(
        self, relay: str, key: ec.EllipticCurvePublicKey, *, max_age: float = DEFAULT_MAX_AGE
    ) -> None:
        self.relay = relay
        self.key = key
        self.max_age = max_age

    async def handle(self, request: WebhookRequest) -> WebhookReply:
        # ECDSA verification takes well under a millisecond: no need to leave the event loop.
        if request.method.upper() != "POST":
            raise WebhookRejected(
                f"{request.method} instead of POST: SendGrid posts its events", status=405
            )
        self._verify(request)
        try:
            data = json.loads(request.body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
            raise WebhookRejected(f"signed, but the body is not JSON ({exc})", status=400) from None
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise WebhookRejected(
                f"signed, but the body is a JSON {_kind(data)}, not an array of event objects",
                status=400,
            )
        events = []
        for item in data:
            event = to_provider_event(item, received_at=request.received_at)
            if event is None:
                log.debug(
                    "relay %s: SendGrid event %r is not tracked: skipped",
                    self.relay,
                    item.get("event"),
                )
            else:
                events.append(event)
        return WebhookReply(events=events)

    def _verify(self, request: WebhookRequest) -> None:
        """Raise WebhookRejected (403) unless the request is signed by the key and fresh."""
        # Lower-case by contract; folding again costs nothing and spares a hand-built request.
        headers = {name.lower(): value for name, value in request.headers.items()}
        signature_text = headers.get(SIGNATURE_HEADER.lower(), "").strip()
        timestamp_text = headers.get(TIMESTAMP_HEADER.lower(), "").strip()
        if not signature_text or not timestamp_text:
            missing = [
                name
                for name, value in (
                    (SIGNATURE_HEADER, signature_text),
                    (TIMESTAMP_HEADER, timestamp_text),
                )
                if not value
            ]
            raise WebhookRejected(
                f"no {' and no '.join(missing)} header: not a signed SendGrid request (is "
                "'Signed Event Webhook' on in SendGrid's Event Webhook settings?)"
            )
        if not _TIMESTAMP.fullmatch(timestamp_text):
            raise WebhookRejected(
                f"{TIMESTAMP_HEADER} {timestamp_text[:40]!r} is not a Unix time in seconds"
            )
        try:
            signature = base64.b64decode(signature_text, validate=True)
        except (binascii.Error, ValueError):
            raise WebhookRejected(f"{SIGNATURE_HEADER} is not base64") from None
        try:
            self.key.verify(signature, timestamp_text.encode("ascii") + request.body, _ECDSA_SHA256)
        except (InvalidSignature, ValueError):
            raise WebhookRejected(
                "the signature does not verify with webhook_verification_key: forged, altered "
                "on the way, or signed with another key (if the key was regenerated in "
                "SendGrid, copy the new one into the config)"
            ) from None
        skew = int(timestamp_text) - request.received_at
        if abs(skew) > self.max_age:
            when = "old" if skew < 0 else "in the future"
            raise WebhookRejected(
                f"signed, but its timestamp is {abs(skew):.0f}s {when}, beyond webhook_max_age "
                f"({self.max_age:g}s): a replayed request, or a clock that is off (check NTP)"
            )


def to_provider_event(item: Mapping[str, Any], *, received_at: float) -> ProviderEvent | None:
    """One SendGrid event object as a ProviderEvent, or None for an event mqd does not track.

    Custom args (``mqd_id``) are top-level keys of the event; ``sg_message_id`` is the send's
    ``X-Message-Id`` followed by ``.`` and SendGrid's routing suffix."""
    name = item.get("event")
    status = EVENT_STATUS.get(name) if isinstance(name, str) else None
    if status is None:
        return None
    event_id = _text(item.get("sg_event_id"))
    if event_id is None:
        # A stable id, so that SendGrid's retry of the same batch is still recorded once.
        canonical = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        event_id = "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()
    message_id = _text(item.get("sg_message_id"))
    # What relay.py recorded as the provider id: the X-Message-Id, before the first ".".
    provider_id = message_id.split(".", 1)[0] if message_id else None
    reply = _text(item.get("reason")) or _text(item.get("response"))
    if reply is not None:
        reply = " ".join(reply.split())
        if len(reply) > _MAX_REPLY:
            reply = reply[: _MAX_REPLY - 3] + "..."
    return ProviderEvent(
        status=status,
        at=_timestamp(item.get("timestamp"), received_at),
        event_id=event_id,
        recipient=_text(item.get("email")),
        mqd_id=_text(item.get("mqd_id")),
        provider_id=provider_id or None,
        reply=reply or None,
        detail={key: item[key] for key in DETAIL_FIELDS if item.get(key) not in (None, "")},
    )


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _timestamp(value: Any, received_at: float) -> float:
    """SendGrid's ``timestamp`` (Unix seconds); when it has none, when the batch arrived."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str) and _TIMESTAMP.fullmatch(value.strip()):
        return float(value.strip())
    return received_at


def _kind(data: object) -> str:
    if isinstance(data, list):
        return "array holding a non-object"
    names = {dict: "object", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(data), "null")
