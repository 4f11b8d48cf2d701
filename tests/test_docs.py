"""The documentation keeps up with the code: fails when something is undocumented.

Config keys are collected by parsing a config that uses every built-in relay plugin and reading
what each ``Options`` table asked for; commands and options by walking the click group; exit
codes from ``ExitCode``. Also: the README's quick start stays runnable as CI runs it, every
hookspec states its contract, and the docs' relative links resolve.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

import mqd.plugins.hookspecs
from mqd.cli.main import cli
from mqd.config.load import parse_config
from mqd.config.options import Options
from mqd.exitcodes import ExitCode
from mqd.intake.sources import build_sources
from mqd.plugins.host import PluginHost
from mqd.relays.build import build_relays

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: The least each built-in relay plugin needs to build. A new built-in relay plugin goes here,
#: and its keys into docs/configuration.md under a heading with `plugin = "<name>"`.
RELAY_SETTINGS: dict[str, dict[str, Any]] = {
    "smtp": {"host": "smtp.example.com"},
    "outbox": {"path": "outbox"},
    "memory": {},
}
RELAY_PREFIX = "relays."


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("|")]


def headings(text: str) -> list[tuple[int, str]]:
    """(level, title) of each Markdown heading outside fenced code blocks."""
    found = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"(#{1,6}) (.*)", line)):
            found.append((len(match.group(1)), match.group(2).strip()))
    return found


def section(text: str, heading_contains: str) -> str | None:
    """The text under the first heading containing ``heading_contains``, up to the next heading
    of the same or a higher level (subsections included); None without such a heading."""
    lines = text.splitlines()
    start = level = None
    fenced = False
    for index, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"(#{1,6}) ", line)
        if not match:
            continue
        if start is None:
            if heading_contains in line:
                start, level = index, len(match.group(1))
        elif level is not None and len(match.group(1)) <= level:
            return "\n".join(lines[start:index])
    return None if start is None else "\n".join(lines[start:])


# -- configuration ------------------------------------------------------------------------------


@pytest.fixture
def config_tables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, set[str]]:
    """Table name -> the keys mqd reads there. Relay tables are named ``relays.<plugin>``;
    every ``[[spool]]`` is ``spool``; ``""`` is the top level."""
    created: list[Options] = []
    original_init = Options.__init__

    def recording_init(self: Options, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(Options, "__init__", recording_init)
    host = PluginHost(entry_points=False)
    plugins = sorted(host.relay_classes())
    unknown = sorted(set(plugins) - set(RELAY_SETTINGS))
    assert not unknown, f"add a minimal config for relay plugins {unknown} to RELAY_SETTINGS"
    data = {
        "queue": {"dir": str(tmp_path / "queue"), "retry": {"initial": "1m"}},
        "spool": [
            {"path": str(tmp_path / f"spool-{name}"), "relay": name, "allowed_senders": []}
            for name in plugins
        ],
        "sendmail": {"spool": str(tmp_path / f"spool-{plugins[0]}"), "qualify_domain": "a.test"},
        "route": [{"senders": ["*@example.com"], "relay": plugins[0]}],
        "relays": {
            name: {"plugin": name, "allowed_senders": ["app@example.com"], **RELAY_SETTINGS[name]}
            for name in plugins
        },
    }
    data["smtpd"] = [
        {"listen": ["127.0.0.1:0"], "relay": plugins[0], "allowed_senders": ["*@example.com"]}
    ]
    monkeypatch.setenv("MQD_TEST_SUBMIT_TOKEN", "a-submit-token")
    data["http"] = {"enabled": True}
    data["submit"] = [
        {"token_env": "MQD_TEST_SUBMIT_TOKEN", "relay": plugins[0], "idempotency_for": "24h"}
    ]
    data["mailbox"] = [{"url": "amqp://guest@127.0.0.1/", "queue": "mail", "relay": plugins[0]}]
    config = parse_config(data, tmp_path / "mqd.toml")
    build_relays(config, host)
    build_sources(config, host, handover=None)  # type: ignore[arg-type]  # (read, never run)

    tables: dict[str, set[str]] = {}
    for options in created:
        name = re.sub(r"\[\d+\]$", "", options.section)
        if name == "relays":  # the container: its keys are relay names, not settings
            continue
        tables.setdefault(name, set()).update(options._known)
    assert {RELAY_PREFIX + name for name in plugins} <= set(tables)
    return tables


def test_config_fixture_sees_the_core_tables(config_tables: dict[str, set[str]]) -> None:
    assert {"", "queue", "queue.retry", "spool", "sendmail"} <= set(config_tables)
    assert {"password", "password_file", "password_env"} <= config_tables["relays.smtp"]


def test_every_config_table_is_documented(config_tables: dict[str, set[str]]) -> None:
    text = read("configuration.md")
    missing = []
    for table in config_tables[""]:
        # [queue], [[spool]], [relays.<name>]
        if not re.search(rf"`\[\[?{re.escape(table)}(\]|\.)", text):
            missing.append(table)
    for name, keys in config_tables.items():
        for key in keys:
            if f"{name}.{key}" in config_tables and not section(text, f"`[{name}.{key}]`"):
                missing.append(f"{name}.{key}")
    assert not missing, f"tables without a heading in docs/configuration.md: {missing}"


def test_every_config_key_is_documented(config_tables: dict[str, set[str]]) -> None:
    """Each key must appear in backticks in a table row under its table's heading."""
    text = read("configuration.md")
    relay_tables = {n: k for n, k in config_tables.items() if n.startswith(RELAY_PREFIX)}
    common = set.intersection(*relay_tables.values())
    expected: dict[str, set[str]] = {"`[relays.<name>]`": common}
    for name, keys in relay_tables.items():
        expected[f'`plugin = "{name.removeprefix(RELAY_PREFIX)}"`'] = keys - common
    for name, keys in config_tables.items():
        if name and not name.startswith(RELAY_PREFIX):
            arrays = ("spool", "route", "smtpd", "submit", "mailbox")
            heading = f"`[[{name}]]`" if name in arrays else f"`[{name}]`"
            subtables = {k for k in keys if f"{name}.{k}" in config_tables}
            expected[heading] = keys - subtables

    problems = []
    for heading, keys in sorted(expected.items()):
        body = section(text, heading)
        if body is None:
            problems.append(f"no heading with {heading}")
            continue
        rows = "\n".join(table_rows(body))
        problems += [f"{heading}: `{k}`" for k in sorted(keys) if f"`{k}`" not in rows]
    assert not problems, f"undocumented in docs/configuration.md: {problems}"


