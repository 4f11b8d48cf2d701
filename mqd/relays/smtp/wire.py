"""Envelope addresses as MAIL and RCPT carry them, and those commands' words.

The words are what aiosmtplib's mail() and rcpt() would send, without their reparsing every
address with the email package (a tenth of a millisecond per message): a plain address goes out
as it is; any other goes through aiosmtplib's quote_address and is refused (ValueError) when that
would send a different address or characters unsafe on a command line. mqd refuses rather than
reinterprets.
"""

from __future__ import annotations

import re

from aiosmtplib.email import quote_address

__all__ = ["PLAIN_ADDRESS", "check_quoting", "mail_words", "rcpt_words", "wire_address"]

#: local-part@domain as RFC 5322 dot-atoms, ASCII: aiosmtplib's quote_address() gives "<" + it +
#: ">" unchanged (tests/test_perf_smtp.py checks), so it is sent without reparsing.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
PLAIN_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*")


def check_quoting(address: str) -> None:
    """ValueError when aiosmtplib would send ``address`` as another one: its parser reads
    ``a"b@example.net`` as ``<a>``."""
    quoted = quote_address(address)  # ValueError for characters unsafe on a command line
    if quoted != f"<{address}>":
        raise ValueError(f"{address!r} would go out as {quoted}")


def wire_address(address: str, encoding: str) -> bytes:
    """``<address>`` as MAIL or RCPT carries it: what aiosmtplib's mail() and rcpt() send, for
    an address check_quoting lets through (a plain one needs no check)."""
    if address and not PLAIN_ADDRESS.fullmatch(address):
        check_quoting(address)
    return b"<" + address.encode(encoding) + b">"


def mail_words(sender: str, options: list[str], encoding: str) -> tuple[bytes, ...]:
    return (
        b"MAIL",
        b"FROM:" + wire_address(sender, encoding),
        *[option.encode("ascii") for option in options],
    )


def rcpt_words(recipient: str, encoding: str) -> tuple[bytes, ...]:
    return (b"RCPT", b"TO:" + wire_address(recipient, encoding))
