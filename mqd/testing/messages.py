"""Messages and envelopes for tests: what a producer drops into a spool, what a relay is given."""

from __future__ import annotations

import email.policy
from collections.abc import Mapping, Sequence
from email.parser import BytesParser

from mqd.message.compose import compose
from mqd.message.envelope import Envelope

__all__ = ["make_envelope", "make_message"]

_SMTP = email.policy.SMTP


def make_message(
    *,
    sender: str = "app@example.com",
    to: Sequence[str] = ("rcpt@example.net",),
    subject: str = "test",
    body: str = "hello",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """A complete RFC 5322 message (CRLF line endings, Date and Message-ID included), as an
    application would drop it into a spool. ``headers`` are added, or replace the header of the
    same name (e.g. ``{"Message-ID": "<fixed@example.com>"}``)."""
    message = compose(sender=sender, to=tuple(to), subject=subject, body=body)
    if not headers:
        return message
    parsed = BytesParser(policy=_SMTP).parsebytes(message)
    for name, value in headers.items():
        del parsed[name]
        parsed[name] = value
    return parsed.as_bytes(policy=_SMTP)


def make_envelope(
    message: bytes | None = None,
    *,
    sender: str = "app@example.com",
    recipients: Sequence[str] = ("rcpt@example.net",),
    id: str = "0000000000test",
) -> Envelope:
    """What ``Relay.deliver`` receives. Without ``message``, one from ``make_message`` with the
    same sender and recipients; a given message is used byte for byte (the daemon would have
    removed ``Bcc``, ``X-Sender`` and ``X-Receiver`` before relaying)."""
    if message is None:
        message = make_message(sender=sender, to=recipients)
    return Envelope(sender, tuple(recipients), message, id)
