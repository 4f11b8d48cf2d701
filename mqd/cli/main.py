"""The ``mqd`` command line (click). Each command is thin: it loads the config and calls the
module that does the work. Errors print one line naming what to fix and exit with a named code
(``mqd.exitcodes``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import tomli_w

from mqd.config.load import load_config, locate_config
from mqd.config.paths import default_paths
from mqd.config.schema import CONFIG_ENV, Config
from mqd.errors import (
    ConfigError,
    MessageParseError,
    MQDError,
    QueueError,
    QueueLockedError,
    TrackingError,
)
from mqd.exitcodes import ExitCode
from mqd.logs import LOG_FORMATS, setup_logging
from mqd.version import __version__

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from mqd.tracking.sqlite import SQLiteStore

F = TypeVar("F", bound=Callable[..., Any])

_ERROR_CODES: tuple[tuple[type[MQDError], ExitCode], ...] = (
    (ConfigError, ExitCode.CONFIG),
    (QueueLockedError, ExitCode.TEMPFAIL),
    (QueueError, ExitCode.CANTCREAT),
    (MessageParseError, ExitCode.DATAERR),
    (TrackingError, ExitCode.IOERR),
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
    ctx.obj = State(config_path, log_level, log_format)
    setup_logging(log_level, log_format)


@cli.command()
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

    config = state.load()
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
        daemon.run(config, cli_args=state.log_args)
        return
    import asyncio

    from mqd.cli.progress import DeliveryProgress, count_due_work, maybe_bar, wanted
    from mqd.plugins.host import PluginHost

    # With several workers each process sees only its own deliveries: no bar.
    show = wanted(sys.stderr, not no_progress) and config.queue.workers == 1
    total = asyncio.run(count_due_work(config)) if show else 0  # reading the queue for a bar
    with maybe_bar(total, "delivering", sys.stderr, show) as bar:
        host = PluginHost(extra=(DeliveryProgress(bar),)) if bar is not None else None
        daemon.run(config, once=True, host=host, cli_args=state.log_args)


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
@click.option(
    "--no-progress",
    is_flag=True,
    help="With --count: no progress bar (one is drawn only when stderr is a terminal).",
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
    no_progress: bool,
) -> None:
    """Compose a message and drop it into a spool (the daemon delivers it)."""
    from mqd.cli.progress import counted, maybe_bar
    from mqd.message.compose import compose, with_new_message_id
    from mqd.producer.inject import inject_many

    if body is None:
        body = "" if sys.stdin.isatty() else sys.stdin.read()
    target = spool or state.load().inject_spool
    message = compose(
        sender=sender, to=to, cc=cc, subject=subject, body=body, attachments=attachments
    )
    domain = sender.rpartition("@")[2]
    copies = (message if i == 0 else with_new_message_id(message, domain) for i in range(count))
    try:
        with maybe_bar(count if count > 1 else 0, "queueing", sys.stderr, not no_progress) as bar:
            written = inject_many(target, counted(copies, bar))
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
    import mqd.producer.sendmail as sendmail_module

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
    from mqd.cli.starter import StarterOptions, render_starter

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


@cli.command("install-sendmail")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing file (a real sendmail's too).")
@pass_state
def install_sendmail(state: State, path: Path, force: bool) -> None:
    """Write a sendmail launcher at PATH, cheaper per message than mqd-sendmail.

    The launcher is 'mqd sendmail' started without Python's site.py (python -S),
    with the import path site.py gives this installation written into it: about
    a third of an interpreter's start less for every message. With --config, the
    launcher reads that config unless given -C. Write it again after moving or
    reinstalling mqd (until then it falls back to site.py). For example:

    \b
      mqd --config /etc/mqd/mqd.toml install-sendmail /usr/sbin/sendmail
      php.ini: sendmail_path = "/usr/sbin/sendmail -t -i"
    """
    from mqd.producer.launcher import LauncherError, write_launcher

    try:
        write_launcher(path, force=force, config=state.config_path)
    except LauncherError as exc:
        click.echo(f"mqd: error: {exc}", err=True)
        sys.exit(ExitCode.CANTCREAT)
    config = f", reading {state.config_path}" if state.config_path is not None else ""
    click.echo(f"wrote {path}: mqd sendmail started without site.py{config}")


@cli.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("check")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing when the config is valid.")
@pass_state
def config_check(state: State, quiet: bool) -> None:
    """Validate the config and print the effective settings (secrets redacted)."""
    from mqd.config.effective import effective_config
    from mqd.plugins.host import PluginHost
    from mqd.relays.build import build_relays

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

    from mqd.plugins.host import PluginHost

    host = PluginHost()
    infos = host.describe()
    types = sorted(host.relay_names())
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


# -- queue administration -------------------------------------------------------------------------


def _duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A duration as in the config ("30s", "5m", "1h30m", "2d") in seconds."""
    from mqd.config.units import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _request(config: Config, op: str, **args: Any) -> Any:
    """``op`` through the running daemon, or on the queue files when none runs."""
    import asyncio

    from mqd.admin.fanout import request

    return asyncio.run(request(config, op, args))


