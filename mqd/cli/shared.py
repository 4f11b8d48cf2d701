"""What the command modules of ``mqd`` share: the state the root group passes down (``State``,
``pass_state``) and the small helpers for admin requests, JSON output and confirmation.

This module imports no command module and not the root group (``mqd.cli.main``), so that every
command module can import it and ``mqd.cli.main`` can import every command module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mqd.config.load import load_config, locate_config
from mqd.config.schema import Config
from mqd.exitcodes import ExitCode

__all__ = [
    "State",
    "admin_request",
    "confirm",
    "duration_option",
    "echo_each",
    "pass_state",
    "print_json",
    "stdin_is_terminal",
]


class State:
    """The root group's options, for its commands: where the config is and how to log."""

    def __init__(
        self, config_path: Path | None, log_level: str = "info", log_format: str = "text"
    ) -> None:
        self.config_path = config_path
        self.log_level = log_level
        self.log_format = log_format

    @property
    def log_args(self) -> tuple[str, ...]:
        """--log-level and --log-format as given, for the other workers of queue.workers."""
        return ("--log-level", self.log_level, "--log-format", self.log_format)

    def locate(self) -> Path | None:
        """The config file: --config, else $MQD_CONFIG, else the default path; None for the
        embedded defaults."""
        return locate_config(self.config_path)

    def load(self) -> Config:
        """The config from --config, else $MQD_CONFIG, else the default path or the embedded
        defaults; raises ConfigError (exit 78) when it does not load."""
        return load_config(self.locate())


pass_state = click.make_pass_decorator(State)


def duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A duration as in the config ("30s", "5m", "1h30m", "2d") in seconds."""
    from mqd.config.units import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def admin_request(config: Config, op: str, **args: Any) -> Any:
    """``op`` through the running daemon, or on the queue files when none runs."""
    import asyncio

    from mqd.admin.fanout import request

    return asyncio.run(request(config, op, args))


def print_json(document: Any) -> None:
    """``document`` as indented JSON on stdout (values JSON does not know as strings)."""
    import json

    click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def confirm(question: str, yes: bool) -> None:
    """Ask ``question`` on a terminal; without one, refuse unless ``yes`` (exit 64).

    A "no" prints "nothing done" and exits 1."""
    if yes:
        return
    if not stdin_is_terminal():
        raise click.UsageError(
            "this asks for confirmation, but standard input is not a terminal: add --yes"
        )
    if not click.confirm(question, default=False, err=True):
        click.echo("mqd: nothing done", err=True)
        sys.exit(ExitCode.FAILURE)


def echo_each(verb: str, ids: list[str], none: str, *, total: bool = False) -> None:
    """One line "<verb> <id>" for each id, or ``none`` when there is none.

    With ``total`` (a bulk command without ``-v``) one line "<verb> N messages" instead: 300
    lines of ids tell nobody anything a count does not."""
    if not ids:
        click.echo(none)
    elif total:
        click.echo(f"{verb} {plural(len(ids), 'message')} (-v lists them)")
    else:
        for entry_id in ids:
            click.echo(f"{verb} {entry_id}")


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """ "1 message", "2 messages" (``nouns``: a plural not made with an s, "addresses")."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
