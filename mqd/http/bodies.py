"""The JSON API's own answer bodies: an error, and the lists it wraps messages in.

The handlers (``mqd.http.api``) answer with these, serialised by ``dataclasses.asdict``; the
OpenAPI document (``mqd.http.openapi``) has their schemas generated from the same classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from mqd.tracking.answers import MessageHistory, MessageSummary

__all__ = ["Error", "HistoryList", "MessageList"]


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
