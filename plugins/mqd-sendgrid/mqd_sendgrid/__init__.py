"""mqd-sendgrid: an mqd relay plugin that delivers through SendGrid's v3 Mail Send API.

Registered through the entry-point group ``mqd`` (``sendgrid = "mqd_sendgrid"``), like any
third-party plugin; a relay selects it with ``plugin = "sendgrid"``. See
docs/plugins/sendgrid.md for the config keys, what is carried, how answers map to outcomes and
the Signed Event Webhook (``SendGridWebhook``; ``mqd_sendgrid.testing`` signs events for tests).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mqd import RegisterRelay, hookimpl

if TYPE_CHECKING:
    from .convert import Conversion, to_sendgrid
    from .relay import SendGridRelay
    from .settings import SendGridSettings
    from .webhook import SendGridWebhook

__all__ = [
    "Conversion",
    "SendGridRelay",
    "SendGridSettings",
    "SendGridWebhook",
    "__version__",
    "mqd_register_relays",
    "to_sendgrid",
]

__version__ = "0.1.0"


#: Where each public name lives: imported on first use, so that loading the plugin (every
#: mqd start does) costs no HTTP client and no cryptography.
_LAZY = {
    "Conversion": "convert",
    "to_sendgrid": "convert",
    "SendGridRelay": "relay",
    "SendGridSettings": "settings",
    "SendGridWebhook": "webhook",
}


@hookimpl
def mqd_register_relays(register: RegisterRelay) -> None:
    register("sendgrid", "mqd_sendgrid.relay:SendGridRelay")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
