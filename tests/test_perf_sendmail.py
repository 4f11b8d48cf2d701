"""``mqd sendmail`` reads its three config keys without mqd.config.load (for speed): it must find
the
same spool and qualify domain as the full loader, and show the full loader's error otherwise."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

import mqd.producer.sendmail as sendmail
from mqd.config.load import load_config, locate_config
from mqd.errors import ConfigError
from mqd.producer.tomlsubset import read_subset

BASE = """
[queue]
dir = "{tmp}/queue"
[relays.sink]
plugin = "smtp"
host = "127.0.0.1"
port = 25
security = "none"
"""


def expected(path: Path | None) -> tuple[str, str | None]:
    config = load_config(locate_config(path))
    return os.path.abspath(config.inject_spool), config.sendmail.qualify_domain


def light(path: str | None) -> tuple[str, str | None]:
    spool, domain = sendmail._light_settings(path)
    return os.path.abspath(spool), domain


@pytest.mark.parametrize(
    "extra",
    [
        '[[spool]]\npath = "{tmp}/spool"',
        '[[spool]]\npath = "relative/spool"',
        '[[spool]]\npath = "~/mqd-spool"',
        '[[spool]]\npath = "a"\n[[spool]]\npath = "b"\n[sendmail]\nspool = "b"\n',
        '[[spool]]\npath = "{tmp}/a"\n[sendmail]\nqualify_domain = "example.com"',
        '[sendmail]\nspool = "./s"\nqualify_domain = "host.example"\n[[spool]]\npath = "s"',
        '[spool]\npath = "one"',
    ],
)
def test_the_light_reader_finds_what_the_full_loader_finds(
    write_config: Callable[..., Path], tmp_path: Path, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config((BASE + extra).format(tmp=tmp_path))
    assert light(str(path)) == expected(path)
    monkeypatch.chdir(tmp_path)  # a relative --config: paths are relative to its directory
    assert light(path.name) == expected(Path(path.name))


def test_mqd_config_in_the_environment(
    write_config: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config((BASE + '[[spool]]\npath = "{tmp}/env-spool"').format(tmp=tmp_path))
    monkeypatch.setenv("MQD_CONFIG", str(path))
    assert light(None) == expected(None) == (str(tmp_path / "env-spool"), None)


def test_the_default_config_location_is_the_platform_one() -> None:
    from mqd.config.paths import default_paths

    assert sendmail._default_config() == str(default_paths().config_file)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[[spool]]\npath = "s"\n[sendmail]\nqualify_domain = "a@b"', "qualify_domain"),
        ('[[spool]]\npath = "s"\n[sendmail]\nqualify_domian = "b.org"', "qualify_domian"),
        ('[[spool]]\npath = "s"\n[sendmail]\nspool = "elsewhere"', "sendmail.spool"),
        ("[[spool]]\npath = 3", "path"),
        ("", "no spool is configured"),
        ('[[spool]]\npath = "s"\n[sendmail', "not valid TOML"),
    ],
)
def test_a_problem_with_its_keys_gets_the_full_loaders_error(
    write_config: Callable[..., Path], tmp_path: Path, extra: str, message: str
) -> None:
    path = write_config((BASE + extra).format(tmp=tmp_path))
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    with pytest.raises(sendmail._FullConfigNeeded):
        sendmail._light_settings(str(path))
    with pytest.raises(ConfigError, match=message):
        sendmail.settings(str(path))


def test_a_missing_config_is_the_full_loaders_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        sendmail.settings(str(tmp_path / "nope.toml"))


def test_a_problem_elsewhere_is_left_to_the_daemon(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """The price of reading lightly: a key sendmail does not use is not checked here (the
    daemon refuses to start on it, and ``mqd config check`` names it); the message is queued."""
    path = write_config(
        (BASE + '[[spool]]\npath = "{tmp}/s"\n[queue.retry]\ninital = "1m"').format(tmp=tmp_path)
    )
    with pytest.raises(ConfigError, match="inital"):
        load_config(path)
    assert sendmail.settings(str(path)) == (str(tmp_path / "s"), None)


def test_its_exit_codes_are_mqds() -> None:
    from mqd.exitcodes import ExitCode

    for name, value in vars(sendmail.ExitCode).items():
        if name.isupper():
            assert ExitCode[name] == value


# -- the TOML subset reader against tomllib ------------------------------------------------------


def projection(data: dict[str, object]) -> dict[str, object]:
    """What read_subset promises of a document tomllib parsed: [sendmail] and [[spool]], with
    string values as they are and anything else as "not a string"."""

    def strings(table: object) -> dict[str, object]:
        assert isinstance(table, dict)
        return {k: v if isinstance(v, str) else "<other>" for k, v in table.items()}

    out: dict[str, object] = {}
    if "sendmail" in data:
        out["sendmail"] = strings(data["sendmail"])
    spools = data.get("spool")
    if isinstance(spools, list):
        out["spool"] = [strings(s) for s in spools]
    elif spools is not None:
        out["spool"] = strings(spools)
    return out


def subset(text: str) -> dict[str, object] | None:
    data = read_subset(text)
    if data is None:
        return None

    def strings(table: dict[str, object]) -> dict[str, object]:
        return {k: v if isinstance(v, str) else "<other>" for k, v in table.items()}

    spools = data.get("spool")
    if isinstance(spools, list):
        data["spool"] = [strings(s) for s in spools]
    elif isinstance(spools, dict):
        data["spool"] = strings(spools)
    if "sendmail" in data:
        data["sendmail"] = strings(data["sendmail"])
    return data


def toml_documents() -> list[str]:
    """Every TOML example in the docs and the repository's sample configs."""
    root = Path(__file__).parent.parent
    found = [p.read_text() for p in root.glob("contrib/**/*.toml")]
    for doc in [root / "README.md", *root.glob("docs/**/*.md")]:
        found += re.findall(r"```toml\n(.*?)```", doc.read_text(), re.DOTALL)
    return found


