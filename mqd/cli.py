"""The ``mqd`` command line (click). Each command is thin: it loads the config and calls the
module that does the work. Errors print one line naming what to fix and exit with a named code
(``mqd.exitcodes``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import tomli_w

from . import __version__
from .config import CONFIG_ENV, Config, load_config, locate_config
from .errors import (
    ConfigError,
    MessageParseError,
    MQDError,
    QueueError,
    QueueLockedError,
)
from .exitcodes import ExitCode
from .logs import LOG_FORMATS, setup_logging
from .paths import default_paths

F = TypeVar("F", bound=Callable[..., Any])

_ERROR_CODES: tuple[tuple[type[MQDError], ExitCode], ...] = (
    (ConfigError, ExitCode.CONFIG),
    (QueueLockedError, ExitCode.TEMPFAIL),
    (QueueError, ExitCode.CANTCREAT),
    (MessageParseError, ExitCode.DATAERR),
    (MQDError, ExitCode.FAILURE),
)


class MQDGroup(click.Group):
    """Turns mqd's errors into one line on stderr and a named exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MQDError as exc:
            code = next(code for kind, code in _ERROR_CODES if isinstance(exc, kind))
            click.echo(f"mqd: error: {exc}", err=True)
            ctx.exit(code)


class State:
    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path

    def load(self) -> Config:
        return load_config(locate_config(self.config_path))


pass_state = click.make_pass_decorator(State)


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
    ctx.obj = State(config_path)
    setup_logging(log_level, log_format)


@cli.command()
@click.option(
    "--once",
    is_flag=True,
    help="Take what is in the spools, deliver everything due now, then exit (for cron).",
)
@pass_state
def run(state: State, once: bool) -> None:
    """Run the daemon in the foreground (stop with Ctrl-C or SIGTERM)."""
    from . import daemon

    daemon.run(state.load(), once=once)


@cli.command()
@click.option("--from", "sender", required=True, help="Sender address (From and envelope).")
@click.option("--to", "to", multiple=True, required=True, help="Recipient; repeat for more.")
@click.option("--cc", "cc", multiple=True, help="Copy recipient; repeat for more.")
@click.option("--subject", default="", help="Subject line.")
@click.option(
    "--body",
    default=None,
    help="Body text. Without it the body is read from standard input (if not a terminal).",
)
@click.option(
    "--attach",
    "attachments",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File to attach; repeat for more.",
)
@click.option(
    "--count",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Queue this many copies (each with its own Message-ID), for load tests.",
)
@click.option(
    "--spool",
    type=click.Path(file_okay=False, path_type=Path),
    help="Spool directory to write into. Default: [sendmail] spool, else the first spool.",
)
@pass_state
def send(
    state: State,
    sender: str,
    to: tuple[str, ...],
    cc: tuple[str, ...],
    subject: str,
    body: str | None,
    attachments: tuple[Path, ...],
    count: int,
    spool: Path | None,
) -> None:
    """Compose a message and drop it into a spool (the daemon delivers it)."""
    from .compose import compose, with_new_message_id
    from .inject import inject_many

    if body is None:
        body = "" if sys.stdin.isatty() else sys.stdin.read()
    target = spool or state.load().inject_spool
    message = compose(
        sender=sender, to=to, cc=cc, subject=subject, body=body, attachments=attachments
    )
    domain = sender.rpartition("@")[2]
    copies = (message if i == 0 else with_new_message_id(message, domain) for i in range(count))
    try:
        written = inject_many(target, copies)
    except OSError as exc:
        click.echo(f"mqd: error: cannot write into the spool {target}: {exc}", err=True)
        sys.exit(ExitCode.CANTCREAT)
    if count == 1:
        click.echo(f"queued {written[0]}")
    else:
        click.echo(f"queued {len(written)} messages in {target}")


@cli.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": ["--help"],
    },
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_state
def sendmail(state: State, args: tuple[str, ...]) -> None:
    """sendmail-compatible submission: message on stdin.

    \b
    Options: -t (recipients from the headers), -i / -oi (a lone "." does not end
    the message), -f SENDER, -F "Full Name", recipients as arguments. Usable as
    PHP's sendmail_path ("mqd sendmail -t -i") and from cron. A symlink named
    'sendmail' pointing at mqd behaves the same.
    """
    from . import sendmail as sendmail_module

    argv = list(args)
    if state.config_path is not None:
        argv = ["-C", str(state.config_path), *argv]
    sys.exit(sendmail_module.main(argv))


