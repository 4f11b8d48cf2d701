"""PostgreSQL for the tests: a schema of its own per test, made with the store's migrations.

The server is ``MQD_TEST_PG_DSN`` (default: the local one on 127.0.0.1:5432, database ``test``,
trust auth). When it cannot be reached the PostgreSQL tests skip, saying why, except under
``CI=true``: there they fail (``.ci/run`` starts the server).
"""

from __future__ import annotations

import os
import secrets
from urllib.parse import quote

import psycopg
import pytest

from mqd.queue.postgresql.schema import script

__all__ = ["BASE_DSN", "PgSchema", "require_postgresql"]

BASE_DSN = os.environ.get("MQD_TEST_PG_DSN", "postgresql://root@127.0.0.1:5432/test")

_reachable: str | bool | None = None


def require_postgresql() -> None:
    """Skip (fail under CI=true) when the test server cannot be reached."""
    global _reachable
    if _reachable is None:
        try:
            with psycopg.connect(BASE_DSN, connect_timeout=5):
                _reachable = True
        except psycopg.Error as exc:
            _reachable = str(exc).strip() or type(exc).__name__
    if _reachable is not True:
        why = f"PostgreSQL is not reachable at {BASE_DSN}: {_reachable}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (under CI=true the PostgreSQL tests never skip)")
        pytest.skip(why)


class PgSchema:
    """A fresh schema on the test server (``upgraded``: with mqd's tables), dropped by
    ``drop``. ``dsn`` points at it through the search_path."""

    def __init__(self, *, upgraded: bool = True) -> None:
        require_postgresql()
        self.name = f"mqd_t_{secrets.token_hex(6)}"
        joiner = "&" if "?" in BASE_DSN else "?"
        self.dsn = f"{BASE_DSN}{joiner}options={quote(f'-csearch_path={self.name}')}"
        with psycopg.connect(BASE_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.name}"'.encode())
        if upgraded:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(script().encode())

    def drop(self) -> None:
        with psycopg.connect(BASE_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'.encode())