CASES = [
    "[sendmail]\nspool = \"/s\" # a comment\nqualify_domain = 'example.com'\n",
    '[[spool]]\npath = "a"\nallowed_senders = [\n  "x@example.com", # who\n  "]",\n]\n'
    '[[spool]]\npath = "b"\n',
    '[relays.x]\nhost = "[sendmail]"\nopts = { a = "}", b = [1, 2] }\n[[spool]]\npath = "p"\n',
    '[spool]\npath = "one"\n',
    '[ sendmail ]\nspool = "s"\n[[ spool ]]\npath = "s"\n',
    '[sendmail]\nspool = "a\\"b"\n',  # an escape: tomllib's job
    '[sendmail]\nspool = """x"""\n',
    "[[spool]]\npath = 5\n",
    "sendmail.spool = 'x'\n",
    '[sendmail]\nspool = "a"\nspool = "b"\n',  # invalid: tomllib refuses it
    '[sendmail]\nqualify_domain = "x"\nother = true\n',
    '[[spool]]\npath = "a"\n[spool.sub]\nx = 1\n',
    '[queue]\ndir = "q"\nretry = { initial = "1s", max = "2s" }\n[[spool]]\npath = "p"\n',
    "[[spool]]\npath = 'C:\\mail\\spool'\n",
]


@pytest.mark.parametrize("text", CASES + toml_documents())
def test_the_subset_reader_reads_what_tomllib_reads_or_stands_aside(text: str) -> None:
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        parsed = None
    got = subset(text)
    if got is not None:
        assert parsed is not None, "the subset reader accepted what tomllib refuses"
        assert got == projection(parsed)


def test_the_subset_reader_takes_the_common_configs() -> None:
    assert read_subset(CASES[0]) == {"sendmail": {"spool": "/s", "qualify_domain": "example.com"}}
    assert subset(CASES[1]) == {
        "spool": [{"path": "a", "allowed_senders": "<other>"}, {"path": "b"}]
    }
    assert read_subset(CASES[2]) == {"spool": [{"path": "p"}]}
    assert read_subset(CASES[12]) is not None
