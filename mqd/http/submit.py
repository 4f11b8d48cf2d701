"""``POST /api/v1/messages``: the ``[[submit]]`` sources (``mqd.intake.submit``) over the
``[http]`` server.

The route is always there; at each request it asks the daemon (``Site.intake_sources``) for the
running submit sources and finds the one whose token the request carries
(``Authorization: Bearer <submit token>``, compared in constant time with every one). The read
token, the operator's and a loopback peer count for nothing here: without a submit token the
answer is 401 with ``WWW-Authenticate``. Errors are ``application/problem+json`` (RFC 9457).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from aiohttp import web

from mqd.http.access import token_matches
from mqd.http.api import PREFIX
from mqd.http.bodies import Problem, Submitted
from mqd.http.site import Site
from mqd.intake.submit.request import Refusal, bad_request
from mqd.intake.submit.source import Call, SubmitSource

__all__ = ["SUBMIT_PATH", "SubmitRoutes", "problem"]

log = logging.getLogger("mqd.submit")

SUBMIT_PATH = f"{PREFIX}/messages"
PROBLEM_TYPE = "application/problem+json"
_REALM = 'Bearer realm="mqd submit"'


def problem(
    status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = Problem(type=f"urn:mqd:problem:{slug}", title=title, status=status, detail=detail)
    return web.Response(
        status=status,
        text=json.dumps(asdict(body)),
        content_type=PROBLEM_TYPE,
        headers=headers,
    )


def _refused(refusal: Refusal) -> web.Response:
    headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else None
    return problem(refusal.status, refusal.slug, refusal.title, refusal.detail, headers)


class SubmitRoutes:
    def __init__(self, site: Site) -> None:
        self.site = site

    def routes(self) -> list[web.RouteDef]:
        return [web.post(SUBMIT_PATH, self.submit)]

    def _sources(self) -> list[SubmitSource]:
        return [s for s in self.site.intake_sources() if isinstance(s, SubmitSource)]

    def _unauthorized(self, given: str | None) -> web.Response:
        http = self.site.config.http
        if not self._configured():
            detail = (
                "this mqd takes no messages over HTTP: add a [[submit]] table with its token "
                "to mqd's config"
            )
        elif given is None:
            detail = "send 'Authorization: Bearer <token>' with the token of a [[submit]] table"
        else:
            detail = "the token is not one of a [[submit]] table"
            for other in (http.token, http.operator_token):
                if other is not None and token_matches(given, other.reveal()):
                    detail += ": the API's read and operator tokens cannot submit"
        challenge = _REALM + (', error="invalid_token"' if given is not None else "")
        return problem(
            401, "unauthorized", "A submit token is needed", detail, {"WWW-Authenticate": challenge}
        )

    async def submit(self, request: web.Request) -> web.Response:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        given = value.strip() if scheme.lower() == "bearer" and value.strip() else None
        sources = self._sources()
        source: SubmitSource | None = None
        if given is not None:
            for candidate in sources:  # every one compared: no timing of the position
                if token_matches(given, candidate.token) and source is None:
                    source = candidate
        if source is None:
            if given is not None and not sources and self._configured():
                return problem(
                    503,
                    "not-taking",
                    "Not taking messages now",
                    "mqd is starting, stopping, or runs with --once: try again shortly",
                    {"Retry-After": "5"},
                )
            log.debug("submit: refused a request without a submit token from %s", request.remote)
            return self._unauthorized(given)
        max_body = self.site.config.http.max_body
        if request.content_length is not None and request.content_length > max_body:
            source.refused += 1
            return _too_large(request.content_length, max_body)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            source.refused += 1
            return _too_large(None, max_body)
        try:
            accepted = await source.take(_call(request, body))
        except Refusal as refusal:
            log.info("submit %s: refused (%d): %s", source.config.name, refusal.status, refusal)
            return _refused(refusal)
        headers = {"Location": f"{SUBMIT_PATH}/{accepted.id}"}
        if accepted.replayed:
            headers["Idempotent-Replayed"] = "true"
        answer = Submitted(id=accepted.id, message_id=accepted.message_id)
        return web.json_response(asdict(answer), status=202, headers=headers)

    def _configured(self) -> bool:
        return any(s.kind == "submit" for s in self.site.config.sources)


def _too_large(size: int | None, max_body: int) -> web.Response:
    what = f"the request is {size} bytes" if size is not None else "the request is larger"
    return problem(
        413,
        "too-large",
        "The message is too large",
        f"{what}, more than [http] max_body ({max_body} bytes)",
    )


def _call(request: web.Request, body: bytes) -> Call:
    query, headers = request.query, request.headers
    senders = query.getall("from", []) or headers.getall("X-Mqd-From", [])
    if len(senders) > 1:
        raise bad_request("give one sender (from, X-Mqd-From), not several")
    recipients = query.getall("to", []) or [
        part.strip() for value in headers.getall("X-Mqd-To", []) for part in value.split(",")
    ]
    return Call(
        content_type=request.content_type.lower(),
        body=body,
        sender=senders[0].strip() if senders else None,
        recipients=tuple(r for r in (r.strip() for r in recipients) if r),
        key=headers.get("Idempotency-Key"),
        peer=request.remote,
    )