def _print_json(document: Any) -> None:
    import json

    click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def _confirm(question: str, yes: bool) -> None:
    """Ask ``question`` on a terminal; without one, refuse unless ``yes`` (exit 64)."""
    if yes:
        return
    if not _stdin_is_terminal():
        raise click.UsageError(
            "this asks for confirmation, but standard input is not a terminal: add --yes"
        )
    if not click.confirm(question, default=False, err=True):
        click.echo("mqd: nothing done", err=True)
        sys.exit(ExitCode.FAILURE)


def _echo_each(verb: str, ids: list[str], none: str) -> None:
    for entry_id in ids:
        click.echo(f"{verb} {entry_id}")
    if not ids:
        click.echo(none)


@cli.group()
def queue() -> None:
    """Administer the queue (daemon running or not).

    With a running daemon the commands go through its control socket; without one they take
    the queue lock and work on the files.
    """


@queue.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object a message.")
@click.option("--relay", help="Only messages routed through this relay.")
@click.option(
    "--state",
    "wanted_state",
    type=click.Choice(["active", "waiting", "deferred", "held"]),
    help="Only messages in this state.",
)
@pass_state
def queue_list(state: State, as_json: bool, relay: str | None, wanted_state: str | None) -> None:
    """List the queue, like mailq.

    Id, age, size, state, attempts, next attempt and sender of each message, and each recipient
    with its last reply.
    """
    import time

    from mqd.admin.render import render_queue

    rows = _request(state.load(), "list", relay=relay, state=wanted_state)
    if as_json:
        _print_json(rows)
        return
    filtered = " and ".join(
        f"{name} {value}" for name, value in (("relay", relay), ("state", wanted_state)) if value
    )
    for line in render_queue(rows, time.time(), filtered=f"with {filtered}" if filtered else ""):
        click.echo(line)


