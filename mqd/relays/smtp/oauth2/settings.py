"""The ``[relays.<name>.oauth2]`` table: ``token_command``, or ``token_url`` and its flow.

``OAuth2Settings.from_options`` reads and checks the table; every mistake is a ConfigError naming
the file and key and saying what to write instead. Nothing is fetched or run here (the command's
program is only looked up).
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from mqd.config.options import Options, Secret

__all__ = ["OAuth2Settings"]

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
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


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
