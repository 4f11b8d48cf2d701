"""Arrays given to a statement in their text form, built here in one join: psycopg adapts a list
element by element in Python (each list's element type looked for, each element dumped on its
own), several times the cost for the arrays of the hot statements (a drain's marks and
completions, intake's columns). The statement casts the text
(``%(ids)s::text[]``); ``tests/test_pgarrays.py`` checks they read as psycopg's own would."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["bool_array", "number_array", "text_array"]


def text_array(values: Iterable[str]) -> str:
    """``values`` as a ``text[]`` literal: each quoted, any text (no None)."""
    items = list(values)
    if not items:
        return "{}"
    joined = '","'.join(items)
    if '"' in joined or "\\" in joined:  # rare (mqd's ids never): escaped one by one
        joined = '","'.join(v.replace("\\", "\\\\").replace('"', '\\"') for v in items)
    return '{"' + joined + '"}'


def number_array(values: Iterable[int | float]) -> str:
    """``values`` as an ``int8[]`` or ``float8[]`` literal (a float's repr reads back exactly;
    ``inf`` and ``nan`` are read as PostgreSQL's)."""
    return "{" + ",".join(map(repr, values)) + "}"


def bool_array(values: Iterable[bool]) -> str:
    return "{" + ",".join("t" if value else "f" for value in values) + "}"
