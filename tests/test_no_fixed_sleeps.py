"""Tests wait on conditions, never on fixed sleeps (issue 21): a guard over the test sources.

A call to ``time.sleep`` or ``asyncio.sleep`` (however imported) with a constant argument above
zero fails this test, naming file:line, unless it is one of the allowed kinds:

- the wait helpers (``mqd.testing.waiting``: outside the scanned trees);
- a fake peer's simulated delay, or a child process's script, marked on its line with
  ``# sleep-ok: <why>`` (the reason is required).

``asyncio.sleep(0)`` (a yield) and a sleep whose length is not a constant (a fake peer's
configured delay) are not fixed sleeps.
"""

from __future__ import annotations

import ast
import operator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The test trees: the core's and each bundled plugin's.
TREES = [ROOT / "tests", *sorted((ROOT / "plugins").glob("*/tests"))]
MARKER = "# sleep-ok:"
SLEEP_MODULES = {"time", "asyncio"}
ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _sleep_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """The names that mean a sleep module (``import time as t``) and a sleep function
    (``from asyncio import sleep``) in a module."""
    modules, functions = set(SLEEP_MODULES), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in SLEEP_MODULES:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module in SLEEP_MODULES:
            for alias in node.names:
                if alias.name == "sleep":
                    functions.add(alias.asname or alias.name)
    return modules, functions


def _is_sleep(call: ast.Call, modules: set[str], functions: set[str]) -> bool:
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "sleep":
        return isinstance(func.value, ast.Name) and func.value.id in modules
    return isinstance(func, ast.Name) and func.id in functions


def _fixed_length(call: ast.Call) -> float | None:
    """The sleep's length when it is a constant (``0.2``, ``1 + 0.3``), else None."""
    argument = call.args[0] if call.args else None
    if argument is None:
        argument = next((k.value for k in call.keywords if k.arg in ("secs", "delay")), None)
    if argument is None:
        return None
    return _constant(argument)


def _constant(node: ast.expr) -> float | None:
    """A number written with literals and arithmetic (``1 + 0.3``), else None."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _constant(node.operand)
        return None if value is None else (-value if isinstance(node.op, ast.USub) else value)
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        left, right = _constant(node.left), _constant(node.right)
        if left is None or right is None or (right == 0 and isinstance(node.op, ast.Div)):
            return None
        return float(ARITHMETIC[type(node.op)](left, right))
    return None


def fixed_sleeps(source: str, name: str) -> list[str]:
    """``name:line: <call>`` for each fixed sleep in ``source`` not marked as allowed."""
    tree = ast.parse(source)
    lines = source.splitlines()
    modules, functions = _sleep_names(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not _is_sleep(node, modules, functions):
            continue
        length = _fixed_length(node)
        if length is None or length <= 0:
            continue
        line = lines[node.lineno - 1]
        marker = line.find(MARKER)
        if marker >= 0 and line[marker + len(MARKER) :].strip():
            continue
        found.append((node.lineno, f"{name}:{node.lineno}: {ast.get_source_segment(source, node)}"))
    return [text for _, text in sorted(found)]


def test_no_test_waits_a_fixed_time() -> None:
    found = []
    for tree in TREES:
        for path in sorted(tree.rglob("*.py")):
            found += fixed_sleeps(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not found, (
        "fixed sleeps in the tests: wait for a condition instead (mqd.testing.wait_until), "
        f"or mark a fake peer's delay with '{MARKER} <why>':\n" + "\n".join(found)
    )


def test_the_guard_finds_each_form_of_a_fixed_sleep() -> None:
    source = """
import asyncio, time
import time as t
from asyncio import sleep
from time import sleep as nap

async def f(delay):
    await asyncio.sleep(0.2)
    time.sleep(1)
    t.sleep(0.5 * 2)
    await sleep(delay=0.1)
    nap(3)
    await asyncio.sleep(0)
    await asyncio.sleep(delay)
    await asyncio.sleep(3600)  # sleep-ok: a peer that never answers
    await asyncio.sleep(3600)  # sleep-ok:
"""
    assert [line.split(":")[1] for line in fixed_sleeps(source, "x.py")] == [
        "8",
        "9",
        "10",
        "11",
        "12",
        "16",
    ]
