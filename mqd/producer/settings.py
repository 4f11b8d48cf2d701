"""What ``mqd sendmail`` needs from the config: written into the launcher, or read in full.

``mqd install-sendmail`` writes ``Settings.to_data`` into its launcher (``mqd.producer.launcher``),
from the config the full loader checked then; the launcher gives it to ``mqd.producer.sendmail``'s
``main``, which reads no config file then. Without it (``mqd sendmail``, ``mqd-sendmail``, an
older launcher), with a ``-C`` naming another config, or when the config file has changed since
the launcher was written (its size or modification time: one ``stat``), the full loader reads
the config: slower, never stale. On the sendmail path: no ``__future__``, annotations quoted.
"""

import os
import sys

from mqd.config.senders import SenderRules
from mqd.errors import ConfigError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know it)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from mqd.config.schema import Config

__all__ = ["FORMAT", "Settings", "settings"]

#: The shape of ``Settings.to_data``: a launcher written for another is read as having none.
FORMAT = 3


class Settings:
    """What the sendmail path needs from the config, as plain values (a plain class: a dataclass
    costs the import of ``dataclasses``)."""

    __slots__ = ("config", "launcher", "origin", "qualify_domain", "rules", "spool")

    def __init__(
        self,
        *,
        config: str | None,
        spool: str,
        qualify_domain: str | None,
        rules: SenderRules,
        origin: str | None = None,
        launcher: str | None = None,
    ) -> None:
        #: The config file these came from (absolute); None for the embedded defaults.
        self.config = config
        self.spool = spool
        self.qualify_domain = qualify_domain
        #: The spool's sender policy: checked before anything is written.
        self.rules = rules
        #: The domain of a sender made from the login name (mail without -f or From):
        #: qualify_domain, else queue.hostname (as Postfix's myorigin defaults to myhostname).
        self.origin = origin or qualify_domain
        #: The launcher these were written into; None when read from the config.
        self.launcher = launcher

    @classmethod
    def from_config(cls, config: "Config") -> "Settings":
        source = None if config.source is None else os.path.abspath(config.source)
        spool = config.spool_at(config.inject_spool)
        if spool is None:  # mqd.config.load refuses a [sendmail] spool no [[spool]] names
            raise ConfigError(f"the spool {config.inject_spool} is not configured")
        return cls(
            config=source,
            spool=os.path.abspath(spool.path),
            qualify_domain=config.sendmail.qualify_domain,
            rules=SenderRules.from_config(config, spool),
            origin=config.sendmail.qualify_domain or config.queue.hostname,
        )

    @property
    def source(self) -> str:
        """Where these came from, for messages."""
        config = self.config or "the embedded defaults"
        if self.launcher is None:
            return f"config {config}"
        return f"config {config}, as written into {self.launcher} by mqd install-sendmail"

    def to_data(self) -> "dict[str, Any]":
        """These as a literal the launcher holds (str, int, None, lists and dicts of them), with
        the config file's size and modification time, by which ``settings`` knows it changed."""
        stamp = None
        if self.config is not None:
            stat = os.stat(self.config)
            stamp = [stat.st_mtime_ns, stat.st_size]
        return {
            "format": FORMAT,
            "config": self.config,
            "stamp": stamp,
            "spool": self.spool,
            "qualify_domain": self.qualify_domain,
            "origin": self.origin,
            "rules": self.rules.to_data(),
        }


def settings(config: str | None, baked: "Mapping[str, Any] | None" = None) -> Settings:
    """The settings for the config named by ``-C`` (None: the launcher's, else ``$MQD_CONFIG``,
    then the platform's default, as ``mqd.config.paths.locate_config``): ``baked`` when they are
    for that config and it has not changed since, else read by the full loader (raising its
    ConfigError)."""
    if baked is not None:
        found = _baked(config, baked)
        if found is not None:
            return found
        if config is None and baked.get("format") == FORMAT:
            config = baked["config"]  # the launcher's config, changed since: read it in full
    from pathlib import Path

    from mqd.config.load import load_config
    from mqd.config.paths import locate_config

    explicit = None if config is None else Path(config)
    return Settings.from_config(load_config(locate_config(explicit)))


def _baked(config: str | None, baked: "Mapping[str, Any]") -> Settings | None:
    """``baked`` as Settings; None when they are for another config or another format, or the
    config file has changed since they were written (said on stderr: the launcher is stale)."""
    if baked.get("format") != FORMAT:
        return None
    source = baked["config"]
    if config is not None and (source is None or os.path.abspath(config) != source):
        return None  # -C names another config than the launcher's
    if source is not None:
        try:
            stat = os.stat(source)
        except OSError:
            return None  # the full loader says what is wrong with it
        if [stat.st_mtime_ns, stat.st_size] != baked["stamp"]:
            launcher = baked.get("launcher") or "the launcher"
            print(
                f"mqd sendmail: {source} has changed since {launcher} was written: reading it "
                f"in full (slower); write the launcher again with 'mqd --config {source} "
                f"install-sendmail --force {launcher}'",
                file=sys.stderr,
            )
            return None
    return Settings(
        config=source,
        spool=baked["spool"],
        qualify_domain=baked["qualify_domain"],
        rules=SenderRules.from_data(baked["rules"]),
        origin=baked["origin"],
        launcher=baked.get("launcher"),
    )
