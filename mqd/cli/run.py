"""The daemon's commands: ``mqd run`` (the daemon in the foreground, or ``--once`` for cron)
and ``mqd reload`` (the running daemon re-reads its config)."""

from __future__ import annotations

import sys
from typing import Any

import click

from mqd.cli.shared import State, pass_state
from mqd.errors import MQDError
from mqd.exitcodes import ExitCode

__all__ = ["reload", "run"]


@click.command()
@click.option(
    "--once",
    is_flag=True,
    help="Take what is in the spools, deliver everything due now, then exit (for cron).",
)
@click.option(
    "--no-progress",
    is_flag=True,
    help="With --once: no progress bar (one is drawn only when stderr is a terminal).",
)
@click.option("--worker", default=1, type=click.IntRange(min=1), hidden=True)
@pass_state
def run(state: State, once: bool, no_progress: bool, worker: int) -> None:
    """Run the daemon in the foreground (stop with Ctrl-C or SIGTERM).

    With queue.workers = N in the config, this process starts N - 1 more daemon processes that
    share the spools, and stops them when it stops.
    """
    import mqd.daemon.signals as daemon
    from mqd.daemon.preflight import check
    from mqd.plugins.host import PluginHost

    # The checks 'mqd config check' runs, every problem named at once (exit 78).
    host = PluginHost()
    config = check(state.locate(), host).config
    if worker > config.queue.workers:
        raise click.UsageError(
            f"--worker {worker}: the config has queue.workers = {config.queue.workers}"
        )
    if config.queue.workers > 1:
        config = config.for_worker(worker)
        if worker > 1:
            from mqd.logs import setup_logging

            setup_logging(state.log_level, state.log_format, worker=worker)
    if not once:
        daemon.run(config, host=host, cli_args=state.log_args)
        return
    import asyncio

    from mqd.cli.progress import DeliveryProgress, count_due_work, maybe_bar, wanted

    # With several workers each process sees only its own deliveries: no bar.
    show = wanted(sys.stderr, not no_progress) and config.queue.workers == 1
    total = asyncio.run(count_due_work(config)) if show else 0  # reading the queue for a bar
    with maybe_bar(total, "delivering", sys.stderr, show) as bar:
        if bar is not None:
            host = PluginHost(extra=(DeliveryProgress(bar),))
        daemon.run(config, once=True, host=host, cli_args=state.log_args)


@click.command()
@pass_state
def reload(state: State) -> None:
    """Ask the running daemon to re-read its config (what SIGHUP does).

    A config that does not load is refused (exit 78) and the daemon keeps the one it has.
    """
    import asyncio
    import contextlib

    from mqd.admin.control import ControlError, DaemonNotRunning, call

    config = state.load()  # a file that does not load never reaches the daemon

    async def reload_each() -> dict[str, Any]:
        summary = await call(config.queue.dir, "reload")
        for directory in config.queue.worker_dirs[1:]:
            # A worker not running now reads the config when worker 1 starts it again.
            with contextlib.suppress(DaemonNotRunning):
                await call(directory, "reload")
        return dict(summary)

    try:
        summary = asyncio.run(reload_each())
    except DaemonNotRunning:
        raise MQDError(
            f"no mqd daemon is running on {config.queue.dir}: there is nothing to reload "
            "(the next 'mqd run' reads the config)"
        ) from None
    except ControlError as exc:
        if exc.kind != "ConfigError":
            raise
        # The daemon checked the file and kept its running config.
        click.echo(f"mqd: error: reload refused, the daemon keeps its config: {exc}", err=True)
        sys.exit(ExitCode.CONFIG)
    workers = config.queue.workers
    click.echo(
        str(summary["reloaded"]) + (f" (in each of {workers} workers)" if workers > 1 else "")
    )
