"""Each table of the config file read into its dataclass: every key typed and checked, unknown keys
refused by name (``Options.finish``)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

from mqd.config.hostname import local_hostname
from mqd.config.options import Options
from mqd.config.paths import DefaultPaths
from mqd.config.schema import (
    DEFAULT_RELAY,
    MAX_WORKERS,
    WATCH_MODES,
    CircuitConfig,
    HttpConfig,
    MetricsConfig,
    NotifyConfig,
    QueueConfig,
    QuotaConfig,
    RelayConfig,
    RetryPolicy,
    RouteConfig,
    SendmailConfig,
    SpoolConfig,
    TracingConfig,
    available_cores,
    default_http_connections,
)
from mqd.config.senders import validate_sender_pattern
from mqd.config.store import parse_role, parse_store

__all__ = [
    "parse_http",
    "parse_metrics",
    "parse_notify",
    "parse_queue",
    "parse_relays",
    "parse_routes",
    "parse_sendmail",
    "parse_spools",
    "parse_tracing",
]


def parse_queue(opts: Options, defaults: DefaultPaths) -> QueueConfig:
    retry = opts.table("retry")
    policy = RetryPolicy(
        initial=retry.duration("initial", "5m"),
        max=retry.duration("max", "1h"),
        lifetime=retry.duration("lifetime", "5d"),
        max_attempts=retry.integer("max_attempts", None, minimum=1),
    )
    retry.finish()
    if policy.initial <= 0:
        raise retry.error("initial", "must be more than zero")
    if policy.max < policy.initial:
        raise retry.error("max", "must not be less than queue.retry.initial")
    hostname = opts.string("hostname", None) or local_hostname()
    if any(c.isspace() or c in "@<>[]" for c in hostname):
        raise opts.error(
            "hostname", f"expected a host name such as 'mail.example.com', got {hostname!r}"
        )
    store, database = opts.attempt(lambda: parse_store(opts), lambda: ("file", None))
    bounce_sender = opts.string("bounce_sender", f"mailer-daemon@{hostname}")
    if "@" not in bounce_sender:
        raise opts.error("bounce_sender", f"expected an address, got {bounce_sender!r}")
    config = QueueConfig(
        dir=opts.filepath("dir", str(defaults.queue_dir)),
        bounce_sender=bounce_sender,
        hostname=hostname,
        concurrency=opts.integer("concurrency", 20, minimum=1),
        retry=policy,
        max_message_size=opts.size("max_message_size", "25MiB"),
        scan_interval=opts.duration("scan_interval", "5s"),
        watch=opts.choice("watch", WATCH_MODES, "auto"),
        shutdown_timeout=opts.duration("shutdown_timeout", "30s"),
        active_limit=opts.integer("active_limit", 10_000, minimum=1),
        failed_retention=opts.duration("failed_retention", "30d"),
        send_later_horizon=opts.duration("send_later_horizon", "30d"),
        workers=opts.count("workers", 1, auto=available_cores),
        store=store,
        database=database,
        role=parse_role(opts, store),
    )
    if config.workers > MAX_WORKERS:
        opts.report(opts.error("workers", f"at most {MAX_WORKERS}"))
    if config.shutdown_timeout < 0:
        opts.report(opts.error("shutdown_timeout", "must not be negative"))
    if config.scan_interval <= 0:
        opts.report(opts.error("scan_interval", "must be more than zero"))
    if config.send_later_horizon <= 0:
        opts.report(opts.error("send_later_horizon", "must be more than zero"))
    if config.failed_retention < 0:
        opts.report(
            opts.error("failed_retention", 'must not be negative ("0" keeps them for good)')
        )
    opts.finish()
    return config


def parse_relays(
    root: Options, path: Path | None, defaults: DefaultPaths, workers: int
) -> dict[str, RelayConfig]:
    relays_table = root.table("relays")
    names = relays_table.keys()
    if not names:
        if path is not None:
            raise root.error("relays", "no relay is configured: add a [relays.<name>] table")
        relays_table = Options(
            {DEFAULT_RELAY: {"plugin": "outbox", "path": str(defaults.outbox_dir)}},
            section="relays",
            path=None,
        )
        names = [DEFAULT_RELAY]
    relays: dict[str, RelayConfig] = {}
    for name in names:
        opts = relays_table.table(name)

        def parse(name: str = name, opts: Options = opts) -> RelayConfig:
            return RelayConfig(
                name=name,
                plugin=opts.string("plugin"),
                allowed_senders=sender_patterns(opts, "allowed_senders"),
                options=opts,
                quota=_parse_quota(opts, workers),
                circuit=_parse_circuit(opts),
            )

        # A relay with a problem still has its name, so spools and routes naming it are not
        # reported as well.
        def placeholder(name: str = name, opts: Options = opts) -> RelayConfig:
            return RelayConfig(name, "", (), options=opts)

        relays[name] = root.attempt(parse, placeholder)
    return relays


def _parse_quota(opts: Options, workers: int) -> QuotaConfig:
    def positive(key: str, value: float | None) -> None:
        if value is not None and value <= 0:
            raise opts.error(key, "must be more than zero (leave it out for no limit)")
        if value is not None and value < workers and key != "max_per_second":
            # Each worker counts its own sends against its whole share (QuotaConfig.divided);
            # a rate is divided as it is.
            raise opts.error(
                key,
                f"{value:g} cannot be shared between queue.workers = {workers} daemon processes "
                "(each keeps to its share): raise it or lower queue.workers",
            )

    quota = QuotaConfig(
        max_per_second=opts.number("max_per_second", None),
        max_per_minute=opts.integer("max_per_minute", None),
        max_per_hour=opts.integer("max_per_hour", None),
        max_per_day=opts.integer("max_per_day", None),
    )
    positive("max_per_second", quota.max_per_second)
    positive("max_per_minute", quota.max_per_minute)
    positive("max_per_hour", quota.max_per_hour)
    positive("max_per_day", quota.max_per_day)
    return quota


def _parse_circuit(opts: Options) -> CircuitConfig:
    cooldown = opts.duration("circuit_cooldown", "1m")
    if cooldown <= 0:
        raise opts.error("circuit_cooldown", "must be more than zero")
    max_cooldown = opts.duration("circuit_max_cooldown", None)
    if max_cooldown is not None and max_cooldown < cooldown:
        raise opts.error("circuit_max_cooldown", "must not be less than circuit_cooldown")
    return CircuitConfig(
        failures=opts.integer("circuit_failures", 5, minimum=1),
        cooldown=cooldown,
        # Default: 15 minutes, or the cooldown itself when that is longer.
        max_cooldown=max_cooldown if max_cooldown is not None else max(900.0, cooldown),
    )


def relay_chain(opts: Options, key: str, relays: Mapping[str, RelayConfig]) -> tuple[str, ...]:
    """A relay name or a failover list of them, each configured, none twice."""
    raw = opts.raw(key)
    names: list[str] = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    if not names or not all(isinstance(n, str) for n in names):
        raise opts.error(
            key, f'expected a relay name or a failover list such as ["a", "b"], got {raw!r}'
        )
    configured = ", ".join(sorted(relays))
    for name in names:
        if name not in relays:
            raise opts.error(key, f"no relay named {name!r} (configured: {configured})")
    if len(set(names)) != len(names):
        raise opts.error(key, f"names a relay twice: {names!r}")
    return tuple(names)


def parse_spools(
    root: Options,
    path: Path | None,
    defaults: DefaultPaths,
    relays: Mapping[str, RelayConfig],
    *,
    required: bool = True,
) -> tuple[SpoolConfig, ...]:
    """The ``[[spool]]`` tables; none is an error when ``required`` (every node but one with
    ``queue.role = "delivery"``)."""
    raw = root.raw("spool")
    if raw is None:
        if not required:
            return ()
        if path is not None:
            raise root.error("spool", "no spool is configured: add a [[spool]] table")
        raw = [{"path": str(defaults.spool_dir)}]
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise root.error("spool", "expected one or more [[spool]] tables")
    spools = []
    seen: dict[str, int] = {}
    for index, table in enumerate(raw):
        if not isinstance(table, Mapping):
            raise root.error(f"spool[{index}]", f"expected a table, got {table!r}")
        opts = Options(table, section=f"spool[{index}]", path=path, problems=root.problems)
        spool: SpoolConfig | None = root.attempt(
            functools.partial(_parse_spool, opts, relays, index), lambda: None
        )
        if spool is None:
            continue
        if spool.key in seen:
            root.report(opts.error("path", f"the same directory as spool[{seen[spool.key]}]"))
        seen[spool.key] = index
        spools.append(spool)
    return tuple(spools)


def _parse_spool(opts: Options, relays: Mapping[str, RelayConfig], index: int) -> SpoolConfig:
    if opts.raw("relay") is None:
        if len(relays) != 1:
            raise opts.error("relay", f"is required: one of {', '.join(sorted(relays))}")
        chain: tuple[str, ...] = (next(iter(relays)),)
    else:
        chain = relay_chain(opts, "relay", relays)
    spool = SpoolConfig(
        path=opts.filepath("path"),
        relays=chain,
        allowed_senders=sender_patterns(opts, "allowed_senders"),
        check_from=opts.boolean("check_from", True),
        index=index,
    )
    opts.finish()
    return spool


def parse_routes(
    root: Options, path: Path | None, relays: Mapping[str, RelayConfig]
) -> tuple[RouteConfig, ...]:
    raw = root.raw("route")
    if raw is None:
        return ()
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list):
        raise root.error("route", "expected one or more [[route]] tables")
    routes = []
    for index, table in enumerate(raw):
        if not isinstance(table, Mapping):
            raise root.error(f"route[{index}]", f"expected a table, got {table!r}")
        opts = Options(table, section=f"route[{index}]", path=path, problems=root.problems)
        route: RouteConfig | None = root.attempt(
            functools.partial(_parse_route, opts, relays), lambda: None
        )
        if route is not None:
            routes.append(route)
    return tuple(routes)


def _parse_route(opts: Options, relays: Mapping[str, RelayConfig]) -> RouteConfig:
    senders = sender_patterns(opts, "senders")
    if not senders:
        raise opts.error("senders", 'is required: e.g. senders = ["*@news.example.com"]')
    if opts.raw("relay") is None:
        raise opts.error("relay", f"is required: one of {', '.join(sorted(relays))}")
    route = RouteConfig(senders=senders, relays=relay_chain(opts, "relay", relays))
    opts.finish()
    return route


def _port(opts: Options, default: int) -> int:
    port: int = opts.integer("port", default, minimum=0)
    if port > 65535:
        raise opts.error("port", f"{port} is not a TCP port")
    return port


def parse_metrics(opts: Options) -> MetricsConfig:
    config = MetricsConfig(
        enabled=opts.boolean("enabled", False),
        host=opts.string("host", "127.0.0.1"),
        port=_port(opts, 9325),
    )
    opts.finish()
    return config


def parse_tracing(opts: Options) -> TracingConfig:
    config = TracingConfig(enabled=opts.boolean("enabled", False))
    opts.finish()
    return config


def parse_http(opts: Options) -> HttpConfig:
    config = HttpConfig(
        enabled=opts.boolean("enabled", False),
        host=opts.string("host", "127.0.0.1"),
        port=_port(opts, 8025),
        token=opts.secret("token"),
        operator_token=opts.secret("operator_token"),
        max_body=opts.size("max_body", "1MB"),
        max_connections=opts.count("max_connections", "auto", auto=default_http_connections),
        header_timeout=opts.duration("header_timeout", "10s"),
    )
    if (
        config.operator_token is not None
        and config.token is not None
        and config.operator_token.reveal() == config.token.reveal()
    ):
        opts.report(
            opts.error(
                "operator_token",
                "must not be the same as token: whoever may read could act; make another "
                "(openssl rand -hex 32)",
            )
        )
    if config.max_body < 1024:
        opts.report(opts.error("max_body", 'is too small for a webhook batch: give at least "1KB"'))
    if config.header_timeout <= 0:
        opts.report(opts.error("header_timeout", 'must be more than 0s, e.g. "10s"'))
    opts.finish()
    return config


def parse_notify(opts: Options) -> NotifyConfig:
    from mqd.tracking.vocabulary import Status

    url = opts.string("url", None)
    config = NotifyConfig(
        url=url or None,
        secret=opts.secret("secret"),
        statuses=opts.string_list("statuses", []),
        timeout=opts.duration("timeout", "10s"),
        max_age=opts.duration("max_age", "1d"),
    )
    if config.url is not None:
        scheme, _, rest = config.url.partition("://")
        if scheme not in ("http", "https") or not rest:
            raise opts.error("url", f"{config.url!r} is not an http(s) URL")
        if config.secret is None:
            raise opts.error(
                "secret_file",
                "is required with url: the application checks each notification's signature "
                "with it (or secret_env, or an inline secret)",
            )
    known = {s.value for s in Status}
    for status in config.statuses:
        if status not in known:
            raise opts.error("statuses", f"{status!r} is not a status; known: {sorted(known)}")
    if config.timeout <= 0:
        raise opts.error("timeout", 'must be more than 0s, e.g. "10s"')
    opts.finish()
    return config


def parse_sendmail(opts: Options) -> SendmailConfig:
    config = SendmailConfig(
        spool=opts.filepath("spool", None),
        qualify_domain=opts.string("qualify_domain", None),
    )
    if config.qualify_domain is not None and (
        not config.qualify_domain or "@" in config.qualify_domain
    ):
        raise opts.error("qualify_domain", "expected a domain such as 'example.com'")
    opts.finish()
    return config


def sender_patterns(opts: Options, key: str) -> tuple[str, ...]:
    patterns: tuple[str, ...] = opts.string_list(key, [])
    try:
        return tuple(validate_sender_pattern(p) for p in patterns)
    except ValueError as exc:
        raise opts.error(key, str(exc)) from None
