"""Test helpers for mqd and for relay plugins: messages, envelopes, relays built from a config
table, a harness that runs the daemon once in a temporary directory, and waiting on a condition
(``wait_until``, ``wait_until_sync``) rather than on a fixed delay.

The pytest fixtures ``mqd_harness`` (a ``Harness`` under ``tmp_path``) and ``mqd_plugin_host``
(a ``PluginHost`` with the installed plugins) come with mqd: its pytest plugin
(``mqd.testing.pytest_plugin``) is registered for every pytest run where mqd is installed.
See docs/plugins/testing.md.

The names below are imported on first use, so that pytest loading the plugin module (which
imports this package first) stays cheap in every test run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mqd.relays.memory import MemoryRelay
    from mqd.testing.harness import Harness
    from mqd.testing.messages import make_envelope, make_message
    from mqd.testing.relays import relay_from_table
    from mqd.testing.waiting import wait_until, wait_until_sync

__all__ = [
    "Harness",
    "MemoryRelay",
    "make_envelope",
    "make_message",
    "relay_from_table",
    "wait_until",
    "wait_until_sync",
]

_WHERE = {
    "Harness": ".harness",
    "MemoryRelay": "..relays.memory",
    "make_envelope": ".messages",
    "make_message": ".messages",
    "relay_from_table": ".relays",
    "wait_until": ".waiting",
    "wait_until_sync": ".waiting",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
