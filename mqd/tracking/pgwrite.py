"""The event store's upserts on PostgreSQL: a batch's rows of one table in one statement, whatever
their number, each column as one array (``unnest``) in binary.

One statement text per table and conflict clause: psycopg parses it once (a ``VALUES`` list of
n rows is a new text for each n, with ten parameters a row: psycopg neither caches nor prepares
statements with more than 50, and parsed each one anew, a fifth of a node's CPU with tracking
on), and PostgreSQL plans it once per connection, once psycopg has prepared it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import psycopg

__all__ = ["insert_rows", "insert_sql"]

#: Every column of the ``mqd_track_*`` tables the upserts write is text but these.
_TYPES = {"at": "float8", "created_at": "float8", "updated_at": "float8", "rank": "int4"}


@functools.cache
def insert_sql(table: str, alias: str, columns: tuple[str, ...], conflict: str) -> bytes:
    """``INSERT`` into ``table`` (named ``alias`` in ``conflict``) of one array per column."""
    arrays = ", ".join(f"%b::{_TYPES.get(column, 'text')}[]" for column in columns)
    return (
        f"INSERT INTO {table} AS {alias} ({', '.join(columns)}) "  # noqa: S608
        f"SELECT * FROM unnest({arrays}) {conflict}"
    ).encode()


def insert_rows(
    conn: psycopg.Connection[Any],
    table: str,
    alias: str,
    columns: Sequence[str],
    conflict: str,
    rows: Sequence[Sequence[Any]],
) -> int:
    """Upsert ``rows`` (values in ``columns``' order) in one statement; the rows inserted or
    updated. Rows must differ in the conflict's key (one statement cannot update a row twice:
    the batch folds them first)."""
    if not rows:
        return 0
    arrays = [list(column) for column in zip(*rows, strict=True)]
    return conn.execute(insert_sql(table, alias, tuple(columns), conflict), arrays).rowcount
