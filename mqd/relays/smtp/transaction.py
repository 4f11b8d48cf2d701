"""One SMTP transaction on a connected, logged-in client: MAIL, RCPT for each recipient, DATA.

Command by command (``stepwise``), or, when the server offers PIPELINING, MAIL, every RCPT and
DATA in one write (``pipelined``) with the same outcome. The result has a reply per recipient;
a failure of the whole message is raised as a relay error (``translate``), and a reused
connection found dead before anything was sent as ``StaleConnection``, for the caller to retry on
a fresh one.
"""

from __future__ import annotations

import contextlib

import aiosmtplib

from mqd.errors import PermanentRelayError, RelayError
from mqd.message.envelope import Envelope
from mqd.message.reply import Reply
from mqd.relays.base import DeliveryResult
from mqd.relays.smtp.pipelining import PipeliningProtocol
from mqd.relays.smtp.settings import SMTPSettings
from mqd.relays.smtp.translate import translate
from mqd.relays.smtp.wire import mail_words, rcpt_words

__all__ = ["StaleConnection", "run_transaction"]


class StaleConnection(Exception):
    """A reused connection turned out dead before anything was sent: retry on a fresh one."""


async def run_transaction(
    client: aiosmtplib.SMTP,
    pipeline: PipeliningProtocol | None,
    envelope: Envelope,
    *,
    reused: bool,
    settings: SMTPSettings,
    relay: str,
) -> DeliveryResult:
    """Send ``envelope`` on ``client`` (``pipeline`` when the server pipelines). Raises
    StaleConnection, or a RelayError for a failure of the whole message."""
    try:
        if pipeline is not None:
            return await _pipelined(client, pipeline, envelope, reused, settings)
        return await _stepwise(client, envelope, reused, settings)
    except (StaleConnection, RelayError):
        raise
    except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
        raise translate(exc, settings, relay) from exc


async def _stepwise(
    client: aiosmtplib.SMTP, envelope: Envelope, reused: bool, s: SMTPSettings
) -> DeliveryResult:
    """One command, one reply: for a server that does not offer PIPELINING."""
    mail_options, encoding = _mail_options(client, envelope)
    replies: dict[str, Reply] = {}
    try:
        await _mail(client, envelope.sender, mail_options, encoding, s)
    except aiosmtplib.SMTPServerDisconnected as exc:
        if reused:
            raise StaleConnection() from exc
        raise
    except aiosmtplib.SMTPSenderRefused as exc:
        await _reset(client, s)
        return DeliveryResult.all(
            envelope.recipients, Reply.parse(exc.code, exc.message), remote=s.host
        )
    accepted = []
    for rcpt in envelope.recipients:
        try:
            await _rcpt(client, rcpt, encoding, s)
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
    reused: bool,
    s: SMTPSettings,
) -> DeliveryResult:
    """MAIL, every RCPT and DATA in one write, then the body: every reply is checked, as
    RFC 2920 asks, and the outcome is the same as command by command."""
    mail_options, encoding = _mail_options(client, envelope)
    recipients = envelope.recipients
    group = [
        mail_words(envelope.sender, mail_options, encoding),
        *(rcpt_words(rcpt, encoding) for rcpt in recipients),
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
    client: aiosmtplib.SMTP, sender: str, options: list[str], encoding: str, s: SMTPSettings
) -> None:
    response = await client.execute_command(
        *mail_words(sender, options, encoding), timeout=s.command_timeout
    )
    if response.code != 250:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)


async def _rcpt(client: aiosmtplib.SMTP, recipient: str, encoding: str, s: SMTPSettings) -> None:
    response = await client.execute_command(
        *rcpt_words(recipient, encoding), timeout=s.command_timeout
    )
    if response.code not in (250, 251):
        raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)


def _mail_options(client: aiosmtplib.SMTP, envelope: Envelope) -> tuple[list[str], str]:
    """MAIL's parameters (SMTPUTF8, SIZE, BODY) and the addresses' encoding; a
    PermanentRelayError when the server cannot take the message at all."""
    options: list[str] = []
    encoding = "ascii"
    if envelope.needs_smtputf8:
        if not client.supports_extension("smtputf8"):
            raise PermanentRelayError(
                "the server does not support SMTPUTF8, needed for a non-ASCII address",
                reply=Reply(553, "the server does not support SMTPUTF8", "5.6.7"),
            )
        options.append("SMTPUTF8")
        encoding = "utf-8"
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
    return options, encoding


async def _reset(client: aiosmtplib.SMTP, s: SMTPSettings) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
        await client.rset(timeout=s.command_timeout)
