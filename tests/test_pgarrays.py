"""Arrays built as text for the hot statements read, on the server, as psycopg's own adaptation
of the same lists does."""

from __future__ import annotations

import psycopg
import pytest
from pgfixtures import PgSchema

from mqd.queue.postgresql.arrays import bool_array, number_array, text_array

TEXTS = [
    ["0190a1b2c3d4e5f6a7b8c9"],
    ['"quoted"', "back\\slash", "a,b", "{braced}", "", "NULL", " spaced ", "ünï ✉ 郵便", "a\nb"],
    [],
]
NUMBERS = [[1, -2, 2**62], [1_765_000_000.123456, 0.1 + 0.2, -0.0, 1e-300, float("inf")], []]


@pytest.mark.parametrize("values", TEXTS)
def test_a_text_array_reads_as_the_list(schema: PgSchema, values: list[str]) -> None:
    with psycopg.connect(schema.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT %s::text[], %s::text[]", (text_array(values), values))
        assert row.fetchone() == (values, values)


@pytest.mark.parametrize("values", NUMBERS)
def test_a_number_array_reads_as_the_list(schema: PgSchema, values: list[float]) -> None:
    kind = "int8" if all(isinstance(v, int) for v in values) else "float8"
    with psycopg.connect(schema.dsn, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT %s::{kind}[], %s::{kind}[]".encode(), (number_array(values), values)
        ).fetchone()
    assert row == (values, values)


def test_a_bool_array_reads_as_the_list(schema: PgSchema) -> None:
    values = [True, False, False, True]
    with psycopg.connect(schema.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT %s::bool[], %s::bool[]", (bool_array(values), values))
        assert row.fetchone() == (values, values)
        assert conn.execute("SELECT %s::bool[]", (bool_array([]),)).fetchone() == ([],)
