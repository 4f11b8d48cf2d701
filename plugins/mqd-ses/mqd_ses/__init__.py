"""mqd-ses: an mqd relay plugin that delivers through Amazon SES (API v2, raw messages).

Installed next to mqd, it registers the relay type ``ses`` through the entry-point group ``mqd``;
select it with ``plugin = "ses"`` in a ``[relays.<name>]`` table. See docs/plugins/ses.md.
"""

from __future__ import annotations

from mqd import hookimpl
from mqd.hookspecs import RegisterRelay

from .relay import SESRelay

__all__ = ["SESRelay", "mqd_register_relays"]


@hookimpl
def mqd_register_relays(register: RegisterRelay) -> None:
    register("ses", SESRelay)
