"""mqd-ses: an mqd relay plugin that delivers through Amazon SES (API v2, raw messages).

Installed next to mqd, it registers the relay type ``ses`` through the entry-point group ``mqd``;
select it with ``plugin = "ses"`` in a ``[relays.<name>]`` table. See docs/plugins/ses.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mqd import RegisterRelay, hookimpl

if TYPE_CHECKING:
    from .relay import SESRelay

__all__ = ["SESRelay", "mqd_register_relays"]


@hookimpl
def mqd_register_relays(register: RegisterRelay) -> None:
    # By path: botocore, aiohttp and cryptography load only when a config uses the relay.
    register("ses", "mqd_ses.relay:SESRelay")


def __getattr__(name: str) -> Any:
    if name == "SESRelay":
        from .relay import SESRelay

        return SESRelay
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
