"""A token from an OAuth2 token endpoint (RFC 6749): the refresh-token grant when a refresh token is
configured (Gmail, a Microsoft 365 user), otherwise the client-credentials grant (Microsoft 365
app-only). HTTP is the standard library's, in a thread. A refresh token the endpoint rotates is
written back to ``refresh_token_file``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mqd.config.options import Secret
from mqd.fsutil import atomic_write
from mqd.relays.smtp.oauth2.settings import OAuth2Settings
from mqd.relays.smtp.oauth2.source import Token, TokenError, TokenSource, one_line

__all__ = ["DEFAULT_EXPIRES_IN", "MAX_MARGIN", "EndpointTokenSource"]

log = logging.getLogger("mqd.oauth2")

#: A token is renewed this long before it expires: 5 minutes, or 10 % of a shorter lifetime.
MAX_MARGIN = 300.0
#: Assumed lifetime when the endpoint does not say (``expires_in`` is only RECOMMENDED).
DEFAULT_EXPIRES_IN = 3600.0
_MAX_ANSWER = 1024 * 1024

_HINTS = {
    "invalid_client": "check client_id and the client secret (an expired secret must be "
    "renewed in the app registration)",
    "invalid_grant": "the refresh token (or, for client credentials, the tenant in token_url) is "
    "not valid: an expired or revoked refresh token must be obtained again and saved in "
    "refresh_token_file",
    "unauthorized_client": "the app may not use this grant: allow it in the app registration",
    "invalid_scope": "check scope (Microsoft 365 app-only: https://outlook.office365.com/.default; "
    "Gmail: https://mail.google.com/)",
    "invalid_request": "check token_url, client_id and scope",
    "unsupported_grant_type": "check token_url: it must be the provider's token endpoint",
}


class EndpointTokenSource(TokenSource):
    """The refresh-token grant when ``settings.refresh_token`` is set, else client credentials."""

    def __init__(
        self, settings: OAuth2Settings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if settings.token_url is None or settings.client_id is None:
            raise ValueError("an endpoint token source needs token_url and client_id")
        super().__init__(clock=clock)
        self.settings = settings
        self.url: str = settings.token_url
        self._refresh_token = settings.refresh_token

    def describe(self) -> str:
        host = urllib.parse.urlsplit(self.url).hostname
        return f"token endpoint {host}, {self.settings.flow}"

    async def _fetch(self) -> Token:
        s = self.settings
        form = {"client_id": s.client_id or ""}
        if self._refresh_token is not None:
            form |= {"grant_type": "refresh_token", "refresh_token": self._refresh_token.reveal()}
        else:
            form["grant_type"] = "client_credentials"
        if s.client_secret is not None:
            form["client_secret"] = s.client_secret.reveal()
        if s.scope:
            form["scope"] = s.scope
        started = self._clock()
        answer = await asyncio.to_thread(self._post, form)
        value = answer.get("access_token")
        if not isinstance(value, str) or not value.strip():
            raise TokenError(f"the token endpoint {self.url} answered without an access_token")
        token_type = answer.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TokenError(
                f"the token endpoint {self.url} issued a {token_type!r} token; XOAUTH2 needs a "
                "Bearer token: check token_url"
            )
        expires_in = _seconds(answer.get("expires_in"))
        rotated = answer.get("refresh_token")
        if (
            self._refresh_token is not None
            and isinstance(rotated, str)
            and rotated
            and rotated != self._refresh_token.reveal()
        ):
            self._refresh_token = Secret(rotated)
            await asyncio.to_thread(self._save_refresh_token, rotated)
        log.debug("oauth2: new access token from %s, valid for %gs", self.describe(), expires_in)
        margin = min(MAX_MARGIN, expires_in / 10)
        return Token(value.strip(), started + expires_in - margin)

    def _post(self, form: Mapping[str, str]) -> dict[str, Any]:
        """POST the form, return the JSON answer; TokenError for every failure."""
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked at config load
            self.url,
            data=urllib.parse.urlencode(form).encode("ascii"),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
                "User-Agent": "mqd",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:  # noqa: S310
                body = response.read(_MAX_ANSWER)
        except urllib.error.HTTPError as exc:
            with exc:
                raise TokenError(
                    self._refusal(exc.code, exc.reason, exc.read(_MAX_ANSWER))
                ) from None
        except TimeoutError as exc:
            raise TokenError(
                f"the token endpoint {self.url} did not answer within "
                f"{self.settings.timeout:g}s; check that this machine can reach it"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TokenError(
                f"cannot reach the token endpoint {self.url}: {reason}; check token_url and that "
                "this machine can reach it (a proxy is taken from https_proxy)"
            ) from exc
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise TokenError(
                f"the token endpoint {self.url} did not answer with a JSON object: check token_url"
            )
        return answer

    def _refusal(self, status: int, reason: str, body: bytes) -> str:
        """The message for an HTTP error answer, from its OAuth2 error when it has one."""
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, str):
            hint = "check token_url" if status in (404, 405) else "mail is retried"
            return f"the token endpoint {self.url} answered HTTP {status} {reason}; {hint}"
        assert isinstance(answer, dict)
        description = answer.get("error_description")
        detail = f" ({one_line(description)})" if isinstance(description, str) else ""
        hint = _HINTS.get(error, "check the oauth2 settings against the provider's app settings")
        return f"the token endpoint {self.url} refused: {error}{detail}; {hint}"

    def _save_refresh_token(self, value: str) -> None:
        path = self.settings.refresh_token_file
        if path is None:
            log.warning(
                "oauth2: %s issued a new refresh token; mqd uses it until it stops, but cannot "
                "keep it across restarts: use refresh_token_file for a token that rotates",
                self.url,
            )
            return
        target = Path(os.path.realpath(path))
        try:
            atomic_write(target, (value + "\n").encode("utf-8"), mode=0o600)
        except OSError as exc:
            log.warning(
                "oauth2: %s issued a new refresh token but mqd cannot save it to %s (%s); the "
                "old one may stop working after a restart: let mqd write that file and directory",
                self.url,
                target,
                exc.strerror or exc,
            )
        else:
            log.info("oauth2: %s issued a new refresh token; saved it to %s", self.url, target)


def _seconds(value: object) -> float:
    """``expires_in`` as seconds (Microsoft's v1 endpoint sends a string)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return float(value)
    return DEFAULT_EXPIRES_IN
