"""The plugin manager: core plugins by module path, third-party ones from the entry-point group
``mqd``, and typed wrappers that isolate every hook implementation from the others.

Isolation, in two places:

* loading: an entry point that fails to import, implements a hook this mqd does not know, or
  does not pass pluggy's checks is logged, listed as disabled (``mqd plugins``) and left out;
  the other plugins load as usual.
* calling: each implementation is called on its own; one that raises is logged and skipped
  (``mqd_check_policy`` fails closed instead: the message is refused).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

import mqd.plugins.hookspecs as hookspecs
from mqd.errors import PluginError
from mqd.intake.source import Source
from mqd.plugins.registry import Registry
from mqd.relays.base import Relay
from mqd.version import __version__

if TYPE_CHECKING:
    from mqd.config.schema import Config, SpoolConfig
    from mqd.events import Event
    from mqd.message.envelope import ParsedMessage
    from mqd.queue.entry import QueueEntry, RecipientState

__all__ = ["DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "PluginHost", "PluginInfo"]

log = logging.getLogger("mqd.plugins")

ENTRY_POINT_GROUP = "mqd"
#: Core features are plugins too; a third party replaces or extends them with the same hooks.
DEFAULT_PLUGINS = (
    "mqd.relays.smtp.relay",
    "mqd.relays.outbox",
    "mqd.relays.memory",
    "mqd.intake.policy",
    "mqd.intake.sources",
    "mqd.delivery.bounce",
)

#: Where a plugin came from (``PluginInfo.origin``).
CORE, ENTRY_POINT, EXTRA = "core", "entry point", "extra"


@dataclass(frozen=True)
class PluginInfo:
    """What ``mqd plugins`` shows about one plugin."""

    name: str
    version: str | None
    #: None when loaded; otherwise why the plugin is disabled.
    error: str | None = None
    #: "core" (part of mqd), "entry point" (an installed distribution) or "extra" (given in code).
    origin: str = CORE
    #: The distribution that installed it (entry points only), e.g. "mqd-sendgrid".
    distribution: str | None = None
    #: The hooks it implements.
    hooks: tuple[str, ...] = ()
    #: The relay names it registered (``plugin = "..."`` in a config).
    relays: tuple[str, ...] = ()
    #: The intake source kinds it registered (``[[smtpd]]`` ...).
    sources: tuple[str, ...] = ()
    #: Hook calls of this plugin that raised while mqd asked it (it stays loaded).
    problems: tuple[str, ...] = ()


class PluginHost:
    """Owns the pluggy manager. Create one per process; pass ``entry_points=False`` in tests
    that must not see installed third-party plugins. ``extra`` plugins (modules or objects with
    ``@hookimpl`` methods) are registered after the others, so their implementations run first;
    an invalid one raises PluginError at once (it is code the caller controls)."""

    def __init__(self, *, entry_points: bool = True, extra: Iterable[object] = ()) -> None:
        self.pm = pluggy.PluginManager("mqd")
        self.pm.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []
        self._problems: dict[str, list[str]] = {}
        #: Relay classes by the name a config's ``plugin = "..."`` selects.
        self.relays: Registry[Relay] = Registry(
            self.pm.hook.mqd_register_relays, Relay, "relay", self._register_call, self._problems
        )
        #: Intake source classes by the name of their config table (``smtpd``).
        self.sources: Registry[Source] = Registry(
            self.pm.hook.mqd_register_sources, Source, "source", self._register_call, self._problems
        )
        for module_name in DEFAULT_PLUGINS:
            module = importlib.import_module(module_name)
            self.infos.append(self._register(module, module_name, __version__, CORE))
        if entry_points:
            self._load_entry_points()
        for plugin in extra:
            name = self._unique_name(_plugin_name(plugin))
            try:
                self.infos.append(self._register(plugin, name, None, EXTRA))
            except (PluginError, ValueError, pluggy.PluginValidationError) as exc:
                raise PluginError(f"the plugin {name} cannot be registered: {exc}") from exc

    # -- loading ----------------------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else None
            version = ep.dist.version if ep.dist else None
            if self.pm.is_blocked(ep.name):
                continue
            if self.pm.has_plugin(ep.name):
                self._disable(
                    ep.name, version, dist, f"another plugin already uses the name {ep.name!r}"
                )
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin is reported and disabled, never fatal
                self._disable(ep.name, version, dist, f"failed to load ({ep.value}): {exc!r}")
                continue
            try:
                info = self._register(plugin, ep.name, version, ENTRY_POINT, dist)
            except Exception as exc:
                one_line = " ".join(str(exc).split())  # pluggy's messages span lines
                self._disable(ep.name, version, dist, f"failed to register: {one_line}")
                continue
            self.infos.append(info)

    def _register(
        self, plugin: object, name: str, version: str | None, origin: str, dist: str | None = None
    ) -> PluginInfo:
        """Register ``plugin``; raises (and leaves nothing registered) when it is invalid."""
        self.pm.register(plugin, name=name)
        try:
            hooks = self._check_hooks(plugin)
        except PluginError:
            self.pm.unregister(plugin)
            raise
        return PluginInfo(
            name, version, origin=origin, distribution=dist, hooks=tuple(sorted(hooks))
        )

    def _check_hooks(self, plugin: object) -> list[str]:
        """The hooks ``plugin`` implements; PluginError for one mqd cannot call safely."""
        hooks: list[str] = []
        for caller in self.pm.get_hookcallers(plugin) or []:
            impl = next(i for i in caller.get_hookimpls() if i.plugin is plugin)
            if not caller.has_spec():
                if impl.optionalhook:
                    continue  # a hook of a newer mqd: allowed, and never called here
                known = [
                    n
                    for n in dir(self.pm.hook)
                    if n.startswith("mqd_") and getattr(self.pm.hook, n).has_spec()
                ]
                hint = difflib.get_close_matches(caller.name, known, n=1)
                spelled = f" (did you mean {hint[0]}?)" if hint else ""
                raise PluginError(
                    f"implements {caller.name}, which this mqd does not know{spelled}; mark a "
                    "hook of a newer mqd @hookimpl(optionalhook=True)"
                )
            if impl.hookwrapper or impl.wrapper:
                raise PluginError(
                    f"implements {caller.name} as a wrapper; mqd calls each implementation on "
                    "its own (to isolate failures), so use a plain @hookimpl"
                )
            hooks.append(caller.name)
        return hooks

    def _disable(self, name: str, version: str | None, dist: str | None, why: str) -> None:
        log.error("plugin %s (%s %s) is disabled: %s", name, dist, version, why)
        self.infos.append(PluginInfo(name, version, why, ENTRY_POINT, dist))

    def _unique_name(self, name: str) -> str:
        candidate, n = name, 1
        while self.pm.has_plugin(candidate) or self.pm.is_blocked(candidate):
            n += 1
            candidate = f"{name}#{n}"
        return candidate

    # -- isolated calls ---------------------------------------------------------------------------

    def _implementations(self, hook_name: str) -> Iterator[tuple[str, pluggy.HookImpl]]:
        """(plugin name, implementation) in pluggy's call order (tryfirst ... trylast)."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            yield impl.plugin_name, impl

    @classmethod
    def _register_call(cls, impl: pluggy.HookImpl, register: Callable[[str, Any], None]) -> None:
        cls._call(impl, register=register)

    @staticmethod
    def _call(impl: pluggy.HookImpl, **kwargs: Any) -> Any:
        """Call one implementation with the arguments it declares (a subset is allowed)."""
        return impl.function(*(kwargs[name] for name in impl.argnames))

    def relay_names(self) -> list[str]:
        """The relay names plugins registered (``plugin = "smtp"``), without importing any
        relay registered lazily by module path."""
        return self.relays.names()

    def relay_class(self, name: str) -> type[Relay] | None:
        """The relay class registered as ``name`` (imported now if it was registered by path),
        or None. PluginError when a path does not name a Relay subclass."""
        return self.relays.get(name)

    def relay_classes(self) -> dict[str, type[Relay]]:
        """Every relay class plugins registered, by name, all imported (``relay_class`` imports
        only the one a config uses)."""
        return self.relays.all()

    def source_class(self, kind: str) -> type[Source] | None:
        """The intake source class registered for the config table ``kind`` (``"smtpd"``),
        imported now if it was registered by path, or None."""
        return self.sources.get(kind)

    def check_policy(
        self, message: ParsedMessage, spool: SpoolConfig, relay_name: str, config: Config
    ) -> str | None:
        """First refusal, or None. A plugin that raises refuses (fails closed)."""
        for plugin_name, impl in self._implementations("mqd_check_policy"):
            try:
                reason = self._call(
                    impl, message=message, spool=spool, relay_name=relay_name, config=config
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
        for plugin_name, impl in self._implementations("mqd_build_bounce"):
            try:
                result = self._call(
                    impl, entry=entry, failures=failures, original=original, config=config
                )
            except Exception as exc:
                log.error("plugin %s failed in mqd_build_bounce: %r", plugin_name, exc)
                continue
            if result is not None:
                return bytes(result)
        raise PluginError("no plugin built a bounce (is mqd.delivery.bounce blocked?)")

    def track_event(self, event: Event) -> None:
        for plugin_name, impl in self._implementations("mqd_track_event"):
            try:
                self._call(impl, event=event)
            except Exception as exc:
                log.error("plugin %s failed in mqd_track_event: %r", plugin_name, exc)

    # -- reporting --------------------------------------------------------------------------------

    def describe(self) -> list[PluginInfo]:
        """Every plugin in load order, disabled ones included, with the relays it registered."""
        self.relays.names()
        self.sources.names()
        return [
            dataclasses.replace(
                info,
                relays=tuple(self.relays.by_plugin.get(info.name, ())),
                sources=tuple(self.sources.by_plugin.get(info.name, ())),
                problems=tuple(self._problems.get(info.name, ())),
            )
            for info in self.infos
        ]


def _plugin_name(plugin: object) -> str:
    """A readable name for a plugin given in code: a module's or class's name, else its class's."""
    name = getattr(plugin, "__name__", None)
    return name if isinstance(name, str) else type(plugin).__qualname__