@queue.command("show")
@click.argument("entry_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_state
def queue_show(state: State, entry_id: str, as_json: bool) -> None:
    """Show one message in full.

    Envelope, recipients, attempt history and headers. ID may be the start of a queue id.
    """
    import time

    from mqd.admin.render import render_show

    row = _request(state.load(), "show", id=entry_id)
    if as_json:
        _print_json(row)
        return
    for line in render_show(row, time.time()):
        click.echo(line)


@queue.command("retry")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Every message in the queue.")
@click.option("--relay", help="Every message routed through this relay.")
@pass_state
def queue_retry(state: State, ids: tuple[str, ...], all_: bool, relay: str | None) -> None:
    """Try messages again now.

    Instead of at their next attempt; held ones stay held. With --all or --relay, the relays'
    circuit breakers are reset too.
    """
    if not (ids or all_ or relay):
        raise click.UsageError("name queue ids, or give --all or --relay NAME")
    result = _request(state.load(), "retry", ids=list(ids) or None, all=all_, relay=relay)
    _echo_each("retrying", result["retried"], "nothing to retry (held messages stay held)")


@queue.command("flush")
@pass_state
def queue_flush(state: State) -> None:
    """Retry every message now (what SIGUSR1 does to the daemon)."""
    result = _request(state.load(), "flush")
    count = len(result["retried"])
    click.echo(f"flushed: {count} message{'s' if count != 1 else ''} due now")


@queue.command("hold")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@pass_state
def queue_hold(state: State, ids: tuple[str, ...]) -> None:
    """Keep messages in the queue without trying them, until released."""
    result = _request(state.load(), "hold", ids=list(ids))
    _echo_each("held", result["held"], "nothing held")


@queue.command("release")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Every held message.")
@pass_state
def queue_release(state: State, ids: tuple[str, ...], all_: bool) -> None:
    """Let held messages go: they are tried now."""
    if not (ids or all_):
        raise click.UsageError("name queue ids, or give --all")
    result = _request(state.load(), "release", ids=list(ids) or None, all=all_)
    _echo_each("released", result["released"], "nothing released (no held message matched)")


@queue.command("delete")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def queue_delete(state: State, ids: tuple[str, ...], yes: bool) -> None:
    """Remove messages for good (no bounce).

    They are not delivered, get no bounce and do not go to the failed folder.
    """
    config = state.load()
    _confirm(f"Delete {', '.join(ids)} for good (no delivery, no bounce)?", yes)
    result = _request(config, "delete", ids=list(ids))
    _echo_each("deleted", result["deleted"], "nothing deleted")


@queue.command("bounce")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def queue_bounce(state: State, ids: tuple[str, ...], yes: bool) -> None:
    """Return messages to their senders now.

    Every recipient not yet delivered fails: a bounce (DSN) goes to the sender and the message
    to the failed folder.
    """
    config = state.load()
    _confirm(f"Return {', '.join(ids)} to the sender now (a bounce for each)?", yes)
    result = _request(config, "bounce", ids=list(ids))
    _echo_each("bounced", result["bounced"], "nothing bounced")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--check",
    is_flag=True,
    help="Exit 1 when something needs attention (a relay's circuit is open; with --warn-age, "
    "a message waiting too long), listing each problem on stderr.",
)
@click.option(
    "--warn-age",
    callback=_duration_option,
    metavar="DURATION",
    help="With --check (implied): a problem when the oldest message waited longer, e.g. 1h.",
)
@pass_state
def status(state: State, as_json: bool, check: bool, warn_age: float | None) -> None:
    """Daemon, queue and relay health at a glance.

    Whether the daemon runs, the queue by state, the oldest message, the failed count and each
    relay's health.
    """
    from mqd.admin.render import render_status, status_problems

    result = _request(state.load(), "status")
    if as_json:
        _print_json(result)
    else:
        for line in render_status(result):
            click.echo(line)
    if check or warn_age is not None:
        problems = status_problems(result, warn_age)
        for problem in problems:
            click.echo(f"mqd: warning: {problem}", err=True)
        if problems:
            sys.exit(ExitCode.FAILURE)


@cli.command()
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


# -- the failed folder ----------------------------------------------------------------------------


@cli.group()
def failed() -> None:
    """The failed folder: list, retry, delete.

    Messages mqd gave up on: refused at intake or by policy, undeliverable, bounced.
    """


@failed.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the records.")
@pass_state
def failed_list(state: State, as_json: bool) -> None:
    """List the failed folder.

    Id, when, stage and sender of each message, its failed recipients and why.
    """
    import asyncio
    import time

    from mqd.admin.failed import failed_dir, list_failed
    from mqd.admin.render import render_failed

    messages = asyncio.run(list_failed(failed_dir(state.load())))
    if as_json:
        _print_json([m.to_dict() for m in messages])
        return
    for line in render_failed(messages, time.time()):
        click.echo(line)


