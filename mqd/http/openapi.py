"""The OpenAPI 3.1 description of the HTTP server, served at ``/api/v1/openapi.json``.

The paths, parameters and descriptions are Python data here, next to the handlers they
describe; the answers' schemas (``components/schemas``) are generated from the types the
handlers serialise (``mqd.http.schema``), so that they cannot drift apart. tests/test_http.py
validates the document with openapi-spec-validator, checks that every route of the server is in
it, and validates real answers against its schemas.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

from mqd.admin.status import Status as QueueStatus
from mqd.http.bodies import Error, HistoryList, MessageList, SuppressionList
from mqd.http.schema import Components
from mqd.http.submitdoc import SUBMIT_SCHEME, submit_operation
from mqd.tracking.answers import MessageHistory, RecipientStatus, TimelineEvent
from mqd.tracking.vocabulary import Status
from mqd.version import __version__

__all__ = ["openapi"]

#: Component names other than the class's own (kept as the document has always named them).
_NAMES: dict[type, str] = {
    QueueStatus: "QueueStatus",
    RecipientStatus: "Recipient",
    TimelineEvent: "Event",
}

_Ref = Callable[[type], dict[str, Any]]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "403": {"$ref": "#/components/responses/Forbidden"},
}
_TRACKING_ERRORS = {**_ERRORS, "503": {"$ref": "#/components/responses/TrackingOff"}}

_LIMIT: dict[str, Any] = {
    "name": "limit",
    "in": "query",
    "required": False,
    "description": "How many messages to list at most (newest first).",
    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
}


def _path(name: str, description: str) -> dict[str, Any]:
    """A path parameter: a control character in it is answered 400."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"{description}; a control character (newline, tab, NUL ...) is a 400.",
        "schema": {"type": "string"},
    }


