"""The read-only JSON API under ``/api/v1/``: the event store's answers and the queue overview.

Every answer is JSON: a typed value (``mqd.tracking.answers``, ``mqd.admin.status``,
``mqd.http.bodies``) serialised with ``dataclasses.asdict``, whose schema in ``openapi.json``
(``mqd.http.openapi``) is generated from the same class. Every error is ``{"error": "..."}``
with its status (400 for a bad query value or a control character in a path's key or address,
404 for an unknown message, 503 when ``[tracking]`` is off). docs/api.md describes each
endpoint for people.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web

from mqd.admin.fanout import daemon_status
from mqd.http.bodies import Error, HistoryList, MessageList
from mqd.http.openapi import openapi
from mqd.tracking.vocabulary import Status

if TYPE_CHECKING:
    from mqd.http.site import Site
    from mqd.tracking.tracker import Tracker

__all__ = [
    "MAX_LIMIT",
    "PREFIX",
    "Api",
    "BadQuery",
    "error",
    "parse_limit",
    "parse_since",
    "path_value",
]

PREFIX = "/api/v1"
TRACKING_OFF = (
    "tracking is off ([tracking] enabled = false in mqd's config): there is no message "
    "history to answer from; remove that line (tracking is on by default) and restart mqd"
)
#: The most items one answer lists.
MAX_LIMIT = 500


class BadQuery(ValueError):
    """A query parameter's or a path's value is not usable: answered 400 with this message."""


def error(status: int, message: str) -> web.Response:
    return web.json_response(asdict(Error(message)), status=status)


def path_value(request: web.Request, name: str, what: str) -> str:
    """The path's ``{name}``, decoded; BadQuery when it holds a control character (a newline,
    a tab, NUL, DEL ...), which no queue id, Message-ID or address has."""
    value = request.match_info[name]
    for position, char in enumerate(value):
        if unicodedata.category(char) == "Cc":
            raise BadQuery(
                f"{name} must not hold control characters: found {char!r} at position "
                f"{position} of {value!r}; give {what} (URL-encoded)"
            )
    return value


def parse_limit(query: Mapping[str, str], default: int) -> int:
    raw = query.get("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {raw!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise BadQuery(f"limit must be from 1 to {MAX_LIMIT}, not {value}")
    return value


def parse_status(query: Mapping[str, str]) -> str | None:
    raw = query.get("status")
    if raw is None or raw == "":
        return None
    try:
        return Status(raw.strip().lower()).value
    except ValueError:
        words = ", ".join(s.value for s in Status)
        raise BadQuery(f"status must be one of {words}; not {raw!r}") from None


def parse_since(query: Mapping[str, str]) -> float | None:
    """Seconds since the epoch, or an ISO 8601 date-time (UTC unless it names a zone)."""
    raw = query.get("since")
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise BadQuery(
                "since must be seconds since the epoch (1714556400) or an ISO 8601 date-time "
                f"(2024-05-01T09:40:00Z), not {raw!r}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    if not math.isfinite(value):
        raise BadQuery(f"since must be a finite number, not {raw!r}")
    return value


class Api:
    def __init__(self, site: Site) -> None:
        self.site = site

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{PREFIX}/openapi.json", self.openapi),
            web.get(f"{PREFIX}/status", self.status),
            web.get(f"{PREFIX}/messages", self.messages),
            # (?s): a key with a newline reaches the handler, which answers 400, not 404.
            web.get(f"{PREFIX}/messages/{{key:(?s:.+)}}", self.message),
            web.get(f"{PREFIX}/history/{{key:(?s:.+)}}", self.history),
            web.get(f"{PREFIX}/recipients/{{address}}/messages", self.recipient),
            web.get(f"{PREFIX}/failures", self.failures),
        ]

    def _tracker(self) -> Tracker:
        tracker = self.site.tracker
        if tracker is None:
            raise web.HTTPServiceUnavailable(
                text=json.dumps(asdict(Error(TRACKING_OFF))),
                content_type="application/json",
            )
        return tracker

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi())

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(await daemon_status(self.site.admin))

    async def messages(self, request: web.Request) -> web.Response:
        limit = parse_limit(request.query, 50)
        status = parse_status(request.query)
        account = request.query.get("account") or None
        found = await self._tracker().recent(limit=limit, status=status, account=account)
        return web.json_response(asdict(MessageList(found)))

    async def message(self, request: web.Request) -> web.Response:
        key = path_value(request, "key", "a queue id or a Message-ID")
        found = await self._tracker().message(key)
        if found is None:
            return error(404, f"no message {key!r} in the event store")
        return web.json_response(found.to_dict())

    async def history(self, request: web.Request) -> web.Response:
        limit = parse_limit(request.query, 20)
        key = path_value(request, "key", "a queue id, a Message-ID or an address")
        found = await self._tracker().history(key, limit=limit)
        return web.json_response(asdict(HistoryList(found)))

    async def recipient(self, request: web.Request) -> web.Response:
        limit = parse_limit(request.query, 50)
        address = path_value(request, "address", "an address")
        found = await self._tracker().recipient(address, limit=limit)
        return web.json_response(asdict(MessageList(found)))

    async def failures(self, request: web.Request) -> web.Response:
        limit = parse_limit(request.query, 50)
        since = parse_since(request.query)
        found = await self._tracker().failures(since=since, limit=limit)
        return web.json_response(asdict(MessageList(found)))


def json_error_for(exc: web.HTTPException) -> web.Response:
    """An aiohttp HTTP error (404 of an unknown path, 405, 413 ...) as the API's JSON error."""
    if exc.content_type == "application/json":
        return web.Response(
            status=exc.status, text=exc.text or "{}", content_type="application/json"
        )
    return error(exc.status, exc.reason)
