"""Where mqd looks for its config and keeps its state when the config does not say.

Root on Linux and the BSDs uses the filesystem hierarchy a system service expects
(``/etc/mqd``, ``/var/lib/mqd``, ``/var/spool/mqd``); everyone else gets platformdirs' per-user
directories (``~/.config/mqd`` and ``~/.local/state/mqd`` on Linux, ``~/Library/...`` on macOS,
``%LOCALAPPDATA%\\mqd`` on Windows). A Windows service running as LocalSystem gets the per-user
dirs of that account; its install docs pass ``--config`` explicitly.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from mqd.errors import ConfigError

__all__ = [
    "APP_NAME",
    "CONFIG_ENV",
    "SYSTEM_CONFIG",
    "DefaultPaths",
    "default_paths",
    "is_system_service",
    "locate_config",
]

APP_NAME = "mqd"
CONFIG_FILE_NAME = "mqd.toml"
#: The system-wide config: root's default, and everyone's fallback when they have none.
SYSTEM_CONFIG = Path("/etc/mqd") / CONFIG_FILE_NAME
#: The environment variable naming the config file.
CONFIG_ENV = "MQD_CONFIG"


@dataclass(frozen=True)
class DefaultPaths:
    config_file: Path
    queue_dir: Path
    spool_dir: Path
    outbox_dir: Path


def is_system_service() -> bool:
    """True when running as root on a Unix other than macOS: use the system-wide layout."""
    return sys.platform != "darwin" and hasattr(os, "geteuid") and os.geteuid() == 0


def default_paths() -> DefaultPaths:
    """The platform's default locations (nothing is created here)."""
    if is_system_service():
        return DefaultPaths(
            config_file=SYSTEM_CONFIG,
            queue_dir=Path("/var/lib/mqd/queue"),
            spool_dir=Path("/var/spool/mqd"),
            outbox_dir=Path("/var/lib/mqd/outbox"),
        )
    state = Path(platformdirs.user_state_dir(APP_NAME, appauthor=False))
    return DefaultPaths(
        config_file=Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))
        / CONFIG_FILE_NAME,
        queue_dir=state / "queue",
        spool_dir=state / "spool",
        outbox_dir=state / "outbox",
    )


def locate_config(explicit: Path | None = None) -> Path | None:
    """The config file to use, or None for embedded defaults.

    An explicit path (option or environment) must exist; the platform default is optional.
    """
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(
                "config file not found (given with --config); create it with 'mqd init'",
                path=explicit,
            )
        return explicit
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise ConfigError(
                f"config file not found (named by ${CONFIG_ENV}); create it with 'mqd init'",
                path=path,
            )
        return path
    default = default_paths().config_file
    if default.is_file():
        return default
    # A producer that is not root ('mqd sendmail' from a web server or a user's crontab) uses
    # the system-wide config when it has none of its own, so it finds the daemon's spool.
    if default != SYSTEM_CONFIG and SYSTEM_CONFIG.is_file() and os.name == "posix":
        return SYSTEM_CONFIG
    return None
