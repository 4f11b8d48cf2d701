"""The configuration as mqd uses it: frozen dataclasses, one per table (``mqd.config.load`` fills
them from the TOML file and checks every key)."""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from mqd.config.limits import AccountConfig, QuotaConfig, SuppressionConfig
from mqd.config.options import Options, Secret
from mqd.config.paths import CONFIG_ENV
from mqd.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_RELAY",
    "AccountConfig",
    "CircuitConfig",
    "Config",
    "DatabaseConfig",
    "HttpConfig",
    "MetricsConfig",
    "NotifyConfig",
    "QueueConfig",
    "QuotaConfig",
    "RelayConfig",
    "RetryPolicy",
    "RouteConfig",
    "SendmailConfig",
    "SourceConfig",
    "SpoolConfig",
    "SuppressionConfig",
    "TracingConfig",
    "TrackingConfig",
]

#: Name of the relay used by the embedded defaults.
DEFAULT_RELAY = "outbox"
WATCH_MODES = ("auto", "inotify", "watchfiles", "poll")
#: queue.workers at most: each is a process with its own connections and memory (~35 MB).
MAX_WORKERS = 64


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff from ``initial`` up to ``max`` seconds; give up after ``lifetime``
    or after ``max_attempts`` attempts (None: no count), whichever comes first."""

    initial: float = 300.0
    max: float = 3600.0
    lifetime: float = 5 * 86400.0
    max_attempts: int | None = None


#: ``queue.store``: where the queue is kept.
STORES = ("file", "postgresql")
#: ``queue.role``: what a node of a shared queue does (``mqd.config.store.parse_role``).
ROLES = ("both", "intake", "delivery")
#: Each role in the words of the logs and ``mqd status``.
ROLE_WORDS = {"both": "intake and delivery", "intake": "intake only", "delivery": "delivery only"}
#: The sources every worker runs, by store (``Config.for_worker``; ``submit`` with ``[http]``,
#: which every worker serves): a file store's workers keep their own hand-over keys, so the
#: others hand keyed messages to the first (``mqd.daemon.firstworker``), and its mailboxes are
#: consumed there alone.
EVERY_WORKER = {"file": ("smtpd", "submit"), "postgresql": ("smtpd", "mailbox", "submit")}


@dataclass(frozen=True)
class DatabaseConfig:
    """``queue.store = "postgresql"``: the database the queue is in, and this node's name."""

    #: The libpq connection string (a URL or key=value pairs), never with its password.
    dsn: str
    #: From ``password_file`` / ``password_env`` (or an inline ``password``), if given.
    password: Secret | None = None
    #: This node's name in the shared queue (who holds a lease): unique per node.
    node: str = "localhost"


@dataclass(frozen=True)
class QueueConfig:
    dir: Path
    bounce_sender: str
    #: This machine's name in bounces (Reporting-MTA, Message-ID) and in Message-IDs mqd makes.
    hostname: str = "localhost"
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
    #: ``X-Mqd-Send-At`` may name a time at most this far ahead (further is refused).
    send_later_horizon: float = 30 * 86400.0
    #: Messages in the failed folder older than this are removed (0: kept for good).
    failed_retention: float = 30 * 86400.0
    #: Daemon processes sharing the claim (``mqd run`` starts the others, see
    #: ``mqd.daemon.workers``); on the PostgreSQL store each is a node of the shared queue.
    workers: int = 1
    #: Which of them this process is (1: the one ``mqd run`` started; not a config key).
    worker: int = 1
    #: ``file`` (the queue directory) or ``postgresql`` (``database``: shared by many nodes).
    store: str = "file"
    database: DatabaseConfig | None = None
    #: ``both`` (takes its sources in and delivers), ``intake`` (queues, leases nothing) or
    #: ``delivery`` (delivers, has no source): see ``ROLES``.
    role: str = "both"

    @property
    def delivers(self) -> bool:
        return self.role != "intake"

    @property
    def limit_shares(self) -> int:
        """Among how many processes a relay's or an account's limits are divided, each keeping
        to its share: the workers of a file store; 1 on a shared store, whose workers are nodes
        of its fleet and count the limits there."""
        return self.workers if self.store == "file" else 1

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


#: ``[http] max_connections`` at most by default, and the share of the open-files limit it takes.
HTTP_CONNECTIONS = 256
HTTP_SHARE_OF_FILES = 4


