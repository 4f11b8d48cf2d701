"""``mqd install-sendmail``: write the sendmail launcher (``mqd.producer.launcher``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mqd.cli.shared import State, pass_state
from mqd.exitcodes import ExitCode

__all__ = ["install_sendmail"]


@click.command("install-sendmail")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing file (a real sendmail's too).")
@pass_state
def install_sendmail(state: State, path: Path, force: bool) -> None:
    """Write a sendmail launcher at PATH, cheaper per message than mqd-sendmail.

    The launcher is 'mqd sendmail' started without Python's site.py (python -S),
    with the import path site.py gives this installation written into it: about
    a third of an interpreter's start less for every message. It also holds what
    sendmail needs from the config (--config, else $MQD_CONFIG, else the default),
    checked now, so it reads no config file; when that file changes it reads it
    in full (slower, said on stderr) until written again. Write it again after
    moving or reinstalling mqd too (until then it falls back to site.py). E.g.:

    \b
      mqd --config /etc/mqd/mqd.toml install-sendmail /usr/sbin/sendmail
      php.ini: sendmail_path = "/usr/sbin/sendmail -t -i"
    """
    from mqd.producer.launcher import LauncherError, write_launcher

    config = state.load()  # a config with problems: exit 78, naming them
    try:
        write_launcher(path, config, force=force)
    except LauncherError as exc:
        click.echo(f"mqd: error: {exc}", err=True)
        sys.exit(ExitCode.CANTCREAT)
    source = config.source if config.source is not None else "the embedded defaults"
    click.echo(
        f"wrote {path}: mqd sendmail started without site.py, with the spool "
        f"{config.inject_spool} from {source}"
    )
