"""Build one relay from a config table, through the installed plugins, as the daemon does."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mqd.config.load import parse_config
from mqd.plugins.host import PluginHost
from mqd.relays.base import Relay
from mqd.relays.build import build_relays
from mqd.testing._values import plain

__all__ = ["relay_from_table"]


def relay_from_table(
    plugin: str,
    table: Mapping[str, Any],
    *,
    name: str = "test",
    host: PluginHost | None = None,
) -> Relay:
    """The relay that ``[relays.<name>]`` with ``plugin = "<plugin>"`` and ``table`` builds.

    The table goes through the same code as a config file (``mqd.relays.build.build_relays``), so a
    bad value or an unknown key raises the same ``ConfigError`` (naming ``relays.<name>.<key>``)
    and a plugin that is not installed is reported the same way. ``host`` defaults to a
    ``PluginHost()`` that loads installed entry points, so your plugin must be installed
    (``pip install -e .``) or given in ``PluginHost(extra=(module,))``. Paths may be ``Path``
    objects; relative ones are taken relative to the current directory. Inline secrets are
    accepted. The relay is not connected yet; ``await relay.aclose()`` when done with it.
    """
    if "plugin" in table:
        raise ValueError("give the plugin name as the first argument, not as a key of the table")
    placeholder = Path(tempfile.gettempdir()) / "mqd-relay-from-table"
    document = {
        "queue": {"dir": str(placeholder / "queue")},
        "spool": [{"path": str(placeholder / "spool"), "allowed_senders": ["*@example.com"]}],
        "relays": {name: {"plugin": plugin, **plain(table)}},
    }
    config = parse_config(document, None)
    return build_relays(config, host or PluginHost())[name]
