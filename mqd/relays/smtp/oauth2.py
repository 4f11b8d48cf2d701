"""OAuth2 access tokens for SMTP XOAUTH2 (Microsoft 365, Gmail), from a command or an endpoint.

A ``TokenSource`` hands out an access token through ``await token()``: cached, renewed before it
expires, with one renewal at a time shared by every caller (single flight). ``invalidate()``
drops the cached token after the server refused it, so the next ``token()`` gets a new one.

* ``CommandTokenSource`` runs a command without a shell (like msmtp's ``passwordeval``); the
  first line of its output is the token, reused for ``token_lifetime``.
* ``EndpointTokenSource`` asks an OAuth2 token endpoint (RFC 6749) with the refresh-token grant
  when a refresh token is configured (Gmail, a Microsoft 365 user), otherwise with the
  client-credentials grant (Microsoft 365 app-only). HTTP is the standard library's, in a
  thread. A refresh token the endpoint rotates is written back to ``refresh_token_file``.

Every failure is a ``TokenError`` whose message says what went wrong and what to fix. No token
or secret ever appears in a message or a log line.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqd.config.options import Options, Secret
from mqd.errors import MQDError
from mqd.fsutil import atomic_write

__all__ = [
    "CommandTokenSource",
    "EndpointTokenSource",
    "OAuth2Settings",
    "TokenError",
    "TokenSource",
    "make_token_source",
]

log = logging.getLogger("mqd.oauth2")

#: Keys that belong to the endpoint flows (token_url), not to token_command.
_FLOW_KEYS = (
    "client_id",
    "client_secret",
    "client_secret_file",
    "client_secret_env",
    "refresh_token",
    "refresh_token_file",
    "refresh_token_env",
    "scope",
)
#: A token is renewed this long before it expires: 5 minutes, or 10 % of a shorter lifetime.
MAX_MARGIN = 300.0
#: Assumed lifetime when the endpoint does not say (``expires_in`` is only RECOMMENDED).
DEFAULT_EXPIRES_IN = 3600.0
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
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


class TokenError(MQDError):
    """No access token could be had; the message says why and what to fix."""


@dataclass(frozen=True)
class OAuth2Settings:
    """The ``[relays.<name>.oauth2]`` table: ``token_command`` or ``token_url`` and its flow."""

    token_command: tuple[str, ...] | None = None
    token_lifetime: float = 3000.0
    token_url: str | None = None
    client_id: str | None = None
    client_secret: Secret | None = field(default=None, repr=False)
    refresh_token: Secret | None = field(default=None, repr=False)
    #: Where the refresh token came from, so that a rotated one can be written back.
    refresh_token_file: Path | None = None
    scope: str | None = None
    timeout: float = 30.0

    @property
    def flow(self) -> str:
        if self.token_command is not None:
            return "command"
        return "refresh token" if self.refresh_token is not None else "client credentials"

    @classmethod
    def from_options(cls, options: Options) -> OAuth2Settings:
        """Read and check the table; raises ConfigError naming the file and key."""
        present = set(options.keys())
        command = options.string_list("token_command", None)
        url = options.string("token_url", None)
        timeout = options.duration("timeout", "30s")
        if timeout <= 0:
            raise options.error("timeout", "must be more than 0 seconds")
        if command is not None and url is not None:
            raise options.error(
                "token_url",
                "give either token_command (a command that prints a token) or token_url (an "
                "OAuth2 token endpoint), not both",
            )
        if command is None and url is None:
            raise options.error(
                "token_url",
                "is required: the OAuth2 token endpoint (with client_id, and client_secret_file "
                "or refresh_token_file), or instead token_command, a command that prints a token",
            )
        if command is not None:
            stray = [key for key in _FLOW_KEYS if key in present]
            if stray:
                raise options.error(
                    stray[0], "is only used with token_url; token_command prints the token itself"
                )
            lifetime = options.duration("token_lifetime", "50m")
            if lifetime <= 0:
                raise options.error("token_lifetime", "must be more than 0 seconds")
            options.finish()
            return cls(
                token_command=_resolve_command(options, command),
                token_lifetime=lifetime,
                timeout=timeout,
            )
        if "token_lifetime" in present:
            raise options.error(
                "token_lifetime",
                "is only used with token_command; a token endpoint says itself how long its "
                "tokens last (expires_in)",
            )
        _check_url(options, url)
        client_id = options.string("client_id")
        client_secret = options.secret("client_secret")
        refresh_token = options.secret("refresh_token")
        refresh_file = None
        if refresh_token is not None and "refresh_token_file" in present:
            refresh_file = options.filepath("refresh_token_file")  # to write a rotated one back
        if refresh_token is None and client_secret is None:
            raise options.error(
                "client_secret_file",
                "is required for the client-credentials flow (no refresh_token given): the app's "
                "client secret, in client_secret_file (or client_secret_env)",
            )
        scope = options.string("scope", None)
        options.finish()
        return cls(
            token_url=url,
            client_id=client_id,
            client_secret=client_secret,
            refresh_token=refresh_token,
            refresh_token_file=refresh_file,
            scope=scope,
            timeout=timeout,
        )


def _resolve_command(options: Options, command: tuple[str, ...]) -> tuple[str, ...]:
    """The command with its program found now (on PATH, or relative to the config file)."""
    if not command or not command[0]:
        raise options.error(
            "token_command",
            'give the program and its arguments, e.g. ["/usr/local/bin/get-token", "--quiet"]',
        )
    program = os.path.expanduser(command[0])
    if os.sep in program or (os.altsep and os.altsep in program):
        path = Path(program)
        if not path.is_absolute() and options.file is not None:
            path = options.file.parent / path
        found = shutil.which(str(path))
    else:
        found = shutil.which(program)
    if found is None:
        raise options.error(
            "token_command",
            f"cannot run {command[0]!r}: not found or not executable (a bare name is looked up "
            "on PATH; a relative path is relative to the config file's directory)",
        )
    return (found, *command[1:])


def _check_url(options: Options, url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return  # a local token helper; nothing crosses the network in clear text
    raise options.error(
        "token_url",
        f"{url!r} is not an https:// URL: client secrets and refresh tokens are never sent in "
        "clear text (plain http is accepted only for 127.0.0.1, ::1 and localhost), e.g. "
        "https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token",
    )


# -- token sources --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    #: Clock time from which the token is renewed instead of reused.
    renew_at: float


class TokenSource(abc.ABC):
    """Hands out access tokens; subclasses say how to get a new one (``_fetch``)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cached: _Token | None = None
        self._renewal: asyncio.Task[_Token] | None = None

    async def token(self) -> str:
        """A current access token. Raises TokenError when none can be had."""
        cached = self._cached
        if cached is not None and self._clock() < cached.renew_at:
            return cached.value
        if self._renewal is None:
            renewal = asyncio.get_running_loop().create_task(self._renew())
            renewal.add_done_callback(self._renewed)
            self._renewal = renewal
        # Shielded: a caller that gives up does not cancel the renewal the others wait for.
        return (await asyncio.shield(self._renewal)).value

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (only if it is ``token``, when given): the server refused it."""
        if self._cached is not None and (token is None or self._cached.value == token):
            self._cached = None

    async def aclose(self) -> None:
        """Stop a renewal in progress."""
        renewal = self._renewal
        if renewal is not None and not renewal.done():
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renewal

    @abc.abstractmethod
    def describe(self) -> str:
        """Where tokens come from, for logs (no secrets)."""

    @abc.abstractmethod
    async def _fetch(self) -> _Token:
        """Get a new token; raise TokenError."""

    async def _renew(self) -> _Token:
        token = await self._fetch()
        self._cached = token
        return token

    def _renewed(self, renewal: asyncio.Task[_Token]) -> None:
        if self._renewal is renewal:
            self._renewal = None
        if not renewal.cancelled():
            renewal.exception()  # retrieved: every caller that still waits gets it too


class CommandTokenSource(TokenSource):
    """Runs ``command``; its first line of output is the token, reused for ``lifetime``."""

    def __init__(
        self,
        command: tuple[str, ...],
        *,
        lifetime: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock=clock)
        self.command = command
        self.lifetime = lifetime
        self.timeout = timeout

    def describe(self) -> str:
        return f"token command {os.path.basename(self.command[0])}"

    async def _fetch(self) -> _Token:
        shown = shlex.join(self.command)
        started = self._clock()
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise TokenError(
                f"cannot run the token command {shown}: {exc.strerror or exc}; fix token_command"
            ) from exc
        try:
            out, err = await asyncio.wait_for(process.communicate(), self.timeout)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(Exception):
                await asyncio.shield(process.wait())
            if isinstance(exc, TimeoutError):
                raise TokenError(
                    f"the token command {shown} did not finish within {self.timeout:g}s and was "
                    "killed; run it by hand as mqd's user to see where it hangs"
                ) from exc
            raise
        stderr = _last_line(err)
        said = f": {stderr}" if stderr else " (nothing on stderr)"
        if process.returncode != 0:
            raise TokenError(
                f"the token command {shown} failed with exit status {process.returncode}{said}; "
                "run it by hand as mqd's user to fix it"
            )
        lines = out.decode("utf-8", "replace").splitlines()
        value = lines[0].strip() if lines else ""
        if not value:
            raise TokenError(
                f"the token command {shown} printed no token on its first line{said}; it must "
                "print the access token alone on the first line of its output"
            )
        log.debug("oauth2: new access token from %s", self.describe())
        return _Token(value, started + self.lifetime)


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

    async def _fetch(self) -> _Token:
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
        return _Token(value.strip(), started + expires_in - margin)

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
        detail = f" ({_one_line(description)})" if isinstance(description, str) else ""
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


def make_token_source(
    settings: OAuth2Settings, *, clock: Callable[[], float] = time.monotonic
) -> TokenSource:
    """The token source that ``settings`` describe."""
    if settings.token_command is not None:
        return CommandTokenSource(
            settings.token_command,
            lifetime=settings.token_lifetime,
            timeout=settings.timeout,
            clock=clock,
        )
    return EndpointTokenSource(settings, clock=clock)


def _seconds(value: object) -> float:
    """``expires_in`` as seconds (Microsoft's v1 endpoint sends a string)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return float(value)
    return DEFAULT_EXPIRES_IN


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _last_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    return _one_line(lines[-1]) if lines else ""
