"""The JSON API's own answer bodies: an error, and the lists it wraps messages in.

The handlers (``mqd.http.api``) answer with these, serialised by ``dataclasses.asdict``; the
OpenAPI document (``mqd.http.openapi``) has their schemas generated from the same classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from mqd.tracking.answers import MessageHistory, MessageSummary

__all__ = [
    "Error",
    "HistoryList",
    "MessageList",
    "Problem",
    "Submitted",
    "SuppressionItem",
    "SuppressionList",
]


@dataclass(frozen=True)
class Error:
    """Every error the API answers, with its HTTP status."""

    #: What is wrong and what to do.
    error: str


@dataclass(frozen=True)
class MessageList:
    """Messages, newest first."""

    messages: list[MessageSummary]


@dataclass(frozen=True)
class HistoryList:
    """Messages with their events, newest first."""

    messages: list[MessageHistory]


@dataclass(frozen=True)
class SuppressionItem:
    """An address mqd does not send to, for one account."""

    address: str
    #: The [[account]] it applies to ("": mail no account claims).
    account: str
    #: "bounce" (a 5.1.x reply or a provider's bounce report), "complaint" or "manual".
    kind: str
    #: Why: the original reply or report, or the operator's note.
    reason: str
    #: When it was suppressed (Unix time).
    since: float
    #: When it ends (Unix time); null: for good.
    until: float | None


@dataclass(frozen=True)
class SuppressionList:
    """The suppression list, newest first."""

    suppressions: list[SuppressionItem]


@dataclass(frozen=True)
class Submitted:
    """A message taken by ``POST /api/v1/messages``: durable in the queue."""

    #: mqd's queue id (what its logs, ``mqd queue`` and ``/api/v1/messages/{key}`` name).
    id: str
    #: The message's ``Message-ID`` header (one was added when it had none).
    message_id: str


@dataclass(frozen=True)
class Problem:
    """An error of ``POST /api/v1/messages`` (RFC 9457, ``application/problem+json``)."""

    #: ``urn:mqd:problem:<slug>``: what kind of problem (docs/api.md lists them).
    type: str
    title: str
    #: The HTTP status, again.
    status: int
    #: What is wrong with this request and what to do.
    detail: str
