"""A registry of classes that plugins register by name through a ``register`` callback: relay
classes (``mqd_register_relays``) and intake source classes (``mqd_register_sources``).

A class may be registered as a ``"module:Class"`` path: it is imported when first asked for, so
that a daemon whose config does not use it starts without importing it. Names are kept by the
plugin that registered them first (the core is loaded first); a plugin that raises in the hook
is logged and its problem recorded, the others register as usual.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar, cast

import pluggy

from mqd.errors import PluginError

__all__ = ["Registry"]

log = logging.getLogger("mqd.plugins")

T = TypeVar("T")


class Registry(Generic[T]):
    """The ``base`` subclasses registered by the implementations of ``hook`` (a pluggy
    ``HookCaller``), called once, on first use; ``what`` names them in errors ("relay")."""

    def __init__(
        self,
        hook: Any,
        base: Any,
        what: str,
        call: Callable[[pluggy.HookImpl, Callable[[str, type[T] | str], None]], None],
        problems: dict[str, list[str]],
    ) -> None:
        self._hook = hook
        #: The class every registered one must subclass (abstract: hence ``Any`` above).
        self._base: type = base
        self._what = what
        self._call = call
        self._problems = problems
        self._registered: dict[str, type[T] | str] | None = None
        self._plugin_of: dict[str, str] = {}
        self.by_plugin: dict[str, list[str]] = {}

    def names(self) -> list[str]:
        """The registered names, without importing any class registered by path."""
        return list(self._registrations())

    def get(self, name: str) -> type[T] | None:
        """The class registered as ``name`` (imported now if it was registered by path), or
        None. PluginError when a path does not name a subclass of the base."""
        registered = self._registrations().get(name)
        if registered is None or isinstance(registered, type):
            return registered
        plugin = self._plugin_of[name]
        module_name, _, attribute = registered.partition(":")
        try:
            found: Any = getattr(importlib.import_module(module_name), attribute)
        except Exception as exc:
            raise PluginError(
                f"{plugin} registered the {self._what} {name!r} as {registered!r}, which does "
                f"not load: {exc!r}"
            ) from exc
        if not (isinstance(found, type) and issubclass(found, self._base)):
            raise PluginError(
                f"{plugin} registered {registered!r}, not a {self._base.__name__} subclass"
            )
        cls = cast("type[T]", found)
        self._registrations()[name] = cls
        return cls

    def all(self, names: Iterable[str] | None = None) -> dict[str, type[T]]:
        """Every registered class (or those of ``names``), imported; one that does not load
        is logged and left out."""
        classes: dict[str, type[T]] = {}
        for name in self.names() if names is None else names:
            try:
                found = self.get(name)
            except PluginError as exc:
                log.error("%s", exc)
                continue
            if found is not None:
                classes[name] = found
        return classes

    def _registrations(self) -> dict[str, type[T] | str]:
        if self._registered is not None:
            return self._registered
        registered: dict[str, type[T] | str] = {}
        # In registration order (core, installed, extra): a name is kept by the plugin that was
        # there first, and the error names the newcomer that tried to take it.
        for impl in self._hook.get_hookimpls():
            plugin_name = impl.plugin_name

            def register(name: str, cls: type[T] | str, _plugin: str = plugin_name) -> None:
                lazy = isinstance(cls, str) and ":" in cls
                if not lazy and not (isinstance(cls, type) and issubclass(cls, self._base)):
                    raise PluginError(
                        f"{_plugin} registered {cls!r}, not a {self._base.__name__} subclass "
                        "(nor a 'module:Class' path to one)"
                    )
                if name in registered:
                    raise PluginError(f"{_plugin} registered the {self._what} name {name!r} again")
                registered[name] = cls
                self._plugin_of[name] = _plugin
                self.by_plugin.setdefault(_plugin, []).append(name)

            try:
                self._call(impl, register)
            except Exception as exc:
                hook_name = self._hook.name
                log.error("plugin %s failed in %s: %r", plugin_name, hook_name, exc)
                self._problems.setdefault(plugin_name, []).append(f"{hook_name} raised {exc!r}")
        self._registered = registered
        return registered
