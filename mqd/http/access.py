"""Who may read the JSON API and the web view.

A request is let in when it comes from this machine or carries the configured token:

- *local*: the peer is a loopback address, the request names a loopback host (``Host:
  localhost`` or a loopback IP; anything else is a DNS-rebinding page reaching a local port
  through the user's browser), and it carries no ``Forwarded`` / ``X-Forwarded-For`` /
  ``X-Real-IP`` header (a reverse proxy on this machine connects from loopback too, and must
  not make the whole world local);
- *token*: ``Authorization: Bearer <token>``, or the session cookie ``GET /login?token=...``
  sets, which holds an HMAC of the token (never the token itself).

Tokens and cookies are compared in constant time, as bytes: a header value aiohttp could not
decode as UTF-8 (its bytes kept as lone surrogates) is a wrong token like any other, never an
error.

Webhooks are not checked here: each proves itself with its provider's signature.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from aiohttp import web

__all__ = [
    "FORWARDING_HEADERS",
    "SESSION_COOKIE",
    "allowed",
    "is_local",
    "refusal",
    "session_value",
    "token_matches",
]

SESSION_COOKIE = "mqd_session"
#: Headers a reverse proxy adds: with any of them, a loopback peer is a proxy, not a local user.
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")
#: What the session cookie's HMAC is computed over (keyed with the token): a new token, or a new
#: version of this string, signs everybody out.
_SESSION_MESSAGE = b"mqd web view session v1"


def _octets(text: str) -> bytes:
    """``text`` as bytes, whatever it holds: UTF-8, with any lone surrogate (an undecodable byte
    of a header, or of a token from the environment) encoded as is rather than raising."""
    return text.encode("utf-8", "surrogatepass")


def session_value(token: str) -> str:
    """The session cookie's value for ``token``."""
    return hmac.new(_octets(token), _SESSION_MESSAGE, hashlib.sha256).hexdigest()


def token_matches(given: str, token: str) -> bool:
    """Whether ``given`` is ``token``, in constant time; never raises."""
    return hmac.compare_digest(_octets(given), _octets(token))


def _loopback_ip(text: str | None) -> bool:
    if not text:
        return False
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _loopback_host(request: web.BaseRequest) -> bool:
    try:
        host = request.url.host
    except ValueError:  # a Host header yarl cannot parse
        return False
    if host is None:
        return False
    host = host.rstrip(".").lower()
    return host == "localhost" or _loopback_ip(host)


def is_local(request: web.BaseRequest) -> bool:
    """From a user on this machine, not through a proxy or a rebound DNS name."""
    if any(name in request.headers for name in FORWARDING_HEADERS):
        return False
    return _loopback_ip(request.remote) and _loopback_host(request)


def allowed(request: web.BaseRequest, token: str | None) -> bool:
    if is_local(request):
        return True
    if token is None:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        return token_matches(given.strip(), token)
    cookie = request.cookies.get(SESSION_COOKIE)
    return cookie is not None and token_matches(cookie, session_value(token))


def refusal(token_configured: bool) -> str:
    """What a refused client is told: how to get in."""
    if token_configured:
        return (
            "this server answers clients on its own machine; from elsewhere send "
            "'Authorization: Bearer <token>' with the token of [http] token in mqd's config, or "
            "sign in once in the browser at /login?token=<token>"
        )
    return (
        "this server answers clients on its own machine only (and not through a proxy); to let "
        "others in, set [http] token_file (or token_env) in mqd's config, then send "
        "'Authorization: Bearer <token>' or sign in at /login?token=<token>"
    )
