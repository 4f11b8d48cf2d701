"""``[queue] store``: the file store (the default) or PostgreSQL, and the PostgreSQL keys.

```toml
[queue]
store = "postgresql"
dsn = "postgresql://mqd@db.example.com/mqd"
password_file = "/etc/mqd/db-password"   # or password_env (the relays' secret rules)
node = "web-1"                            # default: the host name; unique per node
role = "both"                             # or "intake", "delivery": parse_role
```

The password never goes in the DSN (it would show in logs and in ``mqd config check``); a
password file others may read is refused, as a relay's is.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence

from mqd.config.hostname import local_hostname
from mqd.config.options import Options
from mqd.config.schema import ROLES, STORES, DatabaseConfig, SourceConfig, SpoolConfig

__all__ = ["check_no_intake", "parse_role", "parse_store"]

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


def parse_role(opts: Options, store: str) -> str:
    """``queue.role``: ``both``, ``intake`` or ``delivery``, the latter two only on a queue
    that nodes share (on the file store nothing else would deliver what an intake node
    queues, and nothing else would take in what a delivery node delivers)."""
    role: str = opts.choice("role", ROLES, "both")
    if role != "both" and store != "postgresql":
        opts.report(
            opts.error(
                "role",
                f'{role!r} needs store = "postgresql" (a queue that other nodes share): '
                + (
                    "on the file store nothing would ever deliver what this node queues"
                    if role == "intake"
                    else "on the file store nothing else takes mail into this node's queue"
                )
                + '; remove the key (role = "both") or use the PostgreSQL store',
            )
        )
        return "both"
    return role


def check_no_intake(
    opts: Options, spools: Sequence[SpoolConfig], sources: Sequence[SourceConfig]
) -> None:
    """A delivery node (``queue.role = "delivery"``) is refused with intake tables: nothing on
    it would ever read them (refused rather than ignored, so that no file waits in a spool that
    no daemon reads, and no producer is told a port is there)."""
    tables = (["[[spool]]"] if spools else []) + sorted({f"[[{s.kind}]]" for s in sources})
    if tables:
        opts.report(
            opts.error(
                "role",
                f'is "delivery": this node takes no mail in, so its {", ".join(tables)} would '
                "never be read; remove them (an intake node takes the mail in), or set role = "
                '"both"',
            )
        )
