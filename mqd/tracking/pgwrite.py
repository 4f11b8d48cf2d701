"""The event store's upserts on PostgreSQL: a batch's rows of one table in one statement, whatever
their number, the rows as one JSON array (``jsonb_array_elements``), each row an array of its
columns' values.

One statement text per table and conflict clause: psycopg parses it once (a ``VALUES`` list of
n rows is a new text for each n, with ten parameters a row: psycopg neither caches nor prepares
statements with more than 50, and parsed each one anew, a fifth of a node's CPU with tracking
on), and PostgreSQL plans it once per connection, once psycopg has prepared it. One JSON text
(``json.dumps``, in C) rather than an array a column: psycopg adapts an array element by element
in Python, most of the tracking writer's own CPU (and the server reads the one text faster too).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import psycopg

__all__ = ["insert_rows", "insert_sql"]

#: Every column of the ``mqd_track_*`` tables the upserts write is text but these.
_TYPES = {"at": "float8", "created_at": "float8", "updated_at": "float8", "rank": "int4"}


@functools.cache
def insert_sql(table: str, alias: str, columns: tuple[str, ...], conflict: str) -> bytes:
    """``INSERT`` into ``table`` (named ``alias`` in ``conflict``) of the rows of one JSON array
    (a row: its values in ``columns``' order)."""
    values = ", ".join(
        f"(r ->> {i})::{_TYPES.get(column, 'text')}" for i, column in enumerate(columns)
    )
    return (
        f"INSERT INTO {table} AS {alias} ({', '.join(columns)}) "  # noqa: S608
        f"SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS r {conflict}"
    ).encode()


def insert_rows(
    conn: psycopg.Connection[Any],
    table: str,
    alias: str,
    columns: Sequence[str],
    conflict: str,
    rows: Sequence[Sequence[Any]],
) -> int:
    """Upsert ``rows`` (values in ``columns``' order: text, numbers or None) in one statement;
    the rows inserted or updated. Rows must differ in the conflict's key (one statement cannot
    update a row twice: the batch folds them first)."""
    if not rows:
        return 0
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a row of {len(row)} values for {len(columns)} columns of {table}")
    # NaN and infinities are not JSON: refused here rather than by the server.
    text = json.dumps(rows, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return conn.execute(insert_sql(table, alias, tuple(columns), conflict), (text,)).rowcount
