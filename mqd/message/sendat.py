"""Send later: the ``X-Mqd-Send-At:`` header names when a message may first be attempted.

It takes an RFC 5322 date (``Tue, 08 Dec 2026 09:00:00 +0100``) or ISO 8601 with an offset
(``2026-12-08T09:00:00+01:00``, ``...Z``). A time without an offset is refused rather than
guessed: the application's time zone and mqd's may differ. The header is removed before the
message goes to a relay (``mqd.message.envelope.prepare_for_relay``).
"""

from __future__ import annotations

import email.utils
from datetime import datetime

from mqd.errors import MessageParseError

__all__ = ["SEND_AT_HEADER", "parse_send_at", "send_at_of"]

#: The header, lower-case as ``ParsedMessage.headers`` keys it.
SEND_AT_HEADER = "x-mqd-send-at"


def parse_send_at(value: str) -> float:
    """The Unix time ``value`` names; MessageParseError, naming the forms taken, otherwise."""
    text = value.strip()
    when: datetime | None = None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            when = None
    if when is None:
        raise MessageParseError(
            f"X-Mqd-Send-At: {text!r} is not a date: give an RFC 5322 date "
            "('Tue, 08 Dec 2026 09:00:00 +0100') or ISO 8601 with an offset "
            "('2026-12-08T09:00:00+01:00')"
        )
    if when.tzinfo is None or when.utcoffset() is None:
        raise MessageParseError(
            f"X-Mqd-Send-At: {text!r} has no time zone offset: add one "
            "('+01:00', 'Z'); mqd does not guess the application's time zone"
        )
    return when.timestamp()


def send_at_of(headers: dict[str, str], now: float, horizon: float) -> float | None:
    """When a message with ``headers`` is to go: None for now (no header, or a time already
    past: it goes now), else the time. Beyond ``now + horizon`` it is refused
    (MessageParseError): a typo'd year must not park a message for good."""
    value = headers.get(SEND_AT_HEADER)
    if value is None:
        return None
    when = parse_send_at(value)
    if when <= now:
        return None
    if when > now + horizon:
        days = horizon / 86400
        raise MessageParseError(
            f"X-Mqd-Send-At: {value.strip()!r} is more than {days:g} days ahead "
            "(queue.send_later_horizon): refused"
        )
    return when
