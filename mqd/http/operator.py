"""Operator sessions of the web view: who may act on the queue, and the CSRF token of each.

An operator signs in with ``[http] operator_token`` (never the read ``token``) and gets the
cookie ``mqd_operator``: ``<session id>.<issued at>.<MAC>``, the MAC an HMAC-SHA256 keyed with
the operator token, so the cookie holds no secret and nobody can make one without the token.
It is ``HttpOnly``, ``SameSite=Strict``, ``Secure`` when the page came over TLS, and good for
``SESSION_LIFETIME`` from sign-in; signing out revokes it (remembered until it would have
expired); a new operator token signs every operator out.

Each session has its CSRF token, an HMAC of its id (a synchronizer token: only pages served to
that session carry it). Every action form posts it, and it is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from mqd.clock import Clock
from mqd.http.access import token_matches

__all__ = ["OPERATOR_COOKIE", "SESSION_LIFETIME", "OperatorSession", "Sessions", "https"]

OPERATOR_COOKIE = "mqd_operator"
#: Seconds an operator stays signed in.
SESSION_LIFETIME = 8 * 3600.0
_SESSION_LABEL = "mqd operator session v1"
_CSRF_LABEL = "mqd operator csrf v1"


@dataclass(frozen=True)
class OperatorSession:
    id: str
    issued: float
    #: What every action form of this session must post as ``csrf``.
    csrf: str


def _mac(token: str, label: str, *parts: str) -> str:
    message = "|".join((label, *parts)).encode()
    return hmac.new(token.encode("utf-8", "surrogatepass"), message, hashlib.sha256).hexdigest()


def https(request: web.BaseRequest) -> bool:
    """Served over TLS, here or at a proxy that says ``X-Forwarded-Proto: https`` (believed:
    it can only make the cookie stricter)."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


class Sessions:
    """Issues and checks operator sessions; ``token()`` is the operator token now (None: no
    operator can sign in)."""

    def __init__(self, token: Callable[[], str | None], clock: Clock) -> None:
        self.token = token
        self.clock = clock
        #: Signed-out session ids, until they would have expired.
        self._revoked: dict[str, float] = {}

    def _session(self, token: str, session_id: str, issued: str) -> OperatorSession:
        return OperatorSession(session_id, float(issued), _mac(token, _CSRF_LABEL, session_id))

    def issue(self, response: web.StreamResponse, request: web.BaseRequest) -> OperatorSession:
        """A new session, its cookie set on ``response``."""
        token = self.token()
        if token is None:
            raise RuntimeError("no operator token configured")
        session_id = secrets.token_urlsafe(18)
        issued = f"{self.clock.time():.0f}"
        mac = _mac(token, _SESSION_LABEL, session_id, issued)
        response.set_cookie(
            OPERATOR_COOKIE,
            f"{session_id}.{issued}.{mac}",
            path="/",
            max_age=int(SESSION_LIFETIME),
            httponly=True,
            samesite="Strict",
            secure=https(request),
        )
        return self._session(token, session_id, issued)

    def of(self, request: web.BaseRequest) -> OperatorSession | None:
        """The request's valid operator session, or None."""
        token = self.token()
        cookie = request.cookies.get(OPERATOR_COOKIE)
        if token is None or not cookie:
            return None
        session_id, _, rest = cookie.partition(".")
        issued, _, mac = rest.partition(".")
        if not session_id or not issued.isdigit() or not mac:
            return None
        if not token_matches(mac, _mac(token, _SESSION_LABEL, session_id, issued)):
            return None
        age = self.clock.time() - float(issued)
        if not -60 <= age < SESSION_LIFETIME or session_id in self._revoked:
            return None
        return self._session(token, session_id, issued)

    def csrf_ok(self, session: OperatorSession, given: object) -> bool:
        """Whether ``given`` (a form's ``csrf`` field) is the session's token: constant time."""
        return isinstance(given, str) and bool(given) and token_matches(given, session.csrf)

    def revoke(self, session: OperatorSession, response: web.StreamResponse) -> None:
        now = self.clock.time()
        self._revoked = {k: until for k, until in self._revoked.items() if until > now}
        self._revoked[session.id] = session.issued + SESSION_LIFETIME
        response.del_cookie(OPERATOR_COOKIE, path="/")