@failed.command("retry")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Every failed message (bounces are skipped).")
@click.option(
    "--spool",
    type=click.Path(file_okay=False, path_type=Path),
    help="Spool to re-inject into. Default: the spool that refused it, else [sendmail] spool, "
    "else the first spool.",
)
@pass_state
def failed_retry(state: State, ids: tuple[str, ...], all_: bool, spool: Path | None) -> None:
    """Send failed messages again.

    Each is re-injected into a spool (a new queue id, policy checked again), to the recipients
    that failed only, and removed from the failed folder. Bounces are not retried.
    """
    import asyncio

    import mqd.admin.failed as failed_module

    if not (ids or all_):
        raise click.UsageError("name failed ids, or give --all")
    config = state.load()
    folder = failed_module.failed_dir(config)

    async def retry() -> failed_module.RetryReport:
        messages = await (folder.messages() if all_ else folder.find(ids))
        return await failed_module.retry(config, messages, spool=spool, skip_unretryable=all_)

    report = asyncio.run(retry())
    for old_id, written, recipients in report.retried:
        to = f" to {', '.join(f'<{r}>' for r in recipients)}" if recipients else ""
        click.echo(f"retried {old_id}{to}: {written}")
    for old_id, why in report.skipped:
        click.echo(f"mqd: skipped {old_id}: {why}", err=True)
    if not report.retried and not report.skipped:
        click.echo("no failed messages")


@failed.command("delete")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def failed_delete(state: State, ids: tuple[str, ...], yes: bool) -> None:
    """Remove failed messages for good.

    Both files go: the message and its reason record.
    """
    import asyncio

    import mqd.admin.failed as failed_module

    config = state.load()
    messages = asyncio.run(failed_module.failed_dir(config).find(ids))
    _confirm(f"Delete {', '.join(m.id for m in messages)} from the failed folder?", yes)
    deleted = asyncio.run(failed_module.delete(config, messages))
    _echo_each("deleted", deleted, "nothing deleted")


# -- tracking -------------------------------------------------------------------------------------


def _tracking_store(config: Config) -> AbstractContextManager[SQLiteStore]:
    """The event store, read-only, for a ``with`` block; a clear error when tracking is off or
    has no database yet, and a TrackingError (exit 74) naming the file when it is damaged or
    cannot be read, whether at opening or by a query."""
    from mqd.tracking.sqlitefile import reading

    path = config.tracking_path
    if not config.tracking.enabled:
        raise ConfigError("tracking is off ([tracking] enabled = false): there is no history")
    if not path.exists():
        raise ConfigError(
            f"no event store at {path} yet: it is created when 'mqd run' starts with "
            "[tracking] enabled"
        )
    return reading(path)


@cli.command()
@click.argument("key", metavar="ID|MESSAGE-ID|ADDRESS")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of histories.")
@click.option(
    "--limit", default=20, show_default=True, type=click.IntRange(1), help="At most this many."
)
@pass_state
def history(state: State, key: str, as_json: bool, limit: int) -> None:
    """Show a message's timeline: accepted, queued, dispatched, delivered, opened ...

    KEY is mqd's queue id, a Message-ID (with or without <>), or an address: every message
    from or to it is shown, newest first. Reads the event store directly, so it works whether
    or not the daemon runs. Exit code 1 when nothing matches.
    """
    from mqd.tracking.queries import history as find
    from mqd.tracking.render import history_lines

    with _tracking_store(state.load()) as store:
        found = find(store, key, limit)
    if as_json:
        _print_json(found)
    else:
        for i, item in enumerate(found):
            if i:
                click.echo()
            for line in history_lines(item):
                click.echo(line)
    if not found:
        click.echo(f"mqd: no message matches {key!r}", err=True)
        sys.exit(ExitCode.FAILURE)


@cli.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they come.")
@click.option(
    "--last", "-n", default=20, show_default=True, type=click.IntRange(0), help="Start with these."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@click.option(
    "--interval",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.05),
    help="With --follow, seconds between looks at the store.",
)
@pass_state
def events(state: State, follow: bool, last: int, as_json: bool, interval: float) -> None:
    """Print the newest events of every message (like tail), and with --follow the new ones
    as they are recorded (Ctrl-C stops)."""
    import contextlib
    import json
    import time

    from mqd.tracking.render import event_line

    def show(batch: list[dict[str, Any]]) -> None:
        for event in batch:
            if as_json:
                click.echo(json.dumps(event, ensure_ascii=False, default=str))
            else:
                click.echo(event_line(event, with_message=True))

    with _tracking_store(state.load()) as store, contextlib.suppress(KeyboardInterrupt):
        seq = max(store.last_seq() - last, 0)
        while True:
            batch = store.events_after(seq, 500)
            show(batch)
            if batch:
                seq = batch[-1]["seq"]
                continue
            if not follow:
                return
            time.sleep(interval)
