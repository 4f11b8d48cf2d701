"""The SES relay: SESv2 ``SendEmail`` with raw content, through botocore.

The MIME message goes to SES untouched (``Content.Raw``); the envelope goes beside it: the
envelope sender as ``FromEmailAddress`` (the identity SES checks, and where it forwards bounces
and complaints) and the envelope recipients as ``Destination``. For a raw message SES delivers to
``Destination`` and leaves the To/Cc headers as they are, so recipients mqd took from a (now
stripped) Bcc header are reached and stay invisible. SES takes at most 50 recipients per call:
larger envelopes are sent in several calls, each recipient getting the reply of its own call.

botocore is synchronous; its clients are thread-safe, so calls run in threads
(``asyncio.to_thread``) on one client per relay, created on first use (creating one loads the
service model, which is slow), with at most ``max_connections`` calls at once (the size of its
connection pool). aiobotocore would avoid the threads but pins exact botocore versions.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import re
from collections.abc import Sequence
from typing import Any, Self
from urllib.parse import urlsplit

import botocore.config
import botocore.exceptions
import botocore.session
from mqd import (
    DeliveryResult,
    Envelope,
    Options,
    PermanentRelayError,
    Relay,
    Reply,
    TransientRelayError,
)

from .settings import MQD_ID_TAG, SESSettings, read_settings
from .translate import CLIENT_RESET, Where, translate
from .webhook import SESWebhook

__all__ = ["MAX_RECIPIENTS", "SESRelay"]

log = logging.getLogger("mqd.relay.ses")

#: SES's limit on recipients (To, Cc and Bcc together) per message.
MAX_RECIPIENTS = 50
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_BOTOCORE_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


class SESRelay(Relay):
    network = True

    def __init__(self, name: str, settings: SESSettings) -> None:
        super().__init__(name)
        self.settings = settings
        self.where = Where(name, settings.region, settings.profile, settings.configuration_set)
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._client_lock = asyncio.Lock()
        self._client: Any = None
        self._remote = urlsplit(settings.endpoint_url).hostname if settings.endpoint_url else None
        self._webhook = SESWebhook(name, settings.webhook) if settings.webhook else None

    @classmethod
    def from_options(cls, name: str, options: Options) -> Self:
        return cls(name, read_settings(name, options))

    def describe(self) -> str:
        s = self.settings
        parts = [f"ses {s.region}"]
        if s.endpoint_url:
            parts.append(f"via {s.endpoint_url}")
        if s.profile:
            parts.append(f"profile {s.profile}")
        if s.configuration_set:
            parts.append(f"configuration set {s.configuration_set}")
        return " ".join(parts)

    def webhook(self) -> SESWebhook | None:
        """SES's events through SNS, when ``webhook_topics`` is set (mqd_ses/webhook.py)."""
        return self._webhook

    # -- delivery ---------------------------------------------------------------------------------

    async def deliver(self, envelope: Envelope) -> DeliveryResult:
        """Send ``envelope`` in calls of up to 50 recipients.

        Raises when the whole message fails: too large, a sender SES cannot take, or a first call
        that fails (nothing was sent). Once a call succeeded, later failures become per-recipient
        replies: a transient one stops the sending (the rest is retried with it), a permanent one
        applies to its own call's recipients only.
        """
        self._check_size(envelope)
        sender = _wire_sender(envelope.sender)
        replies: dict[str, Reply] = {}
        sendable: list[tuple[str, str]] = []
        for rcpt in envelope.recipients:
            wire = _wire_address(rcpt)
            if wire is None:
                replies[rcpt] = Reply(
                    553, "SES does not support SMTPUTF8: the local part must be ASCII", "5.6.7"
                )
            else:
                sendable.append((rcpt, wire))
        batches = [
            sendable[i : i + MAX_RECIPIENTS] for i in range(0, len(sendable), MAX_RECIPIENTS)
        ]
        message_ids: list[str] = []
        for index, batch in enumerate(batches):
            try:
                message_id = await self._send(envelope, sender, [wire for _, wire in batch])
            except TransientRelayError as exc:
                if not message_ids and not replies:
                    raise
                reply = exc.reply or Reply(451, str(exc), "4.3.0")
                deferred = [rcpt for later in batches[index:] for rcpt, _ in later]
                replies.update(dict.fromkeys(deferred, reply))
                log.warning("relay %s: %s; %d recipients deferred", self.name, exc, len(deferred))
                break
            except PermanentRelayError as exc:
                if len(batches) == 1 and not replies:
                    raise
                reply = exc.reply or Reply(554, str(exc), "5.0.0")
                replies.update(dict.fromkeys((rcpt for rcpt, _ in batch), reply))
                continue
            message_ids.append(message_id)
            accepted = Reply(250, f"Ok queued as {message_id}", "2.0.0")
            replies.update(dict.fromkeys((rcpt for rcpt, _ in batch), accepted))
        return DeliveryResult(
            replies,
            remote=self._remote,
            provider_id=",".join(message_ids) or None,
        )

    def _check_size(self, envelope: Envelope) -> None:
        size, limit = len(envelope.message), self.settings.max_message_size
        if size > limit:
            raise PermanentRelayError(
                f"relay {self.name}: the message ({size} bytes) is larger than SES accepts "
                f"({limit} bytes, max_message_size)",
                reply=Reply(552, f"message size {size} exceeds the SES limit of {limit}", "5.3.4"),
            )

    def _request(
        self, envelope: Envelope, sender: str | None, wires: Sequence[str]
    ) -> dict[str, Any]:
        s = self.settings
        tags = [{"Name": name, "Value": value} for name, value in s.tags]
        if envelope.id:
            tag_value = _TAG_UNSAFE.sub("_", envelope.id)[:256]
            tags.insert(0, {"Name": MQD_ID_TAG, "Value": tag_value})
        request: dict[str, Any] = {
            "Destination": {"ToAddresses": list(wires)},
            "Content": {"Raw": {"Data": envelope.message}},
        }
        if sender is not None:
            request["FromEmailAddress"] = sender
        if tags:
            request["EmailTags"] = tags
        if s.configuration_set:
            request["ConfigurationSetName"] = s.configuration_set
        return request

    async def _send(self, envelope: Envelope, sender: str | None, wires: Sequence[str]) -> str:
        """One SendEmail call; its MessageId, or a translated error."""
        request = self._request(envelope, sender, wires)
        async with self._slots:
            try:
                client = await self._get_client()
                response = await asyncio.to_thread(client.send_email, **request)
            except _BOTOCORE_ERRORS as exc:
                if isinstance(exc, CLIENT_RESET):
                    self._client = None  # look the credentials up afresh next time
                raise translate(exc, self.where) from exc
        # A 200 is SES's acceptance, with or without the id it normally carries.
        return str(response.get("MessageId") or "(no MessageId)")

    # -- the client -------------------------------------------------------------------------------

    async def _get_client(self) -> Any:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    self._client = await asyncio.to_thread(self._create_client)
                    if self._remote is None:
                        self._remote = urlsplit(self._client.meta.endpoint_url).hostname
        return self._client

    def _create_client(self) -> Any:
        s = self.settings
        config = botocore.config.Config(
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            max_pool_connections=s.max_connections,
            retries={"mode": "standard", "total_max_attempts": s.api_attempts},
            user_agent_extra=f"mqd-ses/{_version()}",
        )
        session = botocore.session.Session(profile=s.profile)
        return session.create_client(
            "sesv2", region_name=s.region, endpoint_url=s.endpoint_url, config=config
        )

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)


def _wire_address(address: str) -> str | None:
    """``address`` as SES takes it (no SMTPUTF8: an ASCII local part, a Punycode domain), or None
    when it cannot be written so."""
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        return None
    if domain.isascii():
        return address
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return None


def _wire_sender(sender: str) -> str | None:
    """The FromEmailAddress for ``sender``; None for the null sender (a bounce mqd sends), which
    lets SES take the identity from the message's From header."""
    if not sender:
        return None
    wire = _wire_address(sender)
    if wire is None:
        raise PermanentRelayError(
            f"the sender {sender!r} cannot be sent through SES, which does not support SMTPUTF8",
            reply=Reply(553, "SES does not support SMTPUTF8: the sender must be ASCII", "5.6.7"),
        )
    return wire


def _version() -> str:
    try:
        return importlib.metadata.version("mqd-ses")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
