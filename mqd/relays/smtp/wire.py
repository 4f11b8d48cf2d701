"""Envelope addresses as MAIL and RCPT carry them, checked before any connection is made.

``screen`` writes every address of an envelope as its command will carry it. A recipient that
cannot be written is refused on its own, with a permanent 553 5.1.3 naming the problem; the others
still go out. A sender that cannot be written fails the whole message (PermanentRelayError, 553
5.1.7: RFC 3463's "bad sender's mailbox address syntax", so the bounce and the failed/ record say
the sender was the problem, not a recipient). Nothing is ever sent as a different address.

The words are what aiosmtplib's mail() and rcpt() would send, without their reparsing every
address with the email package (a tenth of a millisecond per message): a plain address goes out
as it is; any other goes through aiosmtplib's quote_address and is refused when that would send a
different address, characters unsafe on a command line, or a control character (which
aiosmtplib's command layer would refuse in the middle of the transaction).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiosmtplib.email import quote_address
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX

from mqd.errors import PermanentRelayError
from mqd.message.envelope import Envelope
from mqd.message.reply import Reply

__all__ = ["PLAIN_ADDRESS", "Addresses", "mail_words", "screen", "wire_address"]

#: local-part@domain as RFC 5322 dot-atoms, ASCII: aiosmtplib's quote_address() gives "<" + it +
#: ">" unchanged (tests/test_perf_smtp.py checks), so it is sent without reparsing.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
PLAIN_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*")


@dataclass(frozen=True)
class Addresses:
    """An envelope's addresses, written for the wire."""

    #: ``<sender>`` as MAIL FROM carries it.
    sender: bytes
    #: The recipients that can be written, in the envelope's order.
    recipients: tuple[str, ...]
    #: Their RCPT commands, in the same order.
    rcpts: tuple[tuple[bytes, ...], ...]
    #: The recipients that cannot be written, each with its 553 5.1.3.
    refused: dict[str, Reply]
    #: True when an address to be sent is not ASCII: MAIL needs SMTPUTF8.
    smtputf8: bool


def screen(envelope: Envelope) -> Addresses:
    """``envelope``'s addresses for the wire. Raises PermanentRelayError (553 5.1.7) when the
    sender cannot be written; a recipient that cannot be written is in ``refused``."""
    try:
        sender = wire_address(envelope.sender)
    except ValueError as exc:
        raise PermanentRelayError(
            f"the sender cannot be sent safely: {exc}",
            reply=Reply(553, f"mqd cannot write the sender address on the wire: {exc}", "5.1.7"),
        ) from None
    recipients: list[str] = []
    rcpts: list[tuple[bytes, ...]] = []
    refused: dict[str, Reply] = {}
    for rcpt in envelope.recipients:
        try:
            rcpts.append((b"RCPT", b"TO:" + wire_address(rcpt)))
        except ValueError as exc:
            refused[rcpt] = Reply(553, f"mqd cannot write this address on the wire: {exc}", "5.1.3")
        else:
            recipients.append(rcpt)
    smtputf8 = not envelope.sender.isascii() or not all(r.isascii() for r in recipients)
    return Addresses(sender, tuple(recipients), tuple(rcpts), refused, smtputf8)


def wire_address(address: str) -> bytes:
    """``<address>`` as MAIL or RCPT carries it (UTF-8, which SMTPUTF8 announces when it is not
    ASCII). ValueError, naming the problem, for an address that cannot be sent as itself."""
    if not address or PLAIN_ADDRESS.fullmatch(address):
        return b"<" + address.encode("ascii") + b">"  # the common case: nothing to check
    quoted = quote_address(address)  # ValueError for characters unsafe on a command line
    if quoted != f"<{address}>":
        raise ValueError(f"{address!r} would go out as {quoted}")
    try:
        wire = b"<" + address.encode("utf-8") + b">"
    except UnicodeEncodeError:
        raise ValueError(f"{address!r} is not valid Unicode") from None
    if COMMAND_INJECTION_REGEX.search(wire):
        raise ValueError(f"{address!r} holds a control character")
    return wire


def mail_words(sender: bytes, options: list[str]) -> tuple[bytes, ...]:
    """MAIL's words for the ``sender`` that ``screen`` wrote, with its ``options``."""
    return (b"MAIL", b"FROM:" + sender, *[option.encode("ascii") for option in options])
