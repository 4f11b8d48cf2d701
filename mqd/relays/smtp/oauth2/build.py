"""The token source that an ``[relays.<name>.oauth2]`` table describes."""

from __future__ import annotations

import time
from collections.abc import Callable

from mqd.relays.smtp.oauth2.command import CommandTokenSource
from mqd.relays.smtp.oauth2.endpoint import EndpointTokenSource
from mqd.relays.smtp.oauth2.settings import OAuth2Settings
from mqd.relays.smtp.oauth2.source import TokenSource

__all__ = ["make_token_source"]


def make_token_source(
    settings: OAuth2Settings, *, clock: Callable[[], float] = time.monotonic
) -> TokenSource:
    """``token_command`` -> a CommandTokenSource, else an EndpointTokenSource; ``clock`` decides
    when a cached token is renewed (tests inject one)."""
    if settings.token_command is not None:
        return CommandTokenSource(
            settings.token_command,
            lifetime=settings.token_lifetime,
            timeout=settings.timeout,
            clock=clock,
        )
    return EndpointTokenSource(settings, clock=clock)
