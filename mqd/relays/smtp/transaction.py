"""One SMTP transaction on a connected, logged-in client: MAIL, RCPT for each recipient, DATA.

Command by command (``stepwise``), or, when the server offers PIPELINING, MAIL, every RCPT and
DATA in one write (``pipelined``) with the same outcome. The addresses come written for the wire
(``mqd.relays.smtp.wire.screen``): the recipients that could not be written are not sent to and
get their own 553 in the result. The result has a reply per recipient; a failure of the whole
message is raised as a relay error (``translate``, which makes anything unexpected transient),
and a reused connection found dead before anything was sent as ``StaleConnection``, for the
caller to retry on a fresh one.
"""

from __future__ import annotations

import contextlib
import dataclasses

import aiosmtplib

from mqd.errors import PermanentRelayError, RelayError
from mqd.message.envelope import Envelope
from mqd.message.reply import Reply
from mqd.relays.base import DeliveryResult
from mqd.relays.smtp.pipelining import PipeliningProtocol
from mqd.relays.smtp.settings import SMTPSettings
from mqd.relays.smtp.translate import translate
from mqd.relays.smtp.wire import Addresses, mail_words

__all__ = ["StaleConnection", "run_transaction"]


class StaleConnection(Exception):
    """A reused connection turned out dead before anything was sent: retry on a fresh one."""


async def run_transaction(
    client: aiosmtplib.SMTP,
    pipeline: PipeliningProtocol | None,
    envelope: Envelope,
    addresses: Addresses,
    *,
    reused: bool,
    settings: SMTPSettings,
    relay: str,
) -> DeliveryResult:
    """Send ``envelope`` to ``addresses.recipients`` (at least one) on ``client`` (``pipeline``
    when the server pipelines); the result has a reply for each of ``envelope.recipients``.
    Raises StaleConnection, or a RelayError for a failure of the whole message: a transient one
    for any exception that is not the server's answer (mqd's own bug never bounces mail)."""
    try:
        if pipeline is not None:
            result = await _pipelined(client, pipeline, envelope, addresses, reused, settings)
        else:
            result = await _stepwise(client, envelope, addresses, reused, settings)
    except (StaleConnection, RelayError):
        raise
    except Exception as exc:
        raise translate(exc, settings, relay) from exc
    if addresses.refused:
        result = dataclasses.replace(result, replies={**result.replies, **addresses.refused})
    return result


async def _stepwise(
    client: aiosmtplib.SMTP,
    envelope: Envelope,
    addresses: Addresses,
    reused: bool,
    s: SMTPSettings,
) -> DeliveryResult:
    """One command, one reply: for a server that does not offer PIPELINING."""
    mail_options = _mail_options(client, envelope, addresses)
    replies: dict[str, Reply] = {}
    try:
        await _mail(client, mail_words(addresses.sender, mail_options), envelope.sender, s)
    except aiosmtplib.SMTPServerDisconnected as exc:
        if reused:
            raise StaleConnection() from exc
        raise
    except aiosmtplib.SMTPSenderRefused as exc:
        await _reset(client, s)
        return DeliveryResult.all(
            addresses.recipients, Reply.parse(exc.code, exc.message), remote=s.host
        )
    accepted = []
    for rcpt, words in zip(addresses.recipients, addresses.rcpts, strict=True):
        try:
            await _rcpt(client, words, rcpt, s)
        except aiosmtplib.SMTPRecipientRefused as exc:
            replies[rcpt] = Reply.parse(exc.code, exc.message)
        else:
            accepted.append(rcpt)
    if not accepted:
        await _reset(client, s)
        return DeliveryResult(replies, remote=s.host)
    try:
        response = await client.data(envelope.message, timeout=s.data_timeout)
        reply = Reply.parse(response.code, response.message)
    except aiosmtplib.SMTPDataError as exc:
        reply = Reply.parse(exc.code, exc.message)
        await _reset(client, s)
    for rcpt in accepted:
        replies[rcpt] = reply
    return DeliveryResult(replies, remote=s.host)


