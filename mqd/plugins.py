"""The plugin manager: core plugins by module path, third-party ones from the entry-point group
``mqd``, and typed wrappers that isolate every hook implementation from the others."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .relays.base import Relay

if TYPE_CHECKING:
    from .config import Config, SpoolConfig
    from .envelope import ParsedMessage
    from .events import Event
    from .queue.entry import QueueEntry, RecipientState

__all__ = ["DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "PluginHost", "PluginInfo"]

log = logging.getLogger("mqd.plugins")

ENTRY_POINT_GROUP = "mqd"
#: Core features are plugins too; a third party replaces or extends them with the same hooks.
DEFAULT_PLUGINS = (
    "mqd.relays.smtp",
    "mqd.relays.outbox",
    "mqd.relays.memory",
    "mqd.policy",
    "mqd.bounce",
)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str | None
    #: None when loaded; otherwise why the plugin is disabled.
    error: str | None = None


class PluginHost:
    """Owns the pluggy manager. Create one per process; pass ``entry_points=False`` in tests
    that must not see installed third-party plugins."""

    def __init__(self, *, entry_points: bool = True, extra: tuple[object, ...] = ()) -> None:
        self.pm = pluggy.PluginManager("mqd")
        self.pm.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []
        for module_name in DEFAULT_PLUGINS:
            self.pm.register(importlib.import_module(module_name), name=module_name)
            self.infos.append(PluginInfo(module_name, None))
        if entry_points:
            self._load_entry_points()
        for plugin in extra:
            self.pm.register(plugin)
            self.infos.append(PluginInfo(self.pm.get_name(plugin) or repr(plugin), None))
        self._relay_classes: dict[str, type[Relay]] | None = None

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            version = ep.dist.version if ep.dist else None
            if self.pm.get_plugin(ep.name) is not None or self.pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken plugin is reported and disabled, never fatal
                log.error(
                    "plugin %s (%s) failed to load and is disabled: %r", ep.name, ep.value, exc
                )
                self.infos.append(PluginInfo(ep.name, version, f"failed to load: {exc!r}"))
            else:
                self.infos.append(PluginInfo(ep.name, version))

    # -- isolated calls ---------------------------------------------------------------------------

    def _implementations(self, hook_name: str) -> Iterator[tuple[str, Any]]:
        """(plugin name, function) in pluggy's call order (tryfirst ... trylast)."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            yield impl.plugin_name, impl.function

    def relay_classes(self) -> dict[str, type[Relay]]:
        """Every relay class plugins registered, by plugin name (``plugin = "smtp"``)."""
        if self._relay_classes is not None:
            return self._relay_classes
        classes: dict[str, type[Relay]] = {}
        for plugin_name, function in self._implementations("mqd_register_relays"):

            def register(name: str, relay_class: type[Relay], _plugin: str = plugin_name) -> None:
                if not (isinstance(relay_class, type) and issubclass(relay_class, Relay)):
                    raise PluginError(f"{_plugin} registered {relay_class!r}, not a Relay subclass")
                if name in classes:
                    raise PluginError(f"{_plugin} registered the relay name {name!r} again")
                classes[name] = relay_class

            try:
                function(register=register)
            except Exception as exc:
                log.error("plugin %s failed in mqd_register_relays: %r", plugin_name, exc)
        self._relay_classes = classes
        return classes

    def check_policy(
        self, message: ParsedMessage, spool: SpoolConfig, relay_name: str, config: Config
    ) -> str | None:
        """First refusal, or None. A plugin that raises refuses (fails closed)."""
        for plugin_name, function in self._implementations("mqd_check_policy"):
            try:
                reason = function(
                    message=message, spool=spool, relay_name=relay_name, config=config
                )
            except Exception as exc:
                log.error("plugin %s failed in mqd_check_policy: %r", plugin_name, exc)
                return (
                    f"the policy plugin {plugin_name} failed ({exc!r}), so the message is refused"
                )
            if reason:
                return str(reason)
        return None

    def build_bounce(
        self,
        entry: QueueEntry,
        failures: list[RecipientState],
        original: bytes,
        config: Config,
    ) -> bytes:
        """The DSN for ``failures``; a plugin that raises is skipped, the core's builder is last."""
        for plugin_name, function in self._implementations("mqd_build_bounce"):
            try:
                result = function(entry=entry, failures=failures, original=original, config=config)
            except Exception as exc:
                log.error("plugin %s failed in mqd_build_bounce: %r", plugin_name, exc)
                continue
            if result is not None:
                return bytes(result)
        raise PluginError("no plugin built a bounce (is mqd.bounce blocked?)")

    def track_event(self, event: Event) -> None:
        for plugin_name, function in self._implementations("mqd_track_event"):
            try:
                function(event=event)
            except Exception as exc:
                log.error("plugin %s failed in mqd_track_event: %r", plugin_name, exc)

    def describe(self) -> list[PluginInfo]:
        return list(self.infos)