def _paths(ref: _Ref) -> dict[str, Any]:
    """The paths; ``ref(cls)`` is the schema of an answer of type ``cls``."""
    return {
        "/api/v1/messages": {
            "get": {
                "operationId": "recentMessages",
                "summary": "The newest messages, all or those showing one status.",
                "parameters": [
                    _LIMIT,
                    {
                        "name": "account",
                        "in": "query",
                        "required": False,
                        "description": (
                            "Only the messages of this [[account]]: the history per user of a "
                            "sending platform."
                        ),
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": ref(Status),
                    },
                ],
                "responses": {
                    "200": _json(ref(MessageList), "Messages, newest first."),
                    **_TRACKING_ERRORS,
                },
            }
        },
        "/api/v1/messages/{key}": {
            "get": {
                "operationId": "message",
                "summary": "One message's history: its recipients and every event.",
                "parameters": [_path("key", "The queue id or the Message-ID (with or without <>)")],
                "responses": {
                    "200": _json(ref(MessageHistory), "The message."),
                    "404": _json(ref(Error), "No such message in the event store."),
                    **_TRACKING_ERRORS,
                },
            }
        },
        "/api/v1/history/{key}": {
            "get": {
                "operationId": "history",
                "summary": "The histories of the messages a queue id, Message-ID or address names.",
                "description": (
                    "An address matches messages from it and messages to it, so this is the "
                    "history of everything mqd sent to (or for) one user. A key holding a control "
                    "character (a newline, CR, tab, NUL, DEL) is answered 400, not looked up."
                ),
                "parameters": [
                    _path("key", "A queue id, a Message-ID (with or without <>) or an address"),
                    {**_LIMIT, "schema": {**_LIMIT["schema"], "default": 20}},
                ],
                "responses": {
                    "200": _json(ref(HistoryList), "Histories, newest first."),
                    **_TRACKING_ERRORS,
                },
            }
        },
        "/api/v1/recipients/{address}/messages": {
            "get": {
                "operationId": "recipientMessages",
                "summary": "The messages sent to one address, with each recipient's status.",
                "parameters": [_path("address", "An email address (case does not matter)"), _LIMIT],
                "responses": {
                    "200": _json(ref(MessageList), "Messages to the address, newest first."),
                    **_TRACKING_ERRORS,
                },
            }
        },
        "/api/v1/failures": {
            "get": {
                "operationId": "failures",
                "summary": (
                    "Messages that went wrong: a recipient bounced, dropped or complained, or "
                    "the message was rejected or failed."
                ),
                "parameters": [
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "description": (
                            "Only those that changed since then: seconds since the epoch or an "
                            "ISO 8601 date-time (UTC unless it names a zone)."
                        ),
                        "schema": {"type": "string"},
                    },
                    _LIMIT,
                ],
                "responses": {
                    "200": _json(ref(MessageList), "Failed messages, newest first."),
                    **_TRACKING_ERRORS,
                },
            }
        },
        "/api/v1/suppressions": {
            "get": {
                "operationId": "suppressions",
                "summary": "The suppression list: recipients mqd does not send to again.",
                "parameters": [
                    {
                        "name": "account",
                        "in": "query",
                        "required": False,
                        "description": "Only this [[account]]'s list ('' for no account).",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json(ref(SuppressionList), "Suppressed addresses, newest first."),
                    "403": {"$ref": "#/components/responses/Forbidden"},
                },
            },
            "post": {
                "operationId": "suppress",
                "summary": "Suppress addresses (needs the operator token).",
                "security": [{"operator": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["addresses"],
                                "properties": {
                                    "addresses": {"type": "array", "items": {"type": "string"}},
                                    "account": {"type": "string", "default": ""},
                                    "reason": {"type": "string"},
                                    "for_seconds": {
                                        "type": ["number", "null"],
                                        "description": "How long; null or absent: for good.",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"added": {"type": "array", "items": {"type": "string"}}},
                        },
                        "The addresses added (one already suppressed as long is not).",
                    ),
                    **_ERRORS,
                },
            },
        },
        "/api/v1/suppressions/{address}": {
            "delete": {
                "operationId": "unsuppress",
                "summary": "Take an address off the list (needs the operator token).",
                "security": [{"operator": []}],
                "parameters": [
                    _path("address", "The address"),
                    {
                        "name": "account",
                        "in": "query",
                        "required": False,
                        "description": "Only from this account's list (default: every one).",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"removed": {"type": "integer"}}},
                        "How many suppressions went.",
                    ),
                    "404": _json(ref(Error), "The address is not on the list."),
                    **_ERRORS,
                },
            }
        },
        "/api/v1/status": {
            "get": {
                "operationId": "status",
                "summary": "The queue: counts by state, oldest age, failed count, relay health.",
                "responses": {
                    "200": _json(ref(QueueStatus), "The queue overview."),
                    "403": {"$ref": "#/components/responses/Forbidden"},
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {
                    "200": _json({"type": "object"}, "The OpenAPI description."),
                    "403": {"$ref": "#/components/responses/Forbidden"},
                },
            }
        },
        "/webhooks/{relay}": {
            "post": {
                "operationId": "webhook",
                "summary": "A provider's status events for the relay named in the path.",
                "description": (
                    "Needs no token: the relay's plugin checks the provider's signature and "
                    "answers 403 (or another 4xx) without recording anything when it does not "
                    "hold. Events are recorded before the answer is sent; a 500 asks the "
                    "provider to retry."
                ),
                "security": [{}],
                "parameters": [
                    {
                        "name": "relay",
                        "in": "path",
                        "required": True,
                        "description": "The relay's name in mqd's config ([relays.<name>]).",
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"*/*": {"schema": {}}},
                    "description": "The provider's payload, as it sends it.",
                },
                "responses": {
                    "200": {"description": "Taken (the provider's plugin may answer otherwise)."},
                    "403": {"description": "Not genuine (bad signature, stale timestamp ...)."},
                    "404": {"description": "No such relay, or it has no webhook."},
                    "413": {"description": "Larger than [http] max_body."},
                    "500": {"description": "Could not be recorded: the provider retries."},
                },
            }
        },
    }


@functools.cache
def _document() -> dict[str, Any]:
    components = Components(_NAMES)
    ref = components.ref
    paths = _paths(ref)
    paths["/api/v1/messages"]["post"] = submit_operation(ref)
    responses = {
        "BadRequest": _json(ref(Error), "A query or path value is not usable."),
        "Forbidden": _json(
            ref(Error), "Neither on this machine nor carrying the token: says how to."
        ),
        "TrackingOff": _json(ref(Error), "[tracking] is off or paused: no history."),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mqd",
            "version": __version__,
            "summary": "The mail queue daemon's read-only API: message histories and the queue.",
            "description": (
                "Answers clients on the daemon's own machine (loopback, no proxy headers) and any "
                "client that sends the configured token as 'Authorization: Bearer <token>'. "
                "Provider webhooks need no token: each proves itself with the provider's signature."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{}, {"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "submit": SUBMIT_SCHEME,
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "The token of [http] token (token_file, token_env) in mqd's config."
                    ),
                },
                "operator": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "The token of [http] operator_token in mqd's config: for what changes "
                        "what mqd sends (the suppression list)."
                    ),
                },
            },
            "responses": responses,
            "schemas": components.schemas,
        },
    }


def openapi() -> dict[str, Any]:
    """The document (a copy: callers may change theirs)."""
    return copy.deepcopy(_document())
