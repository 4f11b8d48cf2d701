"""Running the daemon: ``run()`` for the CLI (signals stop it gracefully), ``async_run()`` for
tests and embedding. Signal handlers only call the daemon's requests: SIGTERM/SIGINT (SIGBREAK on
Windows) stop it, a second one hurries it, SIGHUP reloads the config, SIGUSR1 flushes the queue."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.config.schema import Config
from mqd.daemon import collector
from mqd.daemon.root import Daemon
from mqd.errors import WorkerError
from mqd.plugins.host import PluginHost

__all__ = ["async_run", "run"]


async def async_run(
    config: Config,
    *,
    once: bool = False,
    host: PluginHost | None = None,
    install_signals: bool = False,
    cli_args: Sequence[str] = (),
    clock: Clock = SYSTEM_CLOCK,
    settle_collector: bool = False,
) -> Daemon:
    """Run a daemon until it is stopped (or, with ``once``, until nothing is due). With
    ``settle_collector`` (a process of its own, as the CLI's) the garbage collector is set for
    a long run once the daemon is ready (``mqd.daemon.collector``)."""
    daemon = Daemon(config, host=host, once=once, cli_args=cli_args, clock=clock)
    if install_signals:
        _install_signal_handlers(daemon)
    settling = asyncio.ensure_future(_settle_when_ready(daemon)) if settle_collector else None
    try:
        await daemon.run()
    finally:
        if settling is not None:
            settling.cancel()
    return daemon


async def _settle_when_ready(daemon: Daemon) -> None:
    await daemon.ready.wait()
    collector.settle()


def run(
    config: Config,
    *,
    once: bool = False,
    host: PluginHost | None = None,
    cli_args: Sequence[str] = (),
) -> None:
    """Blocking entry point for the CLI: signals stop the daemon gracefully. With --once and
    several workers, raises WorkerError when one of the others failed."""
    daemon = asyncio.run(
        async_run(
            config,
            once=once,
            host=host,
            install_signals=True,
            cli_args=cli_args,
            settle_collector=True,
        )
    )
    if daemon.workers is not None and daemon.workers.failures:
        failed = ", ".join(f"{n} (code {c})" for n, c in sorted(daemon.workers.failures.items()))
        raise WorkerError(f"worker(s) {failed} did not finish: see their log lines above")


def _install_signal_handlers(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    stop_signals = [signal.SIGTERM, signal.SIGINT]
    if sys.platform == "win32":  # pragma: no cover - Windows
        stop_signals.append(signal.SIGBREAK)
        for sig in stop_signals:
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(daemon.request_stop))
        return
    for sig in stop_signals:
        loop.add_signal_handler(sig, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    loop.add_signal_handler(signal.SIGUSR1, daemon.flush)
