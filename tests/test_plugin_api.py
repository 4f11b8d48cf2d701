"""The plugin API is a product: this meta-test fails when a hook is undocumented or untested,
and runs the code of docs/plugins/ so that it cannot rot.

* Every hookspec ``mqd_*`` in ``mqd.plugins.hookspecs`` needs a ``## `mqd_x` `` section in a page of
  docs/plugins/ with an example ``def mqd_x(...)`` whose arguments the hook has, and a test
  under tests/ (other than this file) that names it in code (an implementation or a call).
* Every Python block of the docs compiles; blocks with ``@hookimpl`` load as plugins (pluggy
  checks hook names and arguments); the worked example in testing.md (the blocks whose first
  line names a file) is written out as a project and its own tests run, with the plugin
  installed through a .dist-info directory as pip would leave it.
"""

from __future__ import annotations

import ast
import inspect
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path

import pytest
from test_docs import headings, section

import mqd.plugins.hookspecs
from mqd.plugins.host import PluginHost

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DOCS = ROOT / "docs" / "plugins"
TESTS = ROOT / "tests"
#: Pages about one plugin each, written with that plugin: linked and link-checked, but their
#: code is the plugin's business.
PLUGIN_PAGES = {"sendgrid.md", "ses.md"}
FILE_MARKER = re.compile(r"#\s*([\w./-]+\.(?:py|toml))\s*$")


def hookspecs() -> dict[str, list[str]]:
    """Hook name -> its argument names."""
    return {
        name: list(inspect.signature(function).parameters)
        for name, function in inspect.getmembers(mqd.plugins.hookspecs, inspect.isfunction)
        if name.startswith("mqd_") and hasattr(function, "mqd_spec")
    }


def plugin_pages() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(PLUGIN_DOCS.glob("*.md"))}


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block."""
    return [
        (m.group(1), m.group(2))
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    ]


# -- the checks (pure functions, so that they can be tested themselves) -------------------------


def documentation_problems(specs: Mapping[str, list[str]], pages: Mapping[str, str]) -> list[str]:
    problems = []
    documented: set[str] = set()
    for page, text in pages.items():
        for _, title in headings(text):
            if m := re.fullmatch(r"`(mqd_\w+)`", title):
                documented.add(m.group(1))
                if m.group(1) not in specs:
                    problems.append(f"{page} documents {m.group(1)}, which is not a hook")
    for name, arguments in sorted(specs.items()):
        bodies = [s for text in pages.values() if (s := section(text, f"`{name}`")) is not None]
        if name not in documented or not bodies:
            problems.append(f"{name}: no '## `{name}`' section in docs/plugins/")
            continue
        examples = [
            node
            for body in bodies
            for lang, code in code_blocks(body)
            if lang == "python"
            for node in ast.walk(ast.parse(code))
            if isinstance(node, ast.FunctionDef) and node.name == name
        ]
        if not examples:
            problems.append(f"{name}: its section has no example 'def {name}(...)'")
        for node in examples:
            declared = [a.arg for a in node.args.args if a.arg != "self"]
            unknown = sorted(set(declared) - set(arguments))
            if unknown:
                problems.append(f"{name}: the example takes {unknown}; the hook has {arguments}")
    return problems


def names_in_code(source: str) -> set[str]:
    """Identifiers used in ``source`` (not in its comments or strings)."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {token.string for token in tokens if token.type == tokenize.NAME}


def untested(specs: Mapping[str, list[str]], sources: Mapping[str, str]) -> list[str]:
    used: set[str] = set().union(*(names_in_code(s) for s in sources.values()))
    return sorted(name for name in specs if name not in used)


def sources_of_tests() -> dict[str, str]:
    this = Path(__file__).resolve()
    return {
        str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
        for path in sorted(TESTS.rglob("*.py"))
        if path.resolve() != this
    }


# -- the meta-test ------------------------------------------------------------------------------


def test_there_are_hooks_to_check() -> None:
    assert {"mqd_register_relays", "mqd_check_policy", "mqd_track_event"} <= set(hookspecs())


def test_every_hook_is_documented_with_an_example() -> None:
    problems = documentation_problems(hookspecs(), plugin_pages())
    assert not problems, "\n".join(problems)


def test_every_hook_is_exercised_by_a_test() -> None:
    missing = untested(hookspecs(), sources_of_tests())
    assert not missing, f"no test under tests/ implements or calls {missing}"


