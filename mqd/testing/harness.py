"""A daemon in a temporary directory: write a config, drop messages, run once, look at the queue.

The pytest fixture ``mqd_harness`` gives one rooted in the test's ``tmp_path``::

    async def test_delivers(mqd_harness):
        mqd_harness.configure({"main": {"plugin": "memory"}})
        mqd_harness.drop(make_message())
        await mqd_harness.run_once()
        assert mqd_harness.queued() == []
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar, overload

import tomli_w

from mqd.admin.client import offline
from mqd.clock import SYSTEM_CLOCK, Clock
from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.daemon.signals import async_run
from mqd.daemon.stores import failed_folder
from mqd.fsutil import atomic_write, make_dirs
from mqd.plugins.host import PluginHost
from mqd.producer.inject import inject
from mqd.queue.entry import QueueEntry
from mqd.relays.base import Relay
from mqd.testing._values import plain

__all__ = ["Harness", "queued_entries", "queued_entries_async"]

R = TypeVar("R", bound=Relay)
T = TypeVar("T")

#: Queue settings for tests: retries due within seconds, a fixed bounce sender.
DEFAULT_QUEUE: dict[str, Any] = {
    "bounce_sender": "mailer-daemon@mqd.test",
    "scan_interval": "1s",
    "retry": {"initial": "1s", "max": "2s"},
}
DEFAULT_ALLOWED_SENDERS = ["*@example.com"]


class Harness:
    """A config file, a spool and a queue under ``root``; runs the daemon with ``--once``."""

    def __init__(self, root: Path, *, host: PluginHost | None = None) -> None:
        self.root = root
        self.queue_dir = root / "queue"
        self.spool_dir = root / "spool"
        self.config_path = root / "mqd.toml"
        #: The plugin host for runs that do not name one (None: a new ``PluginHost()`` per run,
        #: installed entry points included, as ``mqd run`` does).
        self.host = host
        self.config: Config | None = None
        #: The daemon of the last ``run_once``, for its relays and state.
        self.last_daemon: Daemon | None = None
        make_dirs(root, self.spool_dir)

    # -- setup ------------------------------------------------------------------------------------

    def configure(
        self,
        relays: dict[str, dict[str, Any]],
        *,
        spools: list[dict[str, Any]] | None = None,
        routes: list[dict[str, Any]] | None = None,
        queue: dict[str, Any] | None = None,
        tables: dict[str, dict[str, Any]] | None = None,
    ) -> Config:
        """Write ``root/mqd.toml`` and load it (ConfigError as ``mqd run`` would raise it).

        ``relays`` are the ``[relays.<name>]`` tables. Default ``spools``: one, ``spool_dir``,
        relayed by the first relay, allowing ``*@example.com``. ``routes`` become ``[[route]]``
        tables as given. ``queue`` is merged over the test defaults (``dir = queue_dir``,
        ``retry = {initial = "1s", max = "2s"}``, ``scan_interval = "1s"``,
        ``bounce_sender = "mailer-daemon@mqd.test"``). ``tables`` are other top-level tables
        as given (``{"http": {"enabled": True, "port": 0}}``). Values may be ``Path`` objects.
        """
        if not relays:
            raise ValueError("configure() needs at least one relay table")
        if spools is None:
            spools = [
                {
                    "path": self.spool_dir,
                    "relay": next(iter(relays)),
                    "allowed_senders": DEFAULT_ALLOWED_SENDERS,
                }
            ]
        document: dict[str, Any] = {
            "queue": _merge({**DEFAULT_QUEUE, "dir": self.queue_dir}, queue or {}),
            "spool": spools,
            "relays": relays,
        }
        if routes is not None:
            document["route"] = routes
        document.update(tables or {})
        # 0600: a relay table may hold an inline secret, which mqd accepts only in a private file.
        atomic_write(self.config_path, tomli_w.dumps(plain(document)).encode("utf-8"))
        self.config = load_config(self.config_path)
        return self.config

    def drop(self, message: bytes, *, spool: int = 0, name: str | None = None) -> Path:
        """Put ``message`` into spool number ``spool`` as a producer does (temp file, rename).

        ``name`` is the file name to use (the daemon takes only ``*.eml`` files); by default a
        unique ``.eml`` name. Returns the path written.
        """
        directory = self._spool_path(spool)
        if name is None:
            return inject(directory, message)
        if os.sep in name or name in ("", ".", ".."):
            raise ValueError(f"{name!r} is not a file name")
        make_dirs(directory, mode=0o770)
        target = directory / name
        atomic_write(target, message, mode=0o640)
        return target

    # -- running ----------------------------------------------------------------------------------

    def make_daemon(self, *, host: PluginHost | None = None, clock: Clock = SYSTEM_CLOCK) -> Daemon:
        """A ``--once`` daemon on the current config, not started: set up its relays (e.g.
        ``daemon.relays["mem"].replies[...]``), then ``await daemon.run()``. ``clock``: the
        time it runs at (a ``ManualClock`` set past a retry makes that retry due)."""
        return Daemon(self._require_config(), host=host or self.host, once=True, clock=clock)

    async def run_once(
        self, *, host: PluginHost | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> Daemon:
        """Run the daemon with ``once=True``: take the spools, deliver what is due now (bounces
        included), stop. Returns the finished daemon (also kept as ``last_daemon``). ``clock``
        as for ``make_daemon``."""
        self.last_daemon = await async_run(
            self._require_config(), once=True, host=host or self.host, clock=clock
        )
        return self.last_daemon

    @overload
    def relay(self, name: str) -> Relay: ...
    @overload
    def relay(self, name: str, kind: type[R]) -> R: ...
    def relay(self, name: str, kind: type[Relay] = Relay) -> Relay:
        """The relay ``name`` of the last run (a ``MemoryRelay`` keeps what it ``sent``);
        TypeError when it is not a ``kind``."""
        if self.last_daemon is None:
            raise RuntimeError("no daemon has run yet: await run_once() first")
        relay = self.last_daemon.relays[name]
        if not isinstance(relay, kind):
            raise TypeError(f"relay {name!r} is a {type(relay).__name__}, not a {kind.__name__}")
        return relay

    # -- looking --------------------------------------------------------------------------------

    def queued(self) -> list[QueueEntry]:
        """The entries still in the queue (waiting for a retry), oldest first, read from the
        stopped queue (every worker's, with ``queue.workers``)."""
        return queued_entries(self._require_config())

    def failed(self) -> list[dict[str, Any]]:
        """The reason record of each message in the failed folder, oldest first, with its
        ``id``, ``failed_at`` and where the message is (``message_path``)."""
        folder = failed_folder(self._require_config())
        return [message.to_dict() for message in _run(folder.messages())]

    # -- helpers ----------------------------------------------------------------------------------

    def _require_config(self) -> Config:
        if self.config is None:
            raise RuntimeError("no config yet: call configure() first")
        return self.config

    def _spool_path(self, index: int) -> Path:
        if self.config is None:
            if index != 0:
                raise RuntimeError("no config yet: call configure() before dropping into spool")
            return self.spool_dir
        try:
            return self.config.spools[index].path
        except IndexError:
            raise IndexError(
                f"spool {index} is not configured ({len(self.config.spools)} spool(s))"
            ) from None


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``; sub-tables present in both are merged too."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def queued_entries(config: Config) -> list[QueueEntry]:
    """Every entry in ``config``'s stopped queue (every worker's), oldest first."""
    return _run(queued_entries_async(config))


def _run(work: Coroutine[object, object, T]) -> T:
    """Run ``work`` to its end from synchronous code, inside a test's event loop or not (in a
    thread of its own then: the test's loop is busy running the test)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


async def queued_entries_async(config: Config) -> list[QueueEntry]:
    entries: dict[str, QueueEntry] = {}
    for worker in range(1, config.queue.workers + 1):
        part = config.for_worker(worker) if config.queue.workers > 1 else config
        if not part.queue.own_dir.is_dir():
            continue
        async with offline(part) as admin:
            entries.update((item.entry.id, item.entry) for item in await admin.store.entries())
    return sorted(entries.values(), key=lambda entry: (entry.created_at, entry.id))
