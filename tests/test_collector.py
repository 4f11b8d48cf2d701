"""The garbage collector set for a long run (mqd.daemon.collector): in a process of its own, and
by the CLI's entry once the daemon is ready, never by an embedding's (or a test's) async_run."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mqd.daemon.collector
from mqd.config.schema import Config
from mqd.daemon.signals import async_run
from mqd.plugins.host import PluginHost


def test_settle_freezes_what_lives_and_raises_the_youngest_threshold() -> None:
    script = (
        "import gc; from mqd.daemon import collector; older = gc.get_threshold()[1:]; "
        "collector.settle(); "
        "print(gc.get_freeze_count() > 0, gc.get_threshold() == (collector.YOUNG, *older))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert shown.split() == ["True", "True"]


@pytest.mark.parametrize("settle", [True, False])
async def test_async_run_settles_the_collector_once_ready_only_when_asked(
    plain_config: Config, host: PluginHost, monkeypatch: pytest.MonkeyPatch, settle: bool
) -> None:
    settled: list[bool] = []
    monkeypatch.setattr(mqd.daemon.collector, "settle", lambda: settled.append(True))
    daemon = await async_run(plain_config, once=True, host=host, settle_collector=settle)
    assert daemon.ready.is_set()
    assert settled == ([True] if settle else [])
