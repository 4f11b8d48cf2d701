"""What ``mqd run`` checks before it starts, and what ``mqd config check`` reports: the same
checks, every problem at once.

The config file (every table, past its first problem), the relays (their plugins read their own
keys), the intake sources ([[smtpd]]: their classes read their own keys, the logins and the
certificates), and the directories the daemon will create or write. A directory is checked by
creating and removing a probe in it, or in the nearest parent that exists, because permission
bits do not tell: root may write anywhere by them, yet cannot create a directory under /proc or
on a read-only mount. Checking leaves nothing behind.

What stops the start: a queue directory that cannot be created or written, and a spool that
cannot be created. What only warns: a spool that exists but cannot be written (the daemon waits
for it, see docs/reliability.md) and a history database's directory (history is a record, not a
precondition of delivery).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.config.tracking import tracking_database
from mqd.errors import ConfigError, DirectoryError, raise_gathered
from mqd.intake.sources import check_sources
from mqd.plugins.host import PluginHost
from mqd.relays.base import Relay
from mqd.relays.build import build_relays

__all__ = ["Checked", "Environment", "check", "check_environment", "directory_problem"]


@dataclass
class Checked:
    """A config that passed every check, with its relays built, and what only warns."""

    config: Config
    relays: dict[str, Relay]
    warnings: list[ConfigError] = field(default_factory=list)


@dataclass
class Environment:
    """The directories' problems: ``errors`` stop the start, ``warnings`` do not."""

    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[ConfigError] = field(default_factory=list)


def check(path: Path | None, host: PluginHost) -> Checked:
    """Load ``path`` (None: the embedded defaults) and check it; raises ConfigError, or
    ConfigErrors naming every problem."""
    problems: list[ConfigError] = []
    config = load_config(path, problems)
    relays = build_relays(config, host, problems)
    problems += check_sources(config, host)
    environment = check_environment(config, skip=problems)
    raise_gathered(problems + environment.errors)
    return Checked(config, relays, environment.warnings)


def check_environment(config: Config, skip: Sequence[ConfigError] = ()) -> Environment:
    """The directories ``config`` names that mqd could not create or write, each as a
    DirectoryError on its key. A table with a problem in ``skip`` (its values may be stand-ins)
    is left out."""
    spoiled = {error.key.split(".")[0] for error in skip if error.key}
    found = Environment()

    def look(key: str, directory: Path, *, must_write: bool) -> None:
        problem = directory_problem(directory)
        if problem is None:
            return
        why, created = problem
        error = DirectoryError(why, path=config.source, key=key)
        (found.errors if must_write or created else found.warnings).append(error)

    if "queue" not in spoiled:
        look("queue.dir", config.queue.dir, must_write=True)
    for spool in config.spools:
        if f"spool[{spool.index}]" not in spoiled:
            look(f"spool[{spool.index}].path", spool.path, must_write=False)
    if (
        config.tracking.enabled
        and not spoiled & {"queue", "tracking"}
        and tracking_database(config) is None  # in the queue's database, not a file
    ):
        key = "tracking.path" if config.tracking.path else "queue.dir"
        if config.tracking_path.parent != config.queue.dir:
            problem = directory_problem(config.tracking_path.parent)
            if problem is not None:
                found.warnings.append(DirectoryError(problem[0], path=config.source, key=key))
    return found


def directory_problem(directory: Path) -> tuple[str, bool] | None:
    """Why mqd could not create ``directory`` or write in it, and whether it is the creating
    that fails; None when it could."""
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory, so {directory} cannot be used", True
    probe = existing / f".mqd-check-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
    except OSError as exc:
        cause = exc.strerror or str(exc)
        if existing == directory:
            return f"cannot write in {directory}: {cause} (check its owner and permissions)", False
        return (
            f"cannot create {directory}: {existing} does not take new directories ({cause}); "
            "choose another place, or create it with the daemon's user as its owner",
            True,
        )
    probe.rmdir()
    return None
