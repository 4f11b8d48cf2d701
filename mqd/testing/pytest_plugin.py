"""pytest fixtures for mqd plugin authors, registered as the ``pytest11`` entry point ``mqd``.

pytest loads this module in every run of an environment where mqd is installed, so it imports
nothing heavy and does nothing at import: the fixtures import what they need when used.
Disable it with ``-p no:mqd``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mqd.plugins.host import PluginHost
    from mqd.testing import Harness

__all__ = ["mqd_harness", "mqd_plugin_host"]


@pytest.fixture
def mqd_plugin_host() -> PluginHost:
    """A plugin host as ``mqd run`` builds it: core plugins and every installed entry point."""
    from mqd.plugins.host import PluginHost

    return PluginHost()


@pytest.fixture
def mqd_harness(tmp_path: Path) -> Harness:
    """A ``mqd.testing.Harness`` rooted in ``tmp_path / "mqd"``: configure, drop, run_once,
    queued, failed. Its runs load the installed plugins (your plugin, once installed)."""
    from mqd.testing import Harness

    return Harness(tmp_path / "mqd")
