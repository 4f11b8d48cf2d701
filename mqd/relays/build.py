"""Turn a Config into live relays, checking what only the plugins know (their keys, and
whether a relay sends over the network and therefore needs allowed senders)."""

from __future__ import annotations

from mqd.config.schema import Config, SourceConfig
from mqd.errors import ConfigError, PluginError, raise_gathered
from mqd.plugins.host import PluginHost
from mqd.relays.base import Relay

__all__ = ["build_relays"]


def build_relays(
    config: Config, host: PluginHost, gathered: list[ConfigError] | None = None
) -> dict[str, Relay]:
    """One relay per ``[relays.<name>]`` table. Raises ConfigError naming the file and key, or
    ConfigErrors with the problems of every relay; or adds them to ``gathered``."""
    relays: dict[str, Relay] = {}
    problems: list[ConfigError] = []
    for name, relay_config in config.relays.items():
        if not relay_config.plugin:
            continue  # its table had a problem, gathered when the config was read
        # The plugin reads its keys from this table: its problems are gathered with the rest.
        relay_config.options.problems = problems
        try:
            relays[name] = _build(config, host, name)
        except ConfigError as exc:
            problems.append(exc)
        finally:
            relay_config.options.problems = None
    if len(relays) == len(config.relays):
        _check_not_open(config, relays, problems)
    if gathered is None:
        raise_gathered(problems)
    else:
        gathered.extend(problems)
    return relays


def _build(config: Config, host: PluginHost, name: str) -> Relay:
    relay_config = config.relays[name]
    try:
        relay_class = host.relay_class(relay_config.plugin)
    except PluginError as exc:
        raise ConfigError(
            f"the relay plugin {relay_config.plugin!r} failed to load: {exc}",
            path=config.source,
            key=f"relays.{name}.plugin",
        ) from exc
    if relay_class is None:
        known = ", ".join(sorted(host.relay_names())) or "none"
        raise ConfigError(
            f"no relay plugin named {relay_config.plugin!r} is installed (installed: {known}; "
            "'mqd plugins' lists them)",
            path=config.source,
            key=f"relays.{name}.plugin",
        )
    try:
        relay = relay_class.from_options(name, relay_config.options)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"the {relay_config.plugin!r} plugin could not build this relay: {exc!r}",
            path=config.source,
            key=f"relays.{name}",
        ) from exc
    relay_config.options.finish()
    return relay


def _check_not_open(config: Config, relays: dict[str, Relay], problems: list[ConfigError]) -> None:
    """Every network relay mail can reach needs an allow-list on the way (mqd is never an open
    relay): the spool's own, or the relay's."""

    def refuse(relay: str, key: str) -> ConfigError:
        return ConfigError(
            f"required: the relay {relay!r} sends mail over the network, and mqd is never an "
            "open relay. List the senders your applications use, e.g. "
            'allowed_senders = ["noreply@example.com", "*@example.com"] (here or in '
            f"[relays.{relay}])",
            path=config.source,
            key=key,
        )

    for spool in (*config.spools, *config.sources):
        for name in spool.relays:
            listed = spool.allowed_senders or config.relays[name].allowed_senders
            if relays[name].network and not listed:
                where = spool.name if isinstance(spool, SourceConfig) else f"spool[{spool.index}]"
                problems.append(refuse(name, f"{where}.allowed_senders"))
    # A route can take mail from any spool or source, so one without a list must not reach it.
    every_spool_listed = all(s.allowed_senders for s in (*config.spools, *config.sources))
    for index, route in enumerate(config.routes):
        for name in route.relays:
            if relays[name].network and not (
                every_spool_listed or config.relays[name].allowed_senders
            ):
                problems.append(refuse(name, f"route[{index}].relay"))
