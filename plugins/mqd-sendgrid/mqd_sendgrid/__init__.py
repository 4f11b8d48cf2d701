"""mqd-sendgrid: an mqd relay plugin that delivers through SendGrid's v3 Mail Send API.

Registered through the entry-point group ``mqd`` (``sendgrid = "mqd_sendgrid"``), like any
third-party plugin; a relay selects it with ``plugin = "sendgrid"``. See
docs/plugins/sendgrid.md for the config keys, what is carried, how answers map to outcomes and
the Signed Event Webhook (``SendGridWebhook``; ``mqd_sendgrid.testing`` signs events for tests).
"""

from __future__ import annotations

from collections.abc import Callable

from mqd import Relay, hookimpl

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


@hookimpl
def mqd_register_relays(register: Callable[[str, type[Relay]], None]) -> None:
    register("sendgrid", SendGridRelay)
