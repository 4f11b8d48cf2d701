"""The configuration: TOML in, frozen dataclasses out; unknown keys are errors.

Lookup order: ``--config``, then ``$MQD_CONFIG``, then the platform default
(``/etc/mqd/mqd.toml`` for root on Linux, see ``mqd.config.paths``). With none of them present mqd
runs
on embedded defaults: one spool and the development ``outbox`` relay under the default dirs.

Relay tables are kept as ``Options`` here; the relay's plugin reads its own keys from them
when the relay is built (``mqd.relays.build``), so a plugin's keys are checked just like the core's.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mqd.config.options import Options, Secret
from mqd.config.paths import SYSTEM_CONFIG, DefaultPaths, default_paths
from mqd.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_RELAY",
    "CircuitConfig",
    "Config",
    "HttpConfig",
    "MetricsConfig",
    "NotifyConfig",
    "QueueConfig",
    "QuotaConfig",
    "RelayConfig",
    "RetryPolicy",
    "RouteConfig",
    "SendmailConfig",
    "SpoolConfig",
    "TrackingConfig",
    "load_config",
    "locate_config",
    "parse_config",
    "sender_allowed",
    "validate_sender_pattern",
]

CONFIG_ENV = "MQD_CONFIG"
#: Name of the relay used by the embedded defaults.
DEFAULT_RELAY = "outbox"
WATCH_MODES = ("auto", "inotify", "watchfiles", "poll")
#: queue.workers at most: each is a process with its own connections and memory (~35 MB).
MAX_WORKERS = 64
_PATTERN = re.compile(r"(\*|[^@\s*<>]+)@([^@\s*<>]+)")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff from ``initial`` up to ``max`` seconds; give up after ``lifetime``."""

    initial: float = 300.0
    max: float = 3600.0
    lifetime: float = 5 * 86400.0


@dataclass(frozen=True)
class QueueConfig:
    dir: Path
    bounce_sender: str
    concurrency: int = 20
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_message_size: int = 25 * 1024 * 1024
    scan_interval: float = 5.0
    watch: str = "auto"
    #: How long a graceful stop waits for deliveries in flight before cancelling them.
    shutdown_timeout: float = 30.0
    #: At most this many never-attempted messages are held in memory; the rest (at start-up, or
    #: taken in while the limit is reached) are listed by id and read as deliveries make room
    #: (see ``mqd.queue.file.backlog``).
    active_limit: int = 10_000
    #: Daemon processes sharing the claim (``mqd run`` starts the others, see
    #: ``mqd.daemon.workers``).
    workers: int = 1
    #: Which of them this process is (1: the one ``mqd run`` started; not a config key).
    worker: int = 1

    @property
    def own_dir(self) -> Path:
        """This process's queue: ``dir`` for the first worker, ``dir/workers/<n>`` for others."""
        return worker_dir(self.dir, self.worker)

    @property
    def worker_dirs(self) -> list[Path]:
        """Every worker's queue directory, the first worker's first."""
        return [worker_dir(self.dir, n) for n in range(1, self.workers + 1)]


