"""What ``mqd run`` checks before it starts, and what ``mqd config check`` reports: the same
checks, every problem at once.

The config file (every table, past its first problem), the relays (their plugins read their own
keys), and the directories the daemon will create or write: the queue, each spool, the tracking
database's. A directory is checked by creating and removing a probe in the nearest directory that
exists, because permission bits do not tell: root may write anywhere by them, yet cannot create
a directory under /proc or on a read-only mount. Checking leaves nothing behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.errors import ConfigError, raise_gathered
from mqd.plugins.host import PluginHost
from mqd.relays.base import Relay
from mqd.relays.build import build_relays

__all__ = ["Checked", "check", "directory_problem", "environment_problems"]


@dataclass
class Checked:
    """A config that passed every check, with its relays built."""

    config: Config
    relays: dict[str, Relay]


def check(path: Path | None, host: PluginHost) -> Checked:
    """Load ``path`` (None: the embedded defaults) and check it; raises ConfigError, or
    ConfigErrors naming every problem."""
    problems: list[ConfigError] = []
    config = load_config(path, problems)
    relays = build_relays(config, host, problems)
    problems += environment_problems(config, skip=problems)
    raise_gathered(problems)
    return Checked(config, relays)


def environment_problems(config: Config, skip: Sequence[ConfigError] = ()) -> list[ConfigError]:
    """The directories ``config`` names that mqd could not create or write, each as a
    ConfigError on its key. A table already in ``skip`` (its values may be stand-ins) is left
    out."""
    spoiled = {error.key.split(".")[0] for error in skip if error.key}
    wanted: list[tuple[str, Path]] = []
    if "queue" not in spoiled:
        wanted.append(("queue.dir", config.queue.dir))
        if config.tracking.enabled and "tracking" not in spoiled:
            key = "tracking.path" if config.tracking.path else "queue.dir"
            wanted.append((key, config.tracking_path.parent))
    for spool in config.spools:
        if f"spool[{spool.index}]" not in spoiled:
            wanted.append((f"spool[{spool.index}].path", spool.path))
    problems = []
    seen: set[Path] = set()
    for key, directory in wanted:
        if directory in seen:
            continue
        seen.add(directory)
        why = directory_problem(directory)
        if why is not None:
            problems.append(ConfigError(why, path=config.source, key=key))
    return problems


def directory_problem(directory: Path) -> str | None:
    """Why mqd could not create ``directory`` or write in it, or None when it could."""
    existing = directory
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory, so {directory} cannot be used"
    probe = existing / f".mqd-check-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
    except OSError as exc:
        cause = exc.strerror or str(exc)
        if existing == directory:
            return f"cannot write in {directory}: {cause} (check its owner and permissions)"
        return (
            f"cannot create {directory}: {existing} does not take new directories ({cause}); "
            "choose another place, or create it with the daemon's user as its owner"
        )
    probe.rmdir()
    return None
