"""``mqd init``: write a commented starter config (rendered by ``mqd.cli.starter``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from mqd.cli.shared import State, pass_state
from mqd.config.paths import default_paths
from mqd.config.schema import CONFIG_ENV
from mqd.exitcodes import ExitCode

__all__ = ["init"]


@click.command()
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