def open_files_limit() -> int | None:
    """This process's soft limit of open files (RLIMIT_NOFILE: ``ulimit -n``, systemd's
    ``LimitNOFILE=``); None when there is none or it is not known (Windows)."""
    if sys.platform == "win32":
        return None
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def default_http_connections() -> int:
    """``[http] max_connections = "auto"``: HTTP_CONNECTIONS, or a quarter of the open-files
    limit when that is less, so that HTTP clients never take the descriptors the queue and the
    relays need."""
    files = open_files_limit()
    if files is None:
        return HTTP_CONNECTIONS
    return max(1, min(HTTP_CONNECTIONS, files // HTTP_SHARE_OF_FILES))


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
    #: Every address in the From header must match the allow-lists too, not only the envelope
    #: sender: From is what recipients see (``check_from = false`` turns this off).
    check_from: bool = True
    #: Its place among the [[spool]] tables: problems name it as ``spool[<index>]``.
    index: int = field(default=0, compare=False)

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
class SourceConfig(SpoolConfig):
    """An intake source that is not a spool (``[[smtpd]]``, ``[[source]]``), shaped like one so
    that the sender policy and routes take it as one (``path``: its name, ``smtpd[0]``); its own
    keys stay in ``options``, read by the class registered as its ``kind``."""

    kind: str = ""
    options: Options | None = field(default=None, compare=False, repr=False)
    #: The table it came from (``kind``'s own, or ``source``).
    table: str = ""

    @property
    def name(self) -> str:  # ``smtpd[0]``: in problems, status and events
        return f"{self.table or self.kind}[{self.index}]"

    @functools.cached_property
    def key(self) -> str:  # ``smtpd.0``: its directory in the queue (a spool's: a hash of its path)
        return f"{self.table or self.kind}.{self.index}"


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
class TracingConfig:
    """OpenTelemetry traces (``mqd[otel]``): off unless enabled; the standard ``OTEL_*``
    variables configure the rest (docs/tracing.md)."""

    enabled: bool = False


@dataclass(frozen=True)
class TrackingConfig:
    """The event store: every message's timeline. On by default, in the queue directory."""

    enabled: bool = True
    #: The SQLite database; None means ``<queue dir>/tracking.sqlite3``.
    path: Path | None = None
    #: ``auto`` (PostgreSQL when the queue is, else SQLite), ``sqlite`` or ``postgresql``.
    store: str = "auto"
    #: Events (and messages whose newest event is) older than this are pruned.
    retention: float = 30 * 86400.0
    #: Events kept in memory while the store cannot be written (``mqd.tracking.backlog``).
    keep_while_paused: int = 100_000


@dataclass(frozen=True)
class HttpConfig:
    """The daemon's HTTP server: provider webhooks, the JSON API and the web view."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8025
    #: Without a token, the API and the web view answer loopback clients only. Webhooks are
    #: never token-protected: they prove themselves with the provider's signature.
    token: Secret | None = field(default=None, repr=False)
    #: Signs an operator in to the web view's actions (hold, release, retry, delete, bounce);
    #: without it the view only shows. Never the same as ``token``.
    operator_token: Secret | None = field(default=None, repr=False)
    #: The largest request body taken (a webhook batch); larger ones get 413.
    max_body: int = 1024 * 1024
    #: Connections served at once; one more is closed as soon as it is accepted, unread.
    max_connections: int = field(default_factory=default_http_connections)
    #: Seconds a connection may take to send a request's headers, counted from when it
    #: connected or got its last answer (an idle keep-alive connection); then it is closed.
    header_timeout: float = 10.0


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
    tracing: TracingConfig = field(default_factory=TracingConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    sources: tuple[SourceConfig, ...] = ()  # [[smtpd]], [[source]]: the other intake sources
    #: ``[[account]]``: senders grouped under a name with sending limits (``mqd.config.accounts``).
    accounts: tuple[AccountConfig, ...] = ()
    suppression: SuppressionConfig = field(default_factory=SuppressionConfig)

    def for_worker(self, worker: int) -> Config:
        """Worker ``worker``'s config: its own queue directory and [metrics] port (``port +
        worker - 1``); [notify] and plugins' sources in the first only; [http] and
        ``EVERY_WORKER`` in each (SO_REUSEPORT); spools, failed folder, event store shared;
        each relay's quota its share (``QuotaConfig.divided``, applied where quotas count)."""
        queue = replace(self.queue, worker=worker)
        if worker == 1:
            return replace(self, queue=queue)
        port = self.metrics.port + worker - 1 if self.metrics.port else 0
        return replace(
            self,
            queue=queue,
            metrics=replace(self.metrics, port=port),
            sources=tuple(s for s in self.sources if s.kind in EVERY_WORKER[self.queue.store]),
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
        """The spool that ``mqd send`` and ``mqd sendmail`` write into; ConfigError on a node
        without one (``queue.role = "delivery"``)."""
        if self.sendmail.spool is not None:
            return self.sendmail.spool
        if not self.spools:
            raise ConfigError(
                'this node takes no mail in (queue.role = "delivery"): send through an intake '
                'node, or give this one a [[spool]] and role = "both"',
                path=self.source,
                key="queue.role",
            )
        return self.spools[0].path

    def spool_at(self, path: str | os.PathLike[str]) -> SpoolConfig | None:
        """The ``[[spool]]`` whose directory ``path`` is (as absolute paths), or None."""
        wanted = os.path.abspath(path)
        return next((s for s in self.spools if os.path.abspath(s.path) == wanted), None)

    @property
    def is_embedded_default(self) -> bool:
        return self.source is None