async def _pipelined(
    client: aiosmtplib.SMTP,
    pipeline: PipeliningProtocol,
    envelope: Envelope,
    addresses: Addresses,
    reused: bool,
    s: SMTPSettings,
) -> DeliveryResult:
    """MAIL, every RCPT and DATA in one write, then the body: every reply is checked, as
    RFC 2920 asks, and the outcome is the same as command by command."""
    recipients = addresses.recipients
    group = [
        mail_words(addresses.sender, _mail_options(client, envelope, addresses)),
        *addresses.rcpts,
        (b"DATA",),
    ]
    try:
        responses = await pipeline.execute_group(group, timeout=s.command_timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
        client.close()  # as aiosmtplib does: the replies can no longer be paired
        if reused and isinstance(exc, aiosmtplib.SMTPServerDisconnected):
            raise StaleConnection() from exc
        raise
    if len(responses) < len(group):  # a 421: the server closed; it answers the rest
        client.close()
        responses += [responses[-1]] * (len(group) - len(responses))
    mail, data = responses[0], responses[-1]
    replies = {
        rcpt: Reply.parse(response.code, response.message)
        for rcpt, response in zip(recipients, responses[1:-1], strict=True)
    }
    accepted = [rcpt for rcpt, reply in replies.items() if reply.code in (250, 251)]
    if mail.code != 250:
        replies = dict.fromkeys(recipients, Reply.parse(mail.code, mail.message))
        accepted = []
    if data.code == 354 and not accepted:  # DATA taken though nobody is to receive it
        await _end_data(client, pipeline, None, s)  # ended empty: nothing is sent
        await _reset(client, s)
        return DeliveryResult(replies, remote=s.host)
    if data.code == 354:
        body = await _end_data(client, pipeline, envelope.message, s)
        reply = Reply.parse(body.code, body.message)
    else:
        reply = Reply.parse(data.code, data.message)
    if reply.code != 250 and client.is_connected:
        await _reset(client, s)
    for rcpt in accepted:
        replies[rcpt] = reply
    return DeliveryResult(replies, remote=s.host)


async def _end_data(
    client: aiosmtplib.SMTP,
    pipeline: PipeliningProtocol,
    message: bytes | None,
    s: SMTPSettings,
) -> aiosmtplib.SMTPResponse:
    try:
        return await pipeline.send_data(message, timeout=s.data_timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise


# MAIL and RCPT go through aiosmtplib's command layer (its timeouts, its CR/LF check, its closing
# on 421 or a lost connection) with the words mqd.relays.smtp.wire makes.


async def _mail(
    client: aiosmtplib.SMTP, words: tuple[bytes, ...], sender: str, s: SMTPSettings
) -> None:
    response = await client.execute_command(*words, timeout=s.command_timeout)
    if response.code != 250:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)


async def _rcpt(
    client: aiosmtplib.SMTP, words: tuple[bytes, ...], recipient: str, s: SMTPSettings
) -> None:
    response = await client.execute_command(*words, timeout=s.command_timeout)
    if response.code not in (250, 251):
        raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)


def _mail_options(client: aiosmtplib.SMTP, envelope: Envelope, addresses: Addresses) -> list[str]:
    """MAIL's parameters (SMTPUTF8, SIZE, BODY); a PermanentRelayError when the server cannot
    take the message at all."""
    options: list[str] = []
    if addresses.smtputf8:
        if not client.supports_extension("smtputf8"):
            raise PermanentRelayError(
                "the server does not support SMTPUTF8, needed for a non-ASCII address",
                reply=Reply(553, "the server does not support SMTPUTF8", "5.6.7"),
            )
        options.append("SMTPUTF8")
    if client.supports_extension("size"):
        message = envelope.message  # as sent: every bare LF becomes CRLF
        size = len(message) + message.count(b"\n") - message.count(b"\r\n")
        limit = client.esmtp_extensions.get("size", "").strip()
        if limit.isdigit() and 0 < int(limit) < size:
            raise PermanentRelayError(
                f"the message ({size} bytes) is larger than the server accepts ({limit})",
                reply=Reply(552, f"message size {size} exceeds the limit of {limit}", "5.3.4"),
            )
        options.append(f"SIZE={size}")
    if client.supports_extension("8bitmime") and not envelope.message.isascii():
        options.append("BODY=8BITMIME")
    return options


async def _reset(client: aiosmtplib.SMTP, s: SMTPSettings) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
        await client.rset(timeout=s.command_timeout)