def available_cores() -> int:
    """``queue.workers = "auto"``: the cores this process may run on (its CPU affinity, which
    a container or systemd's CPUAffinity= may narrow), at most MAX_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


def worker_dir(queue_dir: Path, worker: int) -> Path:
    return queue_dir if worker == 1 else queue_dir / "workers" / str(worker)


@dataclass(frozen=True)
class SpoolConfig:
    path: Path
    #: The relays this spool's mail goes through: the first, then the others in turn when one
    #: fails transiently or is unhealthy (failover).
    relays: tuple[str, ...]
    #: Patterns ("user@example.com" or "*@example.com"); empty means "the relay's list decides".
    allowed_senders: tuple[str, ...] = ()

    @property
    def relay(self) -> str:
        """The first (preferred) relay."""
        return self.relays[0]

    @functools.cached_property  # asked for every message taken in: one hash, one string
    def key(self) -> str:
        """A short stable name for this spool, used for its directory inside the queue."""
        resolved = os.path.abspath(self.path)
        return hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:12]


@dataclass(frozen=True)
class QuotaConfig:
    """A provider's sending limits; None means no limit. Counted in messages."""

    max_per_second: float | None = None
    max_per_hour: int | None = None
    max_per_day: int | None = None

    def divided(self, workers: int) -> QuotaConfig:
        """Each worker's share, so that all of them together keep to the limits."""
        if workers == 1:
            return self
        return QuotaConfig(
            max_per_second=None if self.max_per_second is None else self.max_per_second / workers,
            max_per_hour=None
            if self.max_per_hour is None
            else max(1, self.max_per_hour // workers),
            max_per_day=None if self.max_per_day is None else max(1, self.max_per_day // workers),
        )

    @property
    def limited(self) -> bool:
        return any(
            v is not None for v in (self.max_per_second, self.max_per_hour, self.max_per_day)
        )


@dataclass(frozen=True)
class CircuitConfig:
    """After ``failures`` whole-message failures in a row the relay is skipped for ``cooldown``
    seconds (doubling while it keeps failing, up to ``max_cooldown``), then tried once."""

    failures: int = 5
    cooldown: float = 60.0
    max_cooldown: float = 900.0


@dataclass(frozen=True)
class RelayConfig:
    name: str
    plugin: str
    allowed_senders: tuple[str, ...]
    #: The remaining keys, read by the plugin (which also rejects unknown ones).
    options: Options = field(compare=False, repr=False)
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)


@dataclass(frozen=True)
class RouteConfig:
    """Mail from ``senders`` (exact addresses or ``*@domain``) goes through ``relays``, whatever
    spool it came from."""

    senders: tuple[str, ...]
    relays: tuple[str, ...]


@dataclass(frozen=True)
class SendmailConfig:
    """How ``mqd sendmail`` and ``mqd send`` inject: which spool, and how to qualify addresses."""

    #: The spool to write into; None means the first ``[[spool]]``.
    spool: Path | None = None
    #: Appended to addresses without a domain ("root" -> "root@<domain>"), as cron sends them.
    qualify_domain: str | None = None


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint: off unless enabled; on localhost unless told otherwise."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9325


@dataclass(frozen=True)
class TrackingConfig:
    """The event store: every message's timeline. On by default, in the queue directory."""

    enabled: bool = True
    #: The SQLite database; None means ``<queue dir>/tracking.sqlite3``.
    path: Path | None = None
    #: Events (and messages whose newest event is) older than this are pruned.
    retention: float = 30 * 86400.0


@dataclass(frozen=True)
class HttpConfig:
    """The daemon's HTTP server: provider webhooks, the JSON API and the web view."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8025
    #: Without a token, the API and the web view answer loopback clients only. Webhooks are
    #: never token-protected: they prove themselves with the provider's signature.
    token: Secret | None = field(default=None, repr=False)
    #: The largest request body taken (a webhook batch); larger ones get 413.
    max_body: int = 1024 * 1024


@dataclass(frozen=True)
class NotifyConfig:
    """Status changes POSTed to the application, signed with HMAC-SHA256."""

    url: str | None = None
    secret: Secret | None = field(default=None, repr=False)
    #: Which statuses are sent; empty means every one.
    statuses: tuple[str, ...] = ()
    timeout: float = 10.0
    #: Give up on one notification after retrying this long (it is logged, then dropped).
    max_age: float = 86400.0


@dataclass(frozen=True)
class Config:
    #: The file this came from; None for the embedded defaults.
    source: Path | None
    queue: QueueConfig
    spools: tuple[SpoolConfig, ...]
    relays: Mapping[str, RelayConfig]
    sendmail: SendmailConfig = field(default_factory=SendmailConfig)
    routes: tuple[RouteConfig, ...] = ()
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)

    def for_worker(self, worker: int) -> Config:
        """The config of worker ``worker`` of ``queue.workers``: its own queue directory, its own
        [metrics] endpoint (on the next port: ``port + worker - 1``), and [http] and [notify]
        only in the first. Every worker shares the spools, the failed folder and the event
        store, and keeps to its share of each relay's quota (``QuotaConfig.divided``, applied
        where the quotas are counted)."""
        queue = replace(self.queue, worker=worker)
        if worker == 1:
            return replace(self, queue=queue)
        port = self.metrics.port + worker - 1 if self.metrics.port else 0
        return replace(
            self,
            queue=queue,
            metrics=replace(self.metrics, port=port),
            http=replace(self.http, enabled=False),
            notify=replace(self.notify, url=None),
        )

    @property
    def failed_dir(self) -> Path:
        """The failed folder, one for every worker."""
        return self.queue.dir / "failed"

    @property
    def tracking_path(self) -> Path:
        return self.tracking.path or self.queue.dir / "tracking.sqlite3"

    @property
    def inject_spool(self) -> Path:
        """The spool that ``mqd send`` and ``mqd sendmail`` write into."""
        return self.sendmail.spool or self.spools[0].path

    @property
    def is_embedded_default(self) -> bool:
        return self.source is None


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


def load_config(path: Path | None) -> Config:
    """Read and validate ``path`` (None: embedded defaults)."""
    if path is None:
        return parse_config({}, None)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=path) from None
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], path: Path | None) -> Config:
    """Validate the TOML document ``data`` that came from ``path``."""
    defaults = default_paths()
    root = Options(data, section="", path=path)
    for key in (
        "queue",
        "relays",
        "spool",
        "route",
        "sendmail",
        "metrics",
        "tracking",
        "http",
        "notify",
    ):
        root.raw(key)
    root.finish()  # a misspelled top-level table is named before it is missed
    queue = _parse_queue(root.table("queue"), defaults)
    relays = _parse_relays(root, path, defaults, queue.workers)
    spools = _parse_spools(root, path, defaults, relays)
    routes = _parse_routes(root, path, relays)
    sendmail_opts = root.table("sendmail")
    sendmail = _parse_sendmail(sendmail_opts)
    if sendmail.spool is not None and all(
        os.path.abspath(sendmail.spool) != os.path.abspath(s.path) for s in spools
    ):
        raise sendmail_opts.error(
            "spool", f"{sendmail.spool} is not one of the [[spool]] paths, so no daemon reads it"
        )
    return Config(
        source=path,
        queue=queue,
        spools=spools,
        relays=relays,
        sendmail=sendmail,
        routes=routes,
        metrics=_parse_metrics(root.table("metrics")),
        tracking=_parse_tracking(root.table("tracking")),
        http=_parse_http(root.table("http")),
        notify=_parse_notify(root.table("notify")),
    )


def validate_sender_pattern(pattern: str) -> str:
    """``pattern`` normalised, or ValueError: an address or ``*@domain``, nothing wider."""
    match = _PATTERN.fullmatch(pattern.strip())
    if not match or not match.group(2).rstrip("."):
        raise ValueError(
            f"{pattern!r} is not an address or a '*@domain' pattern "
            "(mqd is never an open relay: list the senders your applications use)"
        )
    return f"{match.group(1)}@{match.group(2).rstrip('.').lower()}"


def sender_allowed(sender: str, patterns: Iterable[str]) -> bool:
    """True when ``sender`` matches one pattern: an exact address or ``*@domain``.

    Domains compare case-insensitively and without a trailing dot; local parts compare
    case-insensitively too (a looser match would never widen the list beyond one mailbox).
    """
    local, at, domain = sender.rpartition("@")
    if not at or not local:
        return False
    domain = domain.rstrip(".").lower()
    local = local.casefold()
    for pattern in patterns:
        p_local, _, p_domain = pattern.rpartition("@")
        if p_domain.rstrip(".").lower() != domain:
            continue
        if p_local == "*" or p_local.casefold() == local:
            return True
    return False


def _parse_queue(opts: Options, defaults: DefaultPaths) -> QueueConfig:
    retry = opts.table("retry")
    policy = RetryPolicy(
        initial=retry.duration("initial", "5m"),
        max=retry.duration("max", "1h"),
        lifetime=retry.duration("lifetime", "5d"),
    )
    retry.finish()
    if policy.initial <= 0:
        raise retry.error("initial", "must be more than zero")
    if policy.max < policy.initial:
        raise retry.error("max", "must not be less than queue.retry.initial")
    bounce_sender = opts.string("bounce_sender", f"mailer-daemon@{socket.gethostname()}")
    if "@" not in bounce_sender:
        raise opts.error("bounce_sender", f"expected an address, got {bounce_sender!r}")
    config = QueueConfig(
        dir=opts.filepath("dir", str(defaults.queue_dir)),
        bounce_sender=bounce_sender,
        concurrency=opts.integer("concurrency", 20, minimum=1),
        retry=policy,
        max_message_size=opts.size("max_message_size", "25MiB"),
        scan_interval=opts.duration("scan_interval", "5s"),
        watch=opts.choice("watch", WATCH_MODES, "auto"),
        shutdown_timeout=opts.duration("shutdown_timeout", "30s"),
        active_limit=opts.integer("active_limit", 10_000, minimum=1),
        workers=opts.count("workers", 1, auto=available_cores),
    )
    if config.workers > MAX_WORKERS:
        raise opts.error("workers", f"at most {MAX_WORKERS}")
    if config.shutdown_timeout < 0:
        raise opts.error("shutdown_timeout", "must not be negative")
    if config.scan_interval <= 0:
        raise opts.error("scan_interval", "must be more than zero")
    opts.finish()
    return config


def _parse_relays(
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
        relays[name] = RelayConfig(
            name=name,
            plugin=opts.string("plugin"),
            allowed_senders=_patterns(opts, "allowed_senders"),
            options=opts,
            quota=_parse_quota(opts, workers),
            circuit=_parse_circuit(opts),
        )
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
        max_per_hour=opts.integer("max_per_hour", None),
        max_per_day=opts.integer("max_per_day", None),
    )
    positive("max_per_second", quota.max_per_second)
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


def _relay_chain(opts: Options, key: str, relays: Mapping[str, RelayConfig]) -> tuple[str, ...]:
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


def _parse_spools(
    root: Options, path: Path | None, defaults: DefaultPaths, relays: Mapping[str, RelayConfig]
) -> tuple[SpoolConfig, ...]:
    raw = root.raw("spool")
    if raw is None:
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
        opts = Options(table, section=f"spool[{index}]", path=path)
        if opts.raw("relay") is None:
            if len(relays) != 1:
                raise opts.error("relay", f"is required: one of {', '.join(sorted(relays))}")
            chain: tuple[str, ...] = (next(iter(relays)),)
        else:
            chain = _relay_chain(opts, "relay", relays)
        spool = SpoolConfig(
            path=opts.filepath("path"),
            relays=chain,
            allowed_senders=_patterns(opts, "allowed_senders"),
        )
        opts.finish()
        if spool.key in seen:
            raise opts.error("path", f"the same directory as spool[{seen[spool.key]}]")
        seen[spool.key] = index
        spools.append(spool)
    return tuple(spools)


def _parse_routes(
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
        opts = Options(table, section=f"route[{index}]", path=path)
        senders = _patterns(opts, "senders")
        if not senders:
            raise opts.error("senders", 'is required: e.g. senders = ["*@news.example.com"]')
        if opts.raw("relay") is None:
            raise opts.error("relay", f"is required: one of {', '.join(sorted(relays))}")
        routes.append(RouteConfig(senders=senders, relays=_relay_chain(opts, "relay", relays)))
        opts.finish()
    return tuple(routes)


def _port(opts: Options, default: int) -> int:
    port: int = opts.integer("port", default, minimum=0)
    if port > 65535:
        raise opts.error("port", f"{port} is not a TCP port")
    return port


def _parse_metrics(opts: Options) -> MetricsConfig:
    config = MetricsConfig(
        enabled=opts.boolean("enabled", False),
        host=opts.string("host", "127.0.0.1"),
        port=_port(opts, 9325),
    )
    opts.finish()
    return config


def _parse_tracking(opts: Options) -> TrackingConfig:
    config = TrackingConfig(
        enabled=opts.boolean("enabled", True),
        path=opts.filepath("path", None),
        retention=opts.duration("retention", "30d"),
    )
    if config.retention <= 0:
        raise opts.error("retention", 'must be more than 0, e.g. "30d"')
    opts.finish()
    return config


def _parse_http(opts: Options) -> HttpConfig:
    config = HttpConfig(
        enabled=opts.boolean("enabled", False),
        host=opts.string("host", "127.0.0.1"),
        port=_port(opts, 8025),
        token=opts.secret("token"),
        max_body=opts.size("max_body", "1MB"),
    )
    if config.max_body < 1024:
        raise opts.error("max_body", 'is too small for a webhook batch: give at least "1KB"')
    opts.finish()
    return config


def _parse_notify(opts: Options) -> NotifyConfig:
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


def _parse_sendmail(opts: Options) -> SendmailConfig:
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


def _patterns(opts: Options, key: str) -> tuple[str, ...]:
    patterns: tuple[str, ...] = opts.string_list(key, [])
    try:
        return tuple(validate_sender_pattern(p) for p in patterns)
    except ValueError as exc:
        raise opts.error(key, str(exc)) from None
