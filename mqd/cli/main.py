"""The ``mqd`` command line (click): the root group, its global options and the registration of
every command. Each command is thin: it loads the config and calls the module that does the work.
Errors print one line naming what to fix and exit with a named code (``mqd.exitcodes``).

The commands live one module per group (``mqd.cli.run``, ``mqd.cli.send``, ...); they import
``mqd.cli.shared``, never this module, and this module adds them to ``cli``: the imports run one
way only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mqd.cli.config import config, plugins
from mqd.cli.db import db
from mqd.cli.failed import failed
from mqd.cli.history import events, history
from mqd.cli.init import init
from mqd.cli.install_sendmail import install_sendmail
from mqd.cli.queue import queue
from mqd.cli.run import reload, run
from mqd.cli.send import send, sendmail
from mqd.cli.shared import State
from mqd.cli.smtpd import smtpd
from mqd.cli.status import status
from mqd.cli.suppress import suppress
from mqd.config.paths import default_paths
from mqd.config.schema import CONFIG_ENV
from mqd.errors import (
    ConfigError,
    ConfigErrors,
    DirectoryError,
    MessageParseError,
    MQDError,
    PolicyError,
    QueueError,
    QueueLockedError,
    QueueSchemaError,
    QueueUnavailableError,
    TrackingError,
)
from mqd.exitcodes import ExitCode
from mqd.logs import LOG_FORMATS, setup_logging
from mqd.version import __version__

__all__ = ["MQDGroup", "cli"]

_ERROR_CODES: tuple[tuple[type[MQDError], int], ...] = (
    (DirectoryError, ExitCode.CANTCREAT),
    (ConfigError, ExitCode.CONFIG),
    (QueueLockedError, ExitCode.TEMPFAIL),
    (QueueUnavailableError, ExitCode.TEMPFAIL),
    (QueueSchemaError, ExitCode.CONFIG),
    (QueueError, ExitCode.CANTCREAT),
    (MessageParseError, ExitCode.DATAERR),
    (PolicyError, ExitCode.NOPERM),
    (TrackingError, ExitCode.IOERR),
    (MQDError, ExitCode.FAILURE),
)


class MQDGroup(click.Group):
    """Turns mqd's errors into one line on stderr and a named exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MQDError as exc:
            code = _exit_code(exc)
            for line in str(exc).splitlines() or [""]:  # ConfigErrors: a line per problem
                click.echo(f"mqd: error: {line}", err=True)
            ctx.exit(code)


def _exit_code(exc: MQDError) -> int:
    if isinstance(exc, ConfigErrors):  # several problems: their code when they share one
        codes = {_exit_code(error) for error in exc.errors}
        return codes.pop() if len(codes) == 1 else ExitCode.CONFIG
    return next(code for kind, code in _ERROR_CODES if isinstance(exc, kind))


@click.group(cls=MQDGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Config file. Default: ${CONFIG_ENV}, else {default_paths().config_file} when it "
    "exists, else the embedded defaults.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe log messages to show (on stderr).",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="'json' writes one JSON object per line; delivery lines add id, sender, recipient, "
    "relay, outcome.",
)
@click.version_option(__version__, prog_name="mqd")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, log_level: str, log_format: str) -> None:
    """mqd: a mail queue daemon.

    Applications drop finished messages (.eml files) into a spool directory; mqd delivers them
    through an authenticated relay, retries what fails temporarily and bounces what cannot be
    delivered. Start with 'mqd init', check with 'mqd config check', then 'mqd run'.
    """
    ctx.obj = State(config_path, log_level, log_format)
    setup_logging(log_level, log_format)


for _command in (
    run,
    reload,
    send,
    sendmail,
    init,
    install_sendmail,
    config,
    plugins,
    queue,
    status,
    failed,
    history,
    events,
    smtpd,
    suppress,
    db,
):
    cli.add_command(_command)
