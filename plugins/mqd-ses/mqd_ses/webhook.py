"""SES events through Amazon SNS: the relay's status webhook at ``/webhooks/<relay name>``.

SES publishes its events (a configuration set's SNS event destination, or an identity's
feedback notifications) to an SNS topic; an HTTPS subscription of the topic POSTs each one here
as an SNS message. SNS signs every message with a key whose certificate it serves from
``https://sns.<region>.amazonaws.com/...pem``; a message is taken only when, in this order:

- its TopicArn is one of ``webhook_topics`` (anyone can subscribe any URL to their own topic);
- its Timestamp is no older than ``webhook_max_age`` and not from the future (a captured
  request cannot be replayed later);
- its SigningCertURL is https on an SNS host (or under a ``webhook_certificate_urls`` prefix),
  so the certificate comes over TLS from AWS and not from whoever sent the message;
- its Signature verifies with that certificate over the fields AWS documents for its Type
  (SignatureVersion 1: SHA1withRSA, 2: SHA256withRSA).

A SubscriptionConfirmation that passes is confirmed by visiting its SubscribeURL (the same host
rule applies), so subscribing the endpoint needs no manual step. See docs/plugins/ses.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from mqd import ProviderEvent, Status, Webhook, WebhookRejected, WebhookReply, WebhookRequest

from .settings import MQD_ID_TAG, WebhookSettings

__all__ = [
    "MESSAGE_TYPES",
    "SESWebhook",
    "ses_events",
    "sns_string_to_sign",
    "url_refusal",
]

log = logging.getLogger("mqd.relay.ses")

_CONFIRMATION_FIELDS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
#: The fields of the string to sign, per message Type, in the (byte-sorted) order AWS documents
#: ("Verifying the signatures of Amazon SNS messages"). Subject is signed only when present.
MESSAGE_TYPES: Mapping[str, tuple[str, ...]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _CONFIRMATION_FIELDS,
    "UnsubscribeConfirmation": _CONFIRMATION_FIELDS,
}
_OPTIONAL_FIELDS = frozenset({"Subject"})

#: SNS's own hosts: sns.<region>.amazonaws.com, and .amazonaws.com.cn in the China regions.
_SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")
#: A message dated this far ahead of our clock is refused (clocks drift; replays don't).
MAX_FUTURE = 300.0
#: Certificates (their public keys) kept, by URL; SNS rotates them rarely.
CERTIFICATE_CACHE_SIZE = 32
#: The most read from a certificate or confirmation URL (an SNS certificate is ~2 KB).
FETCH_LIMIT = 64 * 1024
#: SNS waits about 15 s for an answer; a fetch must leave room for the rest.
DEFAULT_FETCH_TIMEOUT = 5.0

_SUBSCRIPTION_ARN = re.compile(r"<SubscriptionArn>([^<]{1,1024})</SubscriptionArn>")


class _FetchError(Exception):
    pass


class SESWebhook(Webhook):
    """Verifies SNS messages for one relay and turns SES's events into ProviderEvents."""

    source = "ses"

    def __init__(
        self,
        relay: str,
        settings: WebhookSettings,
        *,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
    ) -> None:
        self.relay = relay
        self.settings = settings
        self.fetch_timeout = fetch_timeout
        self._keys: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()
        self._fetching: dict[str, asyncio.Task[rsa.RSAPublicKey]] = {}

    async def handle(self, request: WebhookRequest) -> WebhookReply:
        if request.method.upper() != "POST":
            raise WebhookRejected(f"{request.method} instead of POST", status=405)
        message = self._parse(request)
        kind, topic, message_id = message["Type"], message["TopicArn"], message["MessageId"]
        what = f"SNS {kind} {message_id!r}"
        if topic not in self.settings.topics:
            raise WebhookRejected(
                f"{what}: TopicArn {topic!r} is not in webhook_topics of relay {self.relay} "
                "(add it there if the topic is yours)"
            )
        self._check_age(what, message["Timestamp"], request.received_at)
        await self._verify(what, message)

        if kind == "SubscriptionConfirmation":
            return await self._confirm(what, message)
        if kind == "UnsubscribeConfirmation":
            log.warning(
                "relay %s: SNS unsubscribed this endpoint from topic %s: no more SES events "
                "arrive from it until it is subscribed again",
                self.relay,
                topic,
            )
            return WebhookReply()
        try:
            event = json.loads(message["Message"])
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
            events = ses_events(message_id, event, fallback_at=_parse_time(message["Timestamp"]))
        except (ValueError, RecursionError) as exc:
            raise WebhookRejected(
                f"{what} from topic {topic}: the Message is not an SES event ({exc}); publish "
                "only SES events to the topics in webhook_topics",
                status=400,
            ) from None
        return WebhookReply(events=events)

    # -- the envelope -----------------------------------------------------------------------------

    def _parse(self, request: WebhookRequest) -> dict[str, str]:
        """The SNS message's string fields; 400 for anything that is not one."""
        header = request.headers.get("x-amz-sns-message-type")
        if header is None:
            raise WebhookRejected(
                "not an SNS message: no x-amz-sns-message-type header", status=400
            )
        if request.headers.get("x-amz-sns-rawdelivery", "").lower() == "true":
            raise WebhookRejected(
                "SNS raw message delivery is on for this subscription: raw messages carry no "
                "signature. Turn RawMessageDelivery off on the subscription",
                status=400,
            )
        try:
            body = json.loads(request.body)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise WebhookRejected(f"the body is not SNS JSON: {exc}", status=400) from None
        if not isinstance(body, dict):
            raise WebhookRejected("the body is not SNS JSON: not an object", status=400)
        kind = body.get("Type")
        if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
            raise WebhookRejected(f"not an SNS message: Type is {kind!r}", status=400)
        if kind != header:
            raise WebhookRejected(
                f"the x-amz-sns-message-type header ({header!r}) differs from the Type ({kind!r})",
                status=400,
            )
        required = (*MESSAGE_TYPES[kind], "SignatureVersion", "Signature", "SigningCertURL")
        message: dict[str, str] = {}
        for name in required:
            value = body.get(name)
            if value is None and name in _OPTIONAL_FIELDS:
                continue
            if not isinstance(value, str):
                raise WebhookRejected(
                    f"SNS {kind} {body.get('MessageId')!r}: {name} is "
                    f"{'missing' if value is None else 'not a string'}",
                    status=400,
                )
            message[name] = value
        return message

    def _check_age(self, what: str, timestamp: str, now: float) -> None:
        try:
            sent = _parse_time(timestamp)
        except ValueError:
            raise WebhookRejected(
                f"{what}: Timestamp {timestamp!r} is not an ISO 8601 time", status=400
            ) from None
        if now - sent > self.settings.max_age:
            raise WebhookRejected(
                f"{what}: Timestamp {timestamp!r} is {now - sent:.0f}s old, older than "
                f"webhook_max_age ({self.settings.max_age:.0f}s): refused as a possible replay "
                "(if this machine's clock is wrong, fix it)"
            )
        if sent - now > MAX_FUTURE:
            raise WebhookRejected(
                f"{what}: Timestamp {timestamp!r} is {sent - now:.0f}s in the future: refused "
                "(if this machine's clock is wrong, fix it)"
            )

    # -- the signature ----------------------------------------------------------------------------

    async def _verify(self, what: str, message: Mapping[str, str]) -> None:
        version = message["SignatureVersion"]
        algorithm: hashes.HashAlgorithm
        if version == "1":
            # SNS's default; SHA1 is what AWS signs with unless the topic says 2.
            algorithm = hashes.SHA1()  # noqa: S303
        elif version == "2":
            algorithm = hashes.SHA256()
        else:
            raise WebhookRejected(f"{what}: unknown SignatureVersion {version!r}")
        cert_url = message["SigningCertURL"]
        refusal = url_refusal(cert_url, self.settings.certificate_urls, certificate=True)
        if refusal:
            raise WebhookRejected(
                f"{what}: SigningCertURL {cert_url!r} {refusal}: the certificate must come "
                "from SNS (or a prefix in webhook_certificate_urls)"
            )
        try:
            signature = base64.b64decode(message["Signature"], validate=True)
        except (binascii.Error, ValueError):
            raise WebhookRejected(f"{what}: the Signature is not base64") from None
        key = await self._public_key(what, cert_url)
        try:
            key.verify(signature, sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise WebhookRejected(
                f"{what}: the signature does not verify with the certificate at {cert_url} "
                "(forged or altered)"
            ) from None

    async def _public_key(self, what: str, url: str) -> rsa.RSAPublicKey:
        key = self._keys.get(url)
        if key is not None:
            self._keys.move_to_end(url)
            return key
        # One fetch per URL however many messages wait for it.
        task = self._fetching.get(url)
        if task is None:
            task = asyncio.create_task(self._load_key(url))
            self._fetching[url] = task
            task.add_done_callback(lambda done: self._fetched(url, done))
        try:
            key = await asyncio.shield(task)
        except _FetchError as exc:
            # Perhaps a genuine message and a passing network fault: 503 makes SNS retry it.
            raise WebhookRejected(
                f"{what}: cannot get the signing certificate {url}: {exc}", status=503
            ) from None
        except ValueError as exc:
            raise WebhookRejected(f"{what}: the certificate at {url} is unusable: {exc}") from None
        self._keys[url] = key
        while len(self._keys) > CERTIFICATE_CACHE_SIZE:
            self._keys.popitem(last=False)
        return key

    def _fetched(self, url: str, task: asyncio.Task[rsa.RSAPublicKey]) -> None:
        self._fetching.pop(url, None)
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have been cancelled

    async def _load_key(self, url: str) -> rsa.RSAPublicKey:
        pem = await self._fetch(url)
        certificate = x509.load_pem_x509_certificate(pem)  # ValueError when it is not one
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("its key is not an RSA key")
        return key

    async def _fetch(self, url: str) -> bytes:
        """GET ``url`` (no redirects: they could lead anywhere): its body, or _FetchError."""
        timeout = aiohttp.ClientTimeout(total=self.fetch_timeout)
        try:
            # trust_env: an HTTPS_PROXY for the way out is honoured, as botocore does.
            async with (
                aiohttp.ClientSession(timeout=timeout, trust_env=True) as session,
                session.get(url, allow_redirects=False) as response,
            ):
                if response.status != 200:
                    raise _FetchError(f"HTTP {response.status} {response.reason or ''}".strip())
                body = await response.content.read(FETCH_LIMIT + 1)
        except TimeoutError:
            raise _FetchError(f"no answer within {self.fetch_timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise _FetchError(str(exc) or type(exc).__name__) from None
        if len(body) > FETCH_LIMIT:
            raise _FetchError(f"the answer is larger than {FETCH_LIMIT} bytes")
        return body

    # -- subscriptions ----------------------------------------------------------------------------

    async def _confirm(self, what: str, message: Mapping[str, str]) -> WebhookReply:
        topic, url = message["TopicArn"], message["SubscribeURL"]
        refusal = url_refusal(url, self.settings.certificate_urls, certificate=False)
        if refusal:
            raise WebhookRejected(
                f"{what}: SubscribeURL {url!r} {refusal}: not visited, the subscription to "
                f"{topic} stays unconfirmed"
            )
        try:
            answer = await self._fetch(url)
        except _FetchError as exc:
            log.error(
                "relay %s: could not confirm the SNS subscription to topic %s: %s: %s. "
                "SNS retries; or confirm it in the SNS console",
                self.relay,
                topic,
                _without_query(url),
                exc,
            )
            return WebhookReply(status=503, body="subscription not confirmed")
        found = _SUBSCRIPTION_ARN.search(answer.decode("utf-8", "replace"))
        log.warning(
            "relay %s: confirmed the SNS subscription of this endpoint to topic %s%s: SES "
            "events published there are now recorded",
            self.relay,
            topic,
            f" ({found.group(1)})" if found else "",
        )
        return WebhookReply()


# -- helpers shared with mqd_ses.testing --------------------------------------------------------


def sns_string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The bytes SNS signs: each documented field of the message's Type that is present, as
    ``name\\nvalue\\n``, in AWS's order."""
    lines: list[str] = []
    for name in MESSAGE_TYPES[str(message["Type"])]:
        value = message.get(name)
        if value is None and name in _OPTIONAL_FIELDS:
            continue
        lines += (name, str(value))
    return ("\n".join(lines) + "\n").encode("utf-8")


def url_refusal(url: str, prefixes: Sequence[str], *, certificate: bool) -> str | None:
    """Why ``url`` may not be fetched (None when it may): it must be under one of ``prefixes``
    (same scheme, host and port, and a path that starts with the prefix's), or https on an SNS
    host (and a .pem file for a certificate)."""
    if not url.isascii() or not url.isprintable() or any(c in url for c in " \\"):
        # urlsplit and the HTTP client could read such a URL differently: refuse, not guess.
        return "has characters a plain URL does not"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "is not a URL"
    if parts.username is not None:
        return "carries a user name"
    if ".." in unquote(parts.path).split("/"):
        return "has '..' in its path"
    if any(_under(parts, prefix) for prefix in prefixes):
        return None
    if parts.scheme != "https":
        return "is not https"
    if not _SNS_HOST.fullmatch(parts.hostname or ""):
        return "is not on an SNS host (sns.<region>.amazonaws.com)"
    if parts.port not in (None, 443):
        return "names a port of its own"
    if certificate and not parts.path.endswith(".pem"):
        return "is not a .pem file"
    return None


def _under(parts: SplitResult, prefix: str) -> bool:
    allowed = urlsplit(prefix)
    return (
        parts.scheme == allowed.scheme
        and parts.hostname == allowed.hostname
        and _port(parts) == _port(allowed)
        and parts.path.startswith(allowed.path)
    )


def _port(parts: SplitResult) -> int | None:
    return parts.port or {"https": 443, "http": 80}.get(parts.scheme)


def _without_query(url: str) -> str:
    """A SubscribeURL for the log: its query holds the confirmation token."""
    return url.split("?", 1)[0]


def _parse_time(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time (SNS and SES write UTC, with a Z)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment.timestamp()


# -- SES's events ---------------------------------------------------------------------------------

#: SES's event name -> (the status, the key of the event's own object).
_EVENTS: Mapping[str, tuple[Status, str]] = {
    "Send": (Status.DISPATCHED, "send"),
    "Delivery": (Status.DELIVERED, "delivery"),
    # Transient bounces map to bounced too: SES publishes a bounce only once it has stopped
    # retrying ("Transient bounces are sent to you when a message has soft bounced several
    # times, and Amazon SES has stopped trying to re-deliver it", event publishing docs), so
    # this message will not reach the recipient, although a later one might.
    "Bounce": (Status.BOUNCED, "bounce"),
    "Complaint": (Status.COMPLAINED, "complaint"),
    "Reject": (Status.DROPPED, "reject"),
    "Open": (Status.OPENED, "open"),
    "Click": (Status.CLICKED, "click"),
    "DeliveryDelay": (Status.DEFERRED, "deliveryDelay"),
    "Rendering Failure": (Status.DROPPED, "failure"),
    "Subscription": (Status.UNSUBSCRIBED, "subscription"),
}
#: Bounce subtypes for mail SES never sent: the address was on a suppression list.
_SUPPRESSED = frozenset({"Suppressed", "OnAccountSuppressionList"})
#: The event's own fields kept in ``detail`` (SES's names), per event.
_DETAIL_FIELDS: Mapping[str, tuple[str, ...]] = {
    "Bounce": ("bounceType", "bounceSubType", "feedbackId", "reportingMTA"),
    "Complaint": ("complaintFeedbackType", "complaintSubType", "feedbackId"),
    "Delivery": ("reportingMTA", "processingTimeMillis"),
    "Reject": ("reason",),
    "Open": ("userAgent",),
    "Click": ("link", "linkTags", "userAgent"),
    "DeliveryDelay": ("delayType", "expirationTime", "reportingMTA"),
    "Rendering Failure": ("templateName", "errorMessage"),
    "Subscription": ("contactList", "newTopicPreferences", "source"),
}


def ses_events(
    sns_message_id: str, event: Mapping[str, Any], *, fallback_at: float
) -> list[ProviderEvent]:
    """The ProviderEvents of one SES event (event publishing's ``eventType`` or an identity
    notification's ``notificationType``): one per recipient it concerns. Unknown event types
    give none. Raises ValueError for a record that is not an SES event."""
    name = event.get("eventType") or event.get("notificationType")
    mail = event.get("mail")
    if not isinstance(name, str) or not isinstance(mail, dict):
        raise ValueError("no eventType or notificationType, or no mail object")
    if name not in _EVENTS:
        log.info("SES event type %r is not one mqd records; ignored", name)
        return []
    status, key = _EVENTS[name]
    body = event.get(key)
    if not isinstance(body, dict):
        body = {}
    at = _event_time(body, mail, fallback_at)
    detail: dict[str, Any] = {"event": name}
    for field in _DETAIL_FIELDS.get(name, ()):
        if body.get(field) is not None:
            detail[field] = body[field]
    if body.get("bounceSubType") in _SUPPRESSED or body.get("complaintSubType") in _SUPPRESSED:
        # SES did not send it (the address is on a suppression list): "dropped", as the
        # vocabulary says, rather than a bounce or complaint by the recipient's server.
        status = Status.DROPPED
    reply = _text(body.get("smtpResponse") or body.get("reason") or body.get("errorMessage"))
    mqd_id = _mqd_id(mail)
    provider_id = _text(mail.get("messageId"))
    return [
        ProviderEvent(
            status=status,
            at=at,
            event_id=f"{sns_message_id}:{recipient or ''}",
            recipient=recipient,
            mqd_id=mqd_id,
            provider_id=provider_id,
            reply=_text(own.get("diagnosticCode")) or reply,
            detail={**detail, **{k: own[k] for k in ("status", "action") if k in own}},
        )
        for recipient, own in _recipients(name, body, mail)
    ]


def _recipients(
    name: str, body: Mapping[str, Any], mail: Mapping[str, Any]
) -> list[tuple[str | None, dict[str, Any]]]:
    """(recipient, its own fields) for each recipient the event concerns; SES says so for
    bounces, complaints, deliveries and delays, else the event is the whole message's."""
    listed: Any = {
        "Bounce": body.get("bouncedRecipients"),
        "Complaint": body.get("complainedRecipients"),
        "Delivery": body.get("recipients"),
        "DeliveryDelay": body.get("delayedRecipients"),
    }.get(name)
    if not isinstance(listed, list) or not listed:
        listed = mail.get("destination")
    found: list[tuple[str | None, dict[str, Any]]] = []
    for item in listed if isinstance(listed, list) else []:
        own: dict[str, Any] = item if isinstance(item, dict) else {}
        address = item if isinstance(item, str) else own.get("emailAddress")
        if isinstance(address, str) and address.strip():
            found.append((address.strip(), own))
    return found or [(None, {})]


def _event_time(body: Mapping[str, Any], mail: Mapping[str, Any], fallback: float) -> float:
    """When it happened: the event's own timestamp, else the send's (a Send, Reject or
    Rendering Failure has none of its own), else the SNS message's."""
    for value in (body.get("timestamp"), mail.get("timestamp")):
        if isinstance(value, str):
            try:
                return _parse_time(value)
            except ValueError:
                continue
    return fallback


def _mqd_id(mail: Mapping[str, Any]) -> str | None:
    """mqd's queue id, from the ``mqd_id`` message tag the relay sends (SES publishes tags
    with event publishing only, not with identity notifications)."""
    tags = mail.get("tags")
    values = tags.get(MQD_ID_TAG) if isinstance(tags, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    return None
