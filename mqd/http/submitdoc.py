"""The OpenAPI description of ``POST /api/v1/messages`` (``mqd.http.submit``): its request and
answer schemas generated from ``mqd.intake.submit.request.JsonMessage`` and
``mqd.http.bodies.Submitted`` / ``Problem``, as the rest of the document's are."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mqd.http.bodies import Problem, Submitted
from mqd.intake.submit.request import JsonMessage

__all__ = ["SUBMIT_SCHEME", "submit_operation"]

SUBMIT_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": (
        "The token of a [[submit]] table (token_file, token_env) in mqd's config: it says which "
        "table's relay and allowed senders apply. Not the [http] token, and no exemption for "
        "this machine."
    ),
}

_PROBLEMS = {
    "400": "Malformed: not JSON, a field of the wrong type or unknown, a bad Idempotency-Key.",
    "401": "No submit token, or not one of a [[submit]] table (WWW-Authenticate says so).",
    "403": "The sender (envelope or From) is not allowed for this table: nothing queued.",
    "413": "Larger than [http] max_body or [queue] max_message_size.",
    "415": "Neither application/json nor message/rfc822.",
    "422": (
        "The message cannot be sent: no recipient, an unusable address, a bad send_at, an "
        "Idempotency-Key used before for another request."
    ),
    "429": "The sender's [[account]] is over its limit (Retry-After).",
    "503": "The queue cannot take messages now, or mqd is stopping (Retry-After).",
}

_ENVELOPE = [
    {
        "name": "from",
        "in": "query",
        "required": False,
        "description": "A raw message's envelope sender (else X-Mqd-From, else its headers).",
        "schema": {"type": "string"},
    },
    {
        "name": "to",
        "in": "query",
        "required": False,
        "description": (
            "A raw message's envelope recipient, repeated for each (else X-Mqd-To, else its "
            "To, Cc and Bcc)."
        ),
        "schema": {"type": "array", "items": {"type": "string"}},
        "style": "form",
        "explode": True,
    },
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": (
            "A retry with the same key (per token, for [[submit]] idempotency_for, 24 h by "
            "default) gets the first answer and queues nothing; kept across restarts."
        ),
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    },
]


def submit_operation(ref: Callable[[type], dict[str, Any]]) -> dict[str, Any]:
    """The ``post`` operation of ``/api/v1/messages``; ``ref(cls)`` is a type's schema."""
    problem = {"application/problem+json": {"schema": ref(Problem)}}
    return {
        "operationId": "submitMessage",
        "summary": "Queue a message: raw RFC 5322, or JSON to compose it from.",
        "description": (
            "Answered 202 once the message is durable in the queue. The sender is checked "
            "against the [[submit]] table's allowed_senders while the caller waits. Send later "
            "with send_at (JSON) or the message's X-Mqd-Send-At header."
        ),
        "security": [{"submit": []}],
        "parameters": _ENVELOPE,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": ref(JsonMessage)},
                "message/rfc822": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "responses": {
            "202": {
                "description": "Queued (or the answer to an earlier request with this key).",
                "headers": {
                    "Location": {"schema": {"type": "string"}},
                    "Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}},
                },
                "content": {"application/json": {"schema": ref(Submitted)}},
            },
            **{
                status: {"description": text, "content": problem}
                for status, text in _PROBLEMS.items()
            },
        },
    }
