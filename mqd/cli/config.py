"""Inspecting the setup: ``mqd config check`` and ``mqd plugins``."""

from __future__ import annotations

import click
import tomli_w

from mqd.cli.shared import State, pass_state

__all__ = ["config", "plugins"]


@click.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("check")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing when the config is valid.")
@pass_state
def config_check(state: State, quiet: bool) -> None:
    """Validate the config and print the effective settings (secrets redacted).

    Runs the checks 'mqd run' runs before it starts (the config, the relays, the directories
    mqd will create or write) and names every problem, one line each (exit 78).
    """
    from mqd.config.effective import effective_config
    from mqd.daemon.preflight import check
    from mqd.plugins.host import PluginHost
    from mqd.tracing.status import tracing_status

    checked = check(state.locate(), PluginHost())
    loaded, relays = checked.config, checked.relays
    for warning in checked.warnings:  # what the daemon would wait for, not refuse
        click.echo(f"mqd: warning: {warning}", err=True)
    tracing = tracing_status(loaded)
    for problem in tracing.problems:  # traces are an aid: the daemon delivers without them
        click.echo(f"mqd: warning: tracing is off: {problem}", err=True)
    if quiet:
        return
    source = str(loaded.source) if loaded.source else "embedded defaults (no config file found)"
    click.echo(f"# config: {source}")
    click.echo(f"# tracing: {tracing.why}")
    click.echo("# valid. Effective settings, defaults included, secrets redacted:\n")
    click.echo(tomli_w.dumps(effective_config(loaded)))
    for relay in relays.values():
        click.echo(f"# relay {relay.name}: {relay.describe()}")


@click.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object: the plugins (with version, hooks, relays, error) and relay types.",
)
def plugins(as_json: bool) -> None:
    """List loaded plugins with their versions, what each provides, and disabled ones."""
    import dataclasses
    import json

    from mqd.plugins.host import PluginHost

    host = PluginHost()
    infos = host.describe()
    types = sorted(host.relay_names())
    if as_json:
        document = {
            "plugins": [dataclasses.asdict(info) for info in infos],
            "relay_types": types,
            "source_types": sorted(host.sources.names()),
        }
        click.echo(json.dumps(document, indent=2))
        return
    for info in infos:
        source = info.distribution or ("built in" if info.origin == "core" else info.origin)
        click.echo(f"{info.name} {info.version or '(no version)'} ({source})")
        if info.error:
            click.echo(f"    DISABLED: {info.error}")
        if info.hooks:
            click.echo(f"    hooks: {', '.join(info.hooks)}")
        if info.relays:
            click.echo(f"    relays: {', '.join(info.relays)}")
        if info.sources:
            click.echo(f"    sources: {', '.join(info.sources)}")
        for problem in info.problems:
            click.echo(f"    PROBLEM: {problem}")
    click.echo("source types: " + ", ".join(sorted(host.sources.names())))
    click.echo("relay types: " + ", ".join(types))