@cli.command()
@click.option(
    "--path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write. Default: --config, else $MQD_CONFIG, else the platform default.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--host", default="smtp.example.com", show_default=True, help="SMTP server.")
@click.option("--port", type=int, help="SMTP port. Default: 587 for starttls, 465 for tls.")
@click.option(
    "--security",
    type=click.Choice(["starttls", "tls", "none"]),
    default="starttls",
    show_default=True,
)
@click.option("--username", default="noreply@example.com", show_default=True)
@click.option(
    "--sender",
    "senders",
    multiple=True,
    help="Allowed sender address or '*@domain'; repeat for more.",
)
@pass_state
def init(
    state: State,
    path: Path | None,
    force: bool,
    host: str,
    port: int | None,
    security: str,
    username: str,
    senders: tuple[str, ...],
) -> None:
    """Write a commented starter config."""
    from .starter import StarterOptions, render_starter

    target = path or state.config_path
    if target is None:
        target = Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None
    target = target or default_paths().config_file
    if target.exists() and not force:
        click.echo(f"mqd: error: {target} already exists (use --force to overwrite)", err=True)
        sys.exit(ExitCode.CANTCREAT)
    options = StarterOptions(
        host=host,
        port=port,
        security=security,
        username=username,
        allowed_senders=list(senders) or [username if "@" in username else "noreply@example.com"],
    )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # No secret goes in this file (the password has its own file), and producers such as
        # 'mqd sendmail' run by a web server must read it to find the spool: 0644.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(render_starter(options))
        target.chmod(0o644)
    except OSError as exc:
        click.echo(f"mqd: error: cannot write {target}: {exc.strerror or exc}", err=True)
        sys.exit(ExitCode.CANTCREAT)
    click.echo(f"wrote {target}")
    steps = "edit it (host, allowed_senders)"
    if security != "none":
        password = target.parent / "smtp-password"
        steps += f", put the password alone in {password} and 'chmod 600' it"
    click.echo(f"next: {steps}, then run 'mqd --config {target} config check'")


@cli.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("check")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing when the config is valid.")
@pass_state
def config_check(state: State, quiet: bool) -> None:
    """Validate the config and print the effective settings (secrets redacted)."""
    from .plugins import PluginHost
    from .runtime import build_relays, effective_config

    loaded = state.load()
    relays = build_relays(loaded, PluginHost())
    if quiet:
        return
    source = str(loaded.source) if loaded.source else "embedded defaults (no config file found)"
    click.echo(f"# config: {source}")
    click.echo("# valid. Effective settings, defaults included, secrets redacted:\n")
    click.echo(tomli_w.dumps(effective_config(loaded)))
    for relay in relays.values():
        click.echo(f"# relay {relay.name}: {relay.describe()}")


@cli.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object: the plugins (with version, hooks, relays, error) and relay types.",
)
def plugins(as_json: bool) -> None:
    """List loaded plugins with their versions, what each provides, and disabled ones."""
    import dataclasses
    import json

    from .plugins import PluginHost

    host = PluginHost()
    infos = host.describe()
    types = sorted(host.relay_classes())
    if as_json:
        document = {"plugins": [dataclasses.asdict(info) for info in infos], "relay_types": types}
        click.echo(json.dumps(document, indent=2))
        return
    for info in infos:
        source = info.distribution or ("built in" if info.origin == "core" else info.origin)
        click.echo(f"{info.name} {info.version or '(no version)'} ({source})")
        if info.error:
            click.echo(f"    DISABLED: {info.error}")
        if info.hooks:
            click.echo(f"    hooks: {', '.join(info.hooks)}")
        if info.relays:
            click.echo(f"    relays: {', '.join(info.relays)}")
        for problem in info.problems:
            click.echo(f"    PROBLEM: {problem}")
    click.echo("relay types: " + ", ".join(types))
