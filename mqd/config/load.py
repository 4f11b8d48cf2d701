"""The configuration: TOML in, frozen dataclasses out; unknown keys are errors.

Lookup order: ``--config``, then ``$MQD_CONFIG``, then the platform default
(``/etc/mqd/mqd.toml`` for root on Linux, see ``mqd.config.paths``). With none of them present mqd
runs
on embedded defaults: one spool and the development ``outbox`` relay under the default dirs.

Relay tables are kept as ``Options`` here; the relay's plugin reads its own keys from them
when the relay is built (``mqd.relays.build``), so a plugin's keys are checked just like the core's.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mqd.config.accounts import parse_accounts, parse_suppression
from mqd.config.options import Options
from mqd.config.paths import default_paths, locate_config
from mqd.config.schema import (
    Config,
    RelayConfig,
    RouteConfig,
    SourceConfig,
    SpoolConfig,
)
from mqd.config.sections import (
    parse_http,
    parse_metrics,
    parse_notify,
    parse_queue,
    parse_relays,
    parse_routes,
    parse_sendmail,
    parse_spools,
    parse_tracing,
)
from mqd.config.sources import GENERIC, SOURCE_KINDS, parse_sources
from mqd.config.store import check_no_intake
from mqd.config.tracking import parse_tracking
from mqd.errors import ConfigError, raise_gathered

#: locate_config lives in mqd.config.paths (cheap to import); named here as well.
__all__ = ["load_config", "locate_config", "parse_config"]


def load_config(path: Path | None, problems: list[ConfigError] | None = None) -> Config:
    """Read and validate ``path`` (None: embedded defaults). With ``problems`` the problems are
    added to it and a config with defaults in their place returned (``mqd.daemon.preflight``
    goes on to check the relays and directories); without, they are raised."""
    if path is None:
        return parse_config({}, None, problems)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=path) from None
    return parse_config(data, path, problems)


def parse_config(
    data: Mapping[str, Any], path: Path | None, gathered: list[ConfigError] | None = None
) -> Config:
    """Validate the TOML document ``data`` that came from ``path``.

    Every problem is reported, not just the first: each table is read on past a bad value
    (its default stands in) and past a bad table (its defaults stand in), and the problems are
    raised together at the end (``ConfigErrors``, one line each), or added to ``gathered``."""
    defaults = default_paths()
    problems: list[ConfigError] = []
    root = Options(data, section="", path=path, problems=problems)
    for key in (
        "queue",
        "relays",
        "spool",
        "route",
        "sendmail",
        "metrics",
        "tracking",
        "tracing",
        "http",
        "notify",
        *SOURCE_KINDS,
        GENERIC,
        "account",
        "suppression",
    ):
        root.raw(key)
    root.finish()  # a misspelled top-level table is named before it is missed

    def table(key: str) -> Options:
        return root.attempt(lambda: root.table(key), lambda: Options({}, section=key, path=path))

    def empty(key: str) -> Options:
        return Options({}, section=key, path=path)

    queue = root.attempt(
        lambda: parse_queue(table("queue"), defaults), lambda: parse_queue(empty("queue"), defaults)
    )
    relays: Mapping[str, RelayConfig] = root.attempt(
        lambda: parse_relays(root, path, defaults, queue.limit_shares), dict
    )
    spools: tuple[SpoolConfig, ...] = root.attempt(
        lambda: parse_spools(root, path, defaults, relays, required=queue.role != "delivery"), tuple
    )
    routes: tuple[RouteConfig, ...] = root.attempt(lambda: parse_routes(root, path, relays), tuple)
    sources: tuple[SourceConfig, ...] = root.attempt(
        lambda: parse_sources(root, path, relays), tuple
    )
    if queue.role == "delivery" and (spools or sources):
        check_no_intake(table("queue"), spools, sources)
    sendmail_opts = table("sendmail")
    sendmail = root.attempt(
        lambda: parse_sendmail(sendmail_opts), lambda: parse_sendmail(empty("sendmail"))
    )
    if sendmail.spool is not None and all(
        os.path.abspath(sendmail.spool) != os.path.abspath(s.path) for s in spools
    ):
        root.report(
            sendmail_opts.error(
                "spool",
                f"{sendmail.spool} is not one of the [[spool]] paths, so no daemon reads it",
            )
        )
    config = Config(
        source=path,
        queue=queue,
        spools=spools,
        relays=relays,
        sendmail=sendmail,
        routes=routes,
        metrics=root.attempt(
            lambda: parse_metrics(table("metrics")), lambda: parse_metrics(empty("metrics"))
        ),
        tracking=root.attempt(
            lambda: parse_tracking(table("tracking"), queue.store),
            lambda: parse_tracking(empty("tracking")),
        ),
        tracing=root.attempt(
            lambda: parse_tracing(table("tracing")), lambda: parse_tracing(empty("tracing"))
        ),
        http=root.attempt(lambda: parse_http(table("http")), lambda: parse_http(empty("http"))),
        notify=root.attempt(
            lambda: parse_notify(table("notify")), lambda: parse_notify(empty("notify"))
        ),
        sources=sources,
        accounts=root.attempt(lambda: parse_accounts(root, path), tuple),
        suppression=root.attempt(
            lambda: parse_suppression(table("suppression")),
            lambda: parse_suppression(empty("suppression")),
        ),
    )
    if gathered is None:
        raise_gathered(problems)
    else:
        gathered.extend(problems)
    return config
