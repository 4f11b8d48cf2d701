"""W3C Trace Context for a queued message, without OpenTelemetry: which trace a message belongs
to, so that every span of it (made on any attempt, in any process, after any restart) joins the
same trace.

A message handed over with a ``traceparent`` header (or ``mqd send --traceparent``) continues
the application's trace: its trace id is the header's, and mqd's span for the message is a child
of the application's span. A message without one gets a trace id derived from its queue id. The
message's own span id is derived from the queue id in both cases, so the spans of later attempts
name it as their parent before it is exported (it ends with the message). Nothing here imports
more than ``hashlib`` and ``re``; ``mqd.tracing`` turns these numbers into spans.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

__all__ = [
    "MessageTrace",
    "Parent",
    "child_traceparent",
    "format_traceparent",
    "message_trace",
    "parse",
    "span_id_for",
]

# version "00" has exactly four fields; a later version may append more (the spec says to read
# the first four and ignore the rest). Upper case is invalid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
SAMPLED = 0x01


class Parent(NamedTuple):
    """A valid ``traceparent``: the application's trace, span and flags."""

    trace_id: int
    span_id: int
    flags: int


class MessageTrace(NamedTuple):
    """The trace of one message: its trace id, the id of its own span (the root of mqd's part),
    and the application's span it continues (None when it came without a ``traceparent``)."""

    trace_id: int
    span_id: int
    parent: Parent | None


def parse(value: str | None) -> Parent | None:
    """The parent a ``traceparent`` header value names; None when it is absent or invalid (an
    invalid one is ignored, as the spec says: the message then starts a trace of its own)."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace, span, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return Parent(trace_id, span_id, int(flags, 16))


def _derived(*parts: str, size: int) -> int:
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=size).digest()
    return int.from_bytes(digest, "big") or 1


def span_id_for(message_id: str, *what: str) -> int:
    """A span id derived from a queue id (and what the span is): the same in every process."""
    return _derived("mqd-span", message_id, *what, size=8)


def message_trace(message_id: str, traceparent: str | None) -> MessageTrace:
    """The trace of the message ``message_id`` that came with ``traceparent`` (or none)."""
    parent = parse(traceparent)
    trace_id = parent.trace_id if parent else _derived("mqd-trace", message_id, size=16)
    return MessageTrace(trace_id, span_id_for(message_id), parent)


def format_traceparent(trace_id: int, span_id: int, flags: int = SAMPLED) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def child_traceparent(message_id: str, traceparent: str | None, *what: str) -> str:
    """The ``traceparent`` of a span of ``message_id`` named by ``what`` (a bounce): a message
    mqd makes from this one (its DSN) continues this one's trace from there."""
    trace = message_trace(message_id, traceparent)
    flags = trace.parent.flags if trace.parent else SAMPLED
    return format_traceparent(trace.trace_id, span_id_for(message_id, *what), flags)
