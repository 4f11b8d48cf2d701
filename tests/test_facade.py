"""The facade ``mqd`` is the plugin author's one import: it exports every type a hook receives
(found by walking the hookspecs' signatures, aliases such as ``RegisterRelay`` followed), its
lazy table, ``__all__`` and the block type checkers read agree, and docs/plugins/ name types
by the facade only (``mqd.Config``, not ``mqd.config.schema.Config``).

``import mqd`` loading no submodule is tests/test_imports.py's business.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import re
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mqd
import mqd.plugins.hookspecs
from mqd.plugins.host import DEFAULT_PLUGINS

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DOCS = ROOT / "docs" / "plugins"
#: ``mqd.x.y`` in prose: not an address (``mailer-daemon@mqd.test``) or part of a longer name.
DOTTED = re.compile(r"(?<![\w@./-])mqd(?:\.\w+)+")


# -- the checks (pure functions, so that they can be tested themselves) -------------------------


def _names(node: ast.AST) -> Iterator[str]:
    """The names an annotation uses, those in quoted parts (forward references) included."""
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            yield child.id
        elif isinstance(child, ast.Constant) and isinstance(child.value, str):
            yield from _names(ast.parse(child.value, mode="eval"))


def _is_hookspec(function: ast.FunctionDef) -> bool:
    """Decorated ``@hookspec`` or ``@hookspec(...)``."""
    targets = [d.func if isinstance(d, ast.Call) else d for d in function.decorator_list]
    return any(isinstance(t, ast.Name) and t.id == "hookspec" for t in targets)


def hook_types(source: str, module: str) -> dict[str, str]:
    """Each of mqd's types named in the signature of a hookspec in ``source`` (the source of
    ``module``) -> the module that defines it. Names imported from outside mqd and builtins
    are left out; an alias ``module`` defines is a type of ``module``, and its names count."""
    tree = ast.parse(source)
    origin: dict[str, str] = {}  # imported name -> its module
    aliases: dict[str, ast.expr] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            origin.update({a.asname or a.name: node.module for a in node.names})
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                aliases[target.id] = node.value
    found: dict[str, str] = {}
    todo: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and _is_hookspec(node):
            arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            annotations = [a.annotation for a in arguments] + [node.returns]
            todo += [name for a in annotations if a is not None for name in _names(a)]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        if name in aliases:
            found[name] = module
            todo += _names(aliases[name])
        elif name in origin:
            if origin[name].split(".")[0] == "mqd":
                found[name] = origin[name]
        elif not hasattr(builtins, name) and name != "None":
            raise AssertionError(f"{module}: cannot tell where the hook type {name} comes from")
    return found


def unexported(hook_types: Mapping[str, str], facade: Any) -> list[str]:
    """What is wrong with how ``facade`` exports ``hook_types`` (name -> defining module)."""
    problems = []
    for name, module in sorted(hook_types.items()):
        if name not in facade.__all__:
            problems.append(f"{name} ({module}) is not in mqd.__all__")
        elif getattr(facade, name) is not getattr(importlib.import_module(module), name):
            problems.append(f"mqd.{name} is not {module}.{name}")
    return problems


def non_facade_names(pages: Mapping[str, str], exported: set[str], allowed: set[str]) -> list[str]:
    """Dotted ``mqd.`` names in ``pages`` that do not go through the facade: allowed are
    ``mqd.<exported>`` (and its attributes), ``mqd.testing`` and its modules, and ``allowed``
    (the core plugins' modules, logger names)."""
    problems = []
    for page, text in sorted(pages.items()):
        for match in DOTTED.finditer(text):
            name = match.group(0)
            top = name.split(".")[1]
            if top in exported or top == "__all__" or top == "testing" or name in allowed:
                continue
            problems.append(f"docs/plugins/{page}: {name}")
    return problems


def logger_names() -> set[str]:
    """The names of mqd's loggers, as the docs tell operators to configure them."""
    names = set()
    for path in (ROOT / "mqd").rglob("*.py"):
        names.update(re.findall(r"getLogger\(\"([\w.]+)\"\)", path.read_text(encoding="utf-8")))
    return names


# -- the facade ---------------------------------------------------------------------------------


def test_the_facade_exports_every_type_a_hook_receives() -> None:
    source = Path(mqd.plugins.hookspecs.__file__).read_text(encoding="utf-8")
    found = hook_types(source, "mqd.plugins.hookspecs")
    assert {"Config", "Event", "ParsedMessage", "RegisterRelay", "Relay"} <= set(found)
    problems = unexported(found, mqd)
    assert not problems, "\n".join(problems)


def test_lazy_table_all_and_the_type_checkers_block_agree() -> None:
    assert mqd.__all__ == sorted(mqd.__all__)
    assert set(mqd.__all__) == set(mqd._LAZY)
    tree = ast.parse(Path(mqd.__file__).read_text(encoding="utf-8"))
    block = next(
        n
        for n in tree.body
        if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING"
    )
    seen = {
        alias.name: node.module
        for node in ast.walk(block)
        if isinstance(node, ast.ImportFrom) and node.module != "typing"
        for alias in node.names
    }
    assert seen == mqd._LAZY


def test_plugin_docs_name_types_by_the_facade() -> None:
    pages = {p.name: p.read_text(encoding="utf-8") for p in sorted(PLUGIN_DOCS.glob("*.md"))}
    allowed = set(DEFAULT_PLUGINS) | logger_names() | {"mqd.toml"}
    problems = non_facade_names(pages, set(mqd.__all__), allowed)
    assert not problems, "name these by the facade (mqd.X), or export them:\n" + "\n".join(problems)


def test_the_checks_find_what_they_look_for() -> None:
    source = """
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mqd.config.schema import Config
    from mqd.queue.failed import FailureRecord
    from mqd.relays.base import Relay

Register = Callable[[str, "type[Relay] | str"], None]

@hookspec(firstresult=True)
def mqd_a(record: FailureRecord, register: Register, n: int) -> list[str] | None: ...

@hookspec
def mqd_b(config: "Config") -> None: ...

def helper(x: Unused) -> None: ...
"""
    found = hook_types(source, "mqd.fake")
    assert found == {
        "FailureRecord": "mqd.queue.failed",
        "Register": "mqd.fake",
        "Relay": "mqd.relays.base",
        "Config": "mqd.config.schema",
    }
    assert unexported(
        {"FailureRecord": "mqd.queue.failed", "Config": "mqd.config.schema"}, mqd
    ) == ["FailureRecord (mqd.queue.failed) is not in mqd.__all__"]
    impostor = types.SimpleNamespace(__all__=["Config"], Config=object())
    assert unexported({"Config": "mqd.config.schema"}, impostor) == [
        "mqd.Config is not mqd.config.schema.Config"
    ]
    page = (
        "`mqd.Config`, `mqd.Relay.deliver`, `mqd.testing.harness`, from `mqd.__all__`;"
        " logger `mqd.plugins`; mailer-daemon@mqd.test; `mqd.config.schema.SpoolConfig`"
    )
    assert non_facade_names({"a.md": page}, {"Config", "Relay"}, {"mqd.plugins"}) == [
        "docs/plugins/a.md: mqd.config.schema.SpoolConfig"
    ]
