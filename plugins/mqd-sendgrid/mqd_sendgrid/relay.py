"""The SendGrid relay: one ``POST /v3/mail/send`` per message over httpx.

One ``httpx.AsyncClient`` per relay, created at the first delivery and closed by ``aclose``.
What SendGrid (or the network) answered becomes a result or an mqd error in ``_translate``
only: 2xx delivered; 429, 5xx, timeouts and connection errors transient (with the far end's
``Retry-After``); 401/403 (the operator's API key) and 404/405 (the operator's ``base_url``)
transient too, with an ERROR log, because mail is never bounced for the operator's config;
413 and every other 4xx permanent, with SendGrid's own error text in the reply.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Self

import httpx
from mqd import (
    DeliveryResult,
    Envelope,
    Options,
    PermanentRelayError,
    Relay,
    RelayError,
    Reply,
    TransientRelayError,
)

from .convert import to_sendgrid
from .settings import DEFAULT_BASE_URL, SendGridSettings, read_settings
from .webhook import SendGridWebhook

__all__ = ["SEND_PATH", "SendGridRelay"]

log = logging.getLogger("mqd.relay.sendgrid")

SEND_PATH = "/v3/mail/send"
#: A Retry-After (or rate-limit reset) further away than this is taken as this.
MAX_RETRY_AFTER = 86400.0
#: Queue ids already warned about (one WARNING per message, not per attempt).
_WARNED_LIMIT = 10000
_MAX_ERROR_TEXT = 500


class SendGridRelay(Relay):
    network = True

    def __init__(self, name: str, settings: SendGridSettings) -> None:
        super().__init__(name)
        self.settings = settings
        self._client: httpx.AsyncClient | None = None
        self._fields = settings.request_fields()
        self._warned: OrderedDict[str, None] = OrderedDict()
        # Never without a key: unsigned events would let anyone rewrite a message's history.
        self._webhook = (
            SendGridWebhook(name, settings.webhook_key, max_age=settings.webhook_max_age)
            if settings.webhook_key is not None
            else None
        )

    @classmethod
    def from_options(cls, name: str, options: Options) -> Self:
        settings = read_settings(options)
        if settings.sandbox_mode:
            log.warning(
                "relay %s: sandbox_mode = true: SendGrid validates each message and sends "
                "nothing, yet mqd counts it as delivered",
                name,
            )
        return cls(name, settings)

    def webhook(self) -> SendGridWebhook | None:
        return self._webhook

    def describe(self) -> str:
        sandbox = " sandbox" if self.settings.sandbox_mode else ""
        return f"sendgrid {self.settings.host}{sandbox}"

    async def deliver(self, envelope: Envelope) -> DeliveryResult:
        conversion = to_sendgrid(envelope)  # raises PermanentRelayError for what would break
        if conversion.lost:
            self._warn_once(envelope.id, conversion.lost)
        body = json.dumps({**conversion.payload, **self._fields}, ensure_ascii=False)
        # The conversion decodes every text with U+FFFD for bad bytes; "replace" is only a net
        # for a lone surrogate that slipped through, which strict UTF-8 would crash on.
        content = body.encode("utf-8", "replace")
        try:
            response = await self._http().post(SEND_PATH, content=content)
        except httpx.HTTPError as exc:
            error = _translate(exc, envelope.recipients, self)
            assert isinstance(error, RelayError)  # an exception never becomes a result
            raise error from exc
        answer = _translate(response, envelope.recipients, self)
        if isinstance(answer, RelayError):
            raise answer
        return answer

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            s = self.settings
            from . import __version__

            self._client = httpx.AsyncClient(
                base_url=s.base_url,
                headers={
                    "Authorization": f"Bearer {s.api_key.reveal()}",
                    "Accept": "application/json",
                    "Content-Type": "application/json",
                    "User-Agent": f"mqd-sendgrid/{__version__}",
                },
                # A request waits for a free connection as long as needed; each one then has
                # ``timeout`` to connect, send and get SendGrid's answer.
                timeout=httpx.Timeout(s.timeout, pool=None),
                limits=httpx.Limits(
                    max_connections=s.max_connections, max_keepalive_connections=s.max_connections
                ),
                follow_redirects=False,
            )
        return self._client

    def _warn_once(self, queue_id: str, lost: Sequence[str]) -> None:
        if queue_id and queue_id in self._warned:
            return
        log.warning(
            "%s relay %s: SendGrid cannot carry all of this message: %s",
            queue_id or "(no queue id)",
            self.name,
            "; ".join(lost),
            extra={"mqd": {"id": queue_id, "relay": self.name, "not_carried": list(lost)}},
        )
        if queue_id:
            self._warned[queue_id] = None
            if len(self._warned) > _WARNED_LIMIT:
                self._warned.popitem(last=False)


def _translate(
    answer: httpx.Response | httpx.HTTPError, recipients: tuple[str, ...], relay: SendGridRelay
) -> DeliveryResult | RelayError:
    """SendGrid's answer, or httpx's exception, as a result or the error to raise."""
    s = relay.settings
    where = f"{s.base_url}{SEND_PATH}"
    if isinstance(answer, httpx.HTTPError):
        return _transport_error(answer, where, s.timeout)
    status = answer.status_code
    if 200 <= status < 300:
        message_id = answer.headers.get("X-Message-Id") or None
        text = f"accepted by SendGrid, X-Message-Id {message_id}" if message_id else "accepted"
        if status == 200:  # SendGrid's answer in sandbox mode: valid, and not sent
            text += " (sandbox mode: validated, not sent)"
        return DeliveryResult(
            dict.fromkeys(recipients, Reply(250, text, "2.0.0")),
            remote=s.host,
            provider_id=message_id,
        )
    errors = _error_text(answer)
    if status == 429:
        wait = _retry_after(answer, rate_limit=True)
        later = f"; SendGrid asks to wait {wait:.0f}s" if wait is not None else ""
        return TransientRelayError(
            f"{where} answered 429: rate limited ({errors}){later}; mqd retries later",
            reply=Reply(451, f"rate limited by SendGrid: {errors}", "4.7.0"),
            retry_after=wait,
        )
    if status >= 500:
        return TransientRelayError(
            f"{where} answered {status}, a SendGrid server error ({errors}); mqd retries later",
            reply=Reply(451, f"SendGrid server error {status}: {errors}", "4.3.0"),
            retry_after=_retry_after(answer, rate_limit=False),
        )
    if status in (401, 403):
        fix = (
            "check that api_key_file / api_key_env / api_key holds a valid key"
            if status == 401
            else "give the API key the Mail Send permission, and check that the From address "
            "is a verified Sender Identity or on an authenticated domain"
        )
        log.error(
            "relay %s: SendGrid refused the API key (%d: %s): %s; mail stays queued and is "
            "retried until this is fixed",
            relay.name,
            status,
            errors,
            fix,
        )
        return TransientRelayError(
            f"{where} answered {status} ({errors}): {fix}",
            reply=Reply(451, f"SendGrid refused the API key ({status}): {errors}", "4.7.0"),
        )
    if status in (404, 405):
        log.error(
            "relay %s: %s answered %d: base_url %r is not SendGrid's v3 API (it should be "
            "%r, or the EU one); mail stays queued and is retried until this is fixed",
            relay.name,
            where,
            status,
            s.base_url,
            DEFAULT_BASE_URL,
        )
        return TransientRelayError(
            f"{where} answered {status}: check base_url",
            reply=Reply(451, f"{where} is not SendGrid's mail send API ({status})", "4.3.5"),
        )
    if status == 408:
        return TransientRelayError(
            f"{where} answered 408: the request took too long to arrive; mqd retries later",
            reply=Reply(451, "SendGrid timed out reading the request", "4.4.2"),
        )
    if status == 413:
        return PermanentRelayError(
            f"{where} answered 413: the message is larger than SendGrid accepts ({errors}); "
            "send large files as links, or relay this message over SMTP",
            reply=Reply(552, f"message too large for SendGrid: {errors}", "5.3.4"),
        )
    if 400 <= status < 500:
        return PermanentRelayError(
            f"{where} refused the message with {status}: {errors}; the message must be "
            "changed at the producer to be sent",
            reply=Reply(554, f"SendGrid refused the message ({status}): {errors}", "5.6.0"),
        )
    return TransientRelayError(
        f"{where} answered an unexpected {status}; check base_url (mqd does not follow redirects)",
        reply=Reply(451, f"unexpected HTTP status {status} from SendGrid", "4.3.5"),
    )


def _transport_error(exc: httpx.HTTPError, where: str, timeout: float) -> RelayError:
    if isinstance(exc, httpx.ConnectTimeout):
        return TransientRelayError(
            f"cannot connect to {where} within {timeout:g}s ({exc!r}); check the network, DNS "
            "and any proxy (HTTPS_PROXY); mqd retries later",
            reply=Reply(451, "timed out connecting to SendGrid", "4.4.1"),
        )
    if isinstance(exc, httpx.TimeoutException):
        return TransientRelayError(
            f"{where} did not answer within {timeout:g}s ({exc!r}); mqd retries later (if "
            "SendGrid took the message anyway, it is sent twice: delivery is at least once)",
            reply=Reply(451, "timed out waiting for SendGrid", "4.4.1"),
        )
    if isinstance(exc, httpx.ConnectError):
        return TransientRelayError(
            f"cannot connect to {where}: {exc}; check base_url, the network, DNS and any "
            "proxy (HTTPS_PROXY); mqd retries later",
            reply=Reply(451, "cannot connect to SendGrid", "4.4.1"),
        )
    if isinstance(exc, httpx.TransportError):
        return TransientRelayError(
            f"the connection to {where} failed ({exc!r}); mqd retries later",
            reply=Reply(451, "connection to SendGrid lost", "4.4.2"),
        )
    return TransientRelayError(
        f"the request to {where} failed: {exc!r}; mqd retries later",
        reply=Reply(451, f"request to SendGrid failed: {type(exc).__name__}", "4.3.0"),
    )


def _error_text(response: httpx.Response) -> str:
    """SendGrid's ``errors[].message`` (with the field at fault), or the start of the body."""
    try:
        data = response.json()
    except ValueError:
        data = None
    parts = []
    if isinstance(data, dict) and isinstance(data.get("errors"), list):
        for error in data["errors"]:
            if isinstance(error, dict) and error.get("message"):
                field_name = error.get("field")
                prefix = f"{field_name}: " if isinstance(field_name, str) and field_name else ""
                parts.append(f"{prefix}{error['message']}")
    text = "; ".join(parts) or response.text or response.reason_phrase or "no details"
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 3] + "..."


def _retry_after(response: httpx.Response, *, rate_limit: bool) -> float | None:
    """Seconds to wait: ``Retry-After`` (seconds or an HTTP date), else for a 429 SendGrid's
    ``X-RateLimit-Reset`` (a Unix time). Capped at a day; None when the far end said nothing."""
    value = response.headers.get("Retry-After", "").strip()
    seconds: float | None = None
    if value.isdigit():
        seconds = float(value)
    elif value:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None and when.tzinfo is not None:
            seconds = when.timestamp() - time.time()
    if seconds is None and rate_limit:
        reset = response.headers.get("X-RateLimit-Reset", "").strip()
        if reset.isdigit():
            seconds = float(reset) - time.time()
    if seconds is None:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