# -- command line -------------------------------------------------------------------------------


def walk(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, (*path, name))


COMMANDS = list(walk(cli))
COMMAND_IDS = ["mqd " + " ".join(path) if path else "mqd" for path, _ in COMMANDS]


def cli_section(path: tuple[str, ...]) -> str | None:
    text = read("cli.md")
    if not path:
        return section(text, "## Global options")
    title = "mqd " + " ".join(path)
    for level, heading in headings(text):
        if level == 2 and heading == title:
            return section(text, f"## {title}")
    return None


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=COMMAND_IDS)
def test_every_command_has_a_heading(path: tuple[str, ...], command: click.Command) -> None:
    if not path:
        assert cli_section(path) is not None, "docs/cli.md needs a '## Global options' section"
        return
    title = "mqd " + " ".join(path)
    titles = [h for level, h in headings(read("cli.md")) if level == 2]
    if isinstance(command, click.Group) and not any(
        isinstance(p, click.Option) for p in command.params
    ):
        assert any(t == title or t.startswith(title + " ") for t in titles), title
    else:
        assert title in titles, f"docs/cli.md needs a heading '## {title}'"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=COMMAND_IDS)
def test_every_option_is_documented(path: tuple[str, ...], command: click.Command) -> None:
    names = [
        name
        for param in command.params
        if isinstance(param, click.Option)
        for name in (*param.opts, *param.secondary_opts)
    ]
    if not names:
        return
    body = cli_section(path)
    where = "## Global options" if not path else "## mqd " + " ".join(path)
    assert body is not None, f"docs/cli.md needs a section '{where}'"
    missing = [n for n in names if not re.search(rf"`{re.escape(n)}[ `=,]", body)]
    assert not missing, f"options missing under '{where}' in docs/cli.md: {missing}"


def test_every_exit_code_is_documented() -> None:
    rows = table_rows(read("cli.md"))
    missing = [
        f"{name} ({value})"
        for name, value in ExitCode.items()
        if not any(f"`{name}`" in row and re.search(rf"\|\s*{value}\s*\|", row) for row in rows)
    ]
    assert not missing, f"exit codes missing from the table in docs/cli.md: {missing}"


# -- README, CI, hooks, links -------------------------------------------------------------------


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    body = section(readme, "## Quick start")
    assert body is not None, "README.md needs a '## Quick start' section"
    block = re.search(r"^```[^\n]*\n(.*?)^```", body, re.DOTALL | re.MULTILINE)
    assert block is not None, "the quick start needs a fenced code block"
    lines = (line.strip() for line in block.group(1).splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_readme_quick_start_has_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands


def test_readme_test_command_is_what_ci_runs() -> None:
    tests = [command for command in quick_start_commands() if "pytest" in command]
    assert len(tests) == 1, "the quick start needs exactly one command that runs pytest"
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests[0] in ci_lines, f".ci/run must run the README's test command verbatim: {tests[0]}"


def test_every_hookspec_has_a_docstring() -> None:
    specs = [
        (name, function)
        for name, function in inspect.getmembers(mqd.plugins.hookspecs, inspect.isfunction)
        if hasattr(function, "mqd_spec")
    ]
    assert specs, "no hookspecs found in mqd.plugins.hookspecs"
    undocumented = [name for name, function in specs if not (inspect.getdoc(function) or "")]
    assert not undocumented, f"hookspecs without a docstring: {undocumented}"


def slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md":
            anchors = {slug(title) for _, title in headings(linked.read_text(encoding="utf-8"))}
            if anchor not in anchors:
                broken.append(target)
    assert not broken, f"broken links in {path.relative_to(ROOT)}: {broken}"


def test_docs_index_lists_every_page() -> None:
    index = read("README.md")
    pages = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "README.md"]
    missing = [name for name in pages if f"]({name})" not in index]
    assert not missing, f"docs/README.md does not link to {missing}"
