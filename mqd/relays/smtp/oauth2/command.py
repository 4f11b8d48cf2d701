"""A token from a command, run without a shell (like msmtp's ``passwordeval``): the first line of
its output is the access token, reused for ``lifetime`` seconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import time
from collections.abc import Callable

from mqd.relays.smtp.oauth2.source import Token, TokenError, TokenSource, one_line

__all__ = ["CommandTokenSource"]

log = logging.getLogger("mqd.oauth2")


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

    async def _fetch(self) -> Token:
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
        return Token(value, started + self.lifetime)


def _last_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    return one_line(lines[-1]) if lines else ""
