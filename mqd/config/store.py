"""``[queue] store``: the file store (the default) or PostgreSQL, and the PostgreSQL keys.

```toml
[queue]
store = "postgresql"
dsn = "postgresql://mqd@db.example.com/mqd"
password_file = "/etc/mqd/db-password"   # or password_env (the relays' secret rules)
node = "web-1"                            # default: the host name; unique per node
```

The password never goes in the DSN (it would show in logs and in ``mqd config check``); a
password file others may read is refused, as a relay's is.
"""

from __future__ import annotations

import importlib.util
import re

from mqd.config.hostname import local_hostname
from mqd.config.options import Options
from mqd.config.schema import STORES, DatabaseConfig

__all__ = ["check_workers", "parse_store"]

_URL = re.compile(r"^postgres(?:ql)?://")
_URL_PASSWORD = re.compile(r"^postgres(?:ql)?://[^/@]*:[^/@]*@|[?&]password=")
_KEY_PASSWORD = re.compile(r"(?:^|\s)password\s*=")
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_KEYS = ("dsn", "password_file", "password_env", "password", "node")


def parse_store(opts: Options) -> tuple[str, DatabaseConfig | None]:
    """``queue.store`` and, for PostgreSQL, its database; ConfigError naming the key."""
    store = opts.choice("store", STORES, "file")
    if store != "postgresql":
        given = set(opts.keys())
        for key in _KEYS:
            if key in given:
                opts.raw(key)
                opts.report(opts.error(key, 'is for store = "postgresql" only'))
        return store, None
    dsn: str = opts.string("dsn")
    if not (_URL.match(dsn) or "=" in dsn):
        raise opts.error(
            "dsn",
            f"expected a PostgreSQL connection string such as "
            f"'postgresql://mqd@db.example.com/mqd', got {dsn!r}",
        )
    if _URL_PASSWORD.search(dsn) if _URL.match(dsn) else _KEY_PASSWORD.search(dsn):
        raise opts.error(
            "dsn",
            "holds a password: give it with password_file or password_env instead (a DSN shows "
            "in logs and in 'mqd config check')",
        )
    password = opts.secret("password")
    node: str = opts.string("node", None) or local_hostname()
    if not _NODE.match(node):
        raise opts.error(
            "node",
            f"expected a name such as 'web-1' (letters, digits, '.', '-', '_', ':', '@'; at most "
            f"128), got {node!r}",
        )
    missing = [m for m in ("psycopg", "psycopg_pool") if importlib.util.find_spec(m) is None]
    if missing:
        raise opts.error(
            "store",
            f"the PostgreSQL store needs {' and '.join(missing)}: install mqd with "
            "pip install 'mqd[postgresql]'",
        )
    return store, DatabaseConfig(dsn=dsn, password=password, node=node)


def check_workers(opts: Options, store: str, workers: int) -> None:
    """``queue.workers`` stays 1 with the PostgreSQL store for now (administration asks every
    worker, and each would answer for the whole shared queue)."""
    if store == "postgresql" and workers > 1:
        opts.report(
            opts.error(
                "workers",
                'is 1 with store = "postgresql" for now: run more nodes (each its own '
                "queue.node) to use more cores",
            )
        )