def test_the_checks_find_what_they_look_for() -> None:
    specs = {"mqd_fake": ["event", "config"]}
    assert documentation_problems(specs, {"a.md": "# Hooks\n"}) == [
        "mqd_fake: no '## `mqd_fake`' section in docs/plugins/"
    ]
    no_example = "## `mqd_fake`\n\nIt does things.\n"
    assert documentation_problems(specs, {"a.md": no_example}) == [
        "mqd_fake: its section has no example 'def mqd_fake(...)'"
    ]
    wrong = "## `mqd_fake`\n\n```python\ndef mqd_fake(evnt):\n    pass\n```\n"
    assert documentation_problems(specs, {"a.md": wrong}) == [
        "mqd_fake: the example takes ['evnt']; the hook has ['event', 'config']"
    ]
    good = "## `mqd_fake`\n\n```python\ndef mqd_fake(event):\n    pass\n```\n## `mqd_gone`\n"
    assert documentation_problems(specs, {"a.md": good}) == [
        "a.md documents mqd_gone, which is not a hook"
    ]
    only_mentioned = {"t.py": "# mqd_fake\nx = 'mqd_fake'\n"}
    assert untested(specs, only_mentioned) == ["mqd_fake"]
    assert untested(specs, {"t.py": "def mqd_fake(event):\n    pass\n"}) == []
    assert untested(specs, {"t.py": "host.pm.hook.mqd_fake(event=e)\n"}) == []


# -- the docs' code -----------------------------------------------------------------------------


def own_python_blocks() -> list[tuple[str, int, str]]:
    return [
        (page, index, code)
        for page, text in plugin_pages().items()
        if page not in PLUGIN_PAGES
        for index, (lang, code) in enumerate(code_blocks(text))
        if lang == "python"
    ]


BLOCKS = own_python_blocks()


@pytest.mark.parametrize(
    ("page", "index", "code"), BLOCKS, ids=[f"{page}#{index}" for page, index, _ in BLOCKS]
)
def test_python_blocks_compile(page: str, index: int, code: str) -> None:
    compile(code, f"docs/plugins/{page} block {index}", "exec")


HOOK_BLOCKS = [b for b in BLOCKS if "@hookimpl" in b[2] and not FILE_MARKER.match(b[2])]


@pytest.mark.parametrize(
    ("page", "index", "code"),
    HOOK_BLOCKS,
    ids=[f"{page}#{index}" for page, index, _ in HOOK_BLOCKS],
)
def test_hook_examples_load_as_plugins(page: str, index: int, code: str) -> None:
    module = types.ModuleType(f"docs_plugins_{Path(page).stem}_{index}")
    exec(compile(code, f"docs/plugins/{page} block {index}", "exec"), module.__dict__)
    defined = {
        name for name, value in vars(module).items() if hasattr(value, "mqd_impl")
    }  # what @hookimpl marked
    assert defined, "the block has @hookimpl but defines no hook implementation"
    host = PluginHost(entry_points=False, extra=(module,))  # PluginError if invalid
    [info] = [i for i in host.describe() if i.name == module.__name__]
    assert set(info.hooks) == defined
    assert not info.problems
    if "mqd_register_relays" in defined:
        assert info.relays, "the example registers no relay"


def example_files() -> dict[str, str]:
    """The worked example of testing.md: path -> content, from blocks whose first line names a
    file (``# pyproject.toml``)."""
    files = {}
    for _, code in code_blocks((PLUGIN_DOCS / "testing.md").read_text(encoding="utf-8")):
        first = code.split("\n", 1)[0]
        if match := FILE_MARKER.fullmatch(first):
            files[match.group(1)] = code
    return files


def install_example(project: Path) -> dict[str, str]:
    """Write the example project and 'install' it (a .dist-info next to it, with its entry
    points, as pip leaves it); returns its files."""
    files = example_files()
    for name, content in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(content, encoding="utf-8")
    meta = tomllib.loads(files["pyproject.toml"])["project"]
    info = project / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n"
    )
    groups = meta.get("entry-points", {})
    (info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
            for group, points in groups.items()
        )
    )
    return files


def test_the_worked_example_is_complete() -> None:
    files = example_files()
    assert {"pyproject.toml", "mqd_webhook.py", "tests/test_webhook.py"} <= set(files)
    meta = tomllib.loads(files["pyproject.toml"])["project"]
    assert meta["entry-points"]["mqd"] == {"webhook": "mqd_webhook"}
    assert any(d.startswith("mqd") for d in meta["dependencies"])


def test_the_worked_example_passes_its_own_tests(tmp_path: Path, env: dict[str, str]) -> None:
    project = tmp_path / "mqd-webhook"
    project.mkdir()
    files = install_example(project)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = sum(
        len(re.findall(r"^(?:async )?def test_", content, re.MULTILINE))
        for name, content in files.items()
        if name.startswith("tests/")
    )
    assert f"{expected} passed" in proc.stdout, proc.stdout


def test_the_worked_example_is_lint_clean(tmp_path: Path) -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    install_example(tmp_path)
    options = ["--isolated", "--line-length", "100"]
    checks = [
        [ruff, "check", *options, "--select", "E,F,W,I,B,UP,SIM,RUF", "."],
        [ruff, "format", *options, "--check", "."],
    ]
    for command in checks:
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the pages ----------------------------------------------------------------------------------


def test_the_index_lists_every_page() -> None:
    index = (PLUGIN_DOCS / "README.md").read_text(encoding="utf-8")
    pages = {p.name for p in PLUGIN_DOCS.glob("*.md")} | PLUGIN_PAGES
    missing = sorted(name for name in pages - {"README.md"} if f"]({name})" not in index)
    assert not missing, f"docs/plugins/README.md does not link to {missing}"
