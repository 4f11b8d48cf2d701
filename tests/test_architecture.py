"""The shape of mqd/: no import cycle (imports inside functions and under TYPE_CHECKING count),
no module over 400 lines, package ``__init__`` files that import nothing of their package, the
``message`` leaf importing nothing above it, and no queue-path handling outside mqd/queue/."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "mqd"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str) -> Iterator[str]:
    """Every mqd module ``name`` imports, wherever the import statement is."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target in MODULES and target != name:
                yield target


GRAPH = {name: set(imports_of(name)) for name in MODULES}


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(GRAPH):
        if start in index:
            continue
        work = [(start, iter(sorted(GRAPH[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(GRAPH[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_sees_imports_inside_functions_and_type_checking_blocks() -> None:
    # mqd.daemon.servers imports the HTTP server only inside a function, and the queue store
    # protocol only for type checking: both are edges of the graph.
    assert "mqd.http.server" in GRAPH["mqd.daemon.servers"]
    assert "mqd.queue.store" in GRAPH["mqd.daemon.servers"]


def test_there_is_no_import_cycle() -> None:
    assert cycles() == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_400_lines(name: str) -> None:
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it where its name stops fitting"


def test_package_inits_import_nothing_of_their_own_package() -> None:
    """Importing a submodule runs its package's ``__init__``: it must stay cheap and acyclic.
    The two facades (``mqd``, ``mqd.testing``) resolve their names lazily."""
    for name, path in MODULES.items():
        if path.name != "__init__.py" or name in ("mqd", "mqd.testing"):
            continue
        assert not GRAPH[name], f"{name}/__init__.py imports {sorted(GRAPH[name])}"


def test_the_message_package_is_a_leaf() -> None:
    for name in MODULES:
        if name.startswith("mqd.message."):
            above = {t for t in GRAPH[name] if not t.startswith(("mqd.message", "mqd.errors"))}
            assert not above, f"{name} imports {sorted(above)}"


#: Paths inside a queue directory: only the queue stores know them.
QUEUE_PATHS = re.compile(r"""/\s*["'](messages|state|quarantine|queue-id)["']""")


def test_only_the_queue_handles_queue_paths() -> None:
    for name, path in MODULES.items():
        if name.startswith("mqd.queue"):
            continue
        text = path.read_text(encoding="utf-8")
        assert not QUEUE_PATHS.search(text), f"{name} handles a path inside the queue directory"
