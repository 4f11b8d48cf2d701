"""Config keys, the API key's three sources, the entry point, and docs that cover every key."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeRelay
from mqd import ConfigError, Options, PluginHost
from mqd.testing import make_envelope, relay_from_table
from sendgrid_fake import API_KEY, FakeSendGrid

import mqd_sendgrid
from mqd_sendgrid import SendGridRelay

DOC = Path(__file__).resolve().parents[3] / "docs" / "plugins" / "sendgrid.md"


def build(table: dict[str, Any]) -> SendGridRelay:
    relay = relay_from_table("sendgrid", table)
    assert isinstance(relay, SendGridRelay)
    return relay


# -- the API key ----------------------------------------------------------------------------------


async def test_api_key_from_a_file(fake: FakeSendGrid, make_relay: MakeRelay) -> None:
    result = await make_relay().deliver(make_envelope())
    assert fake.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"
    assert result.replies["rcpt@example.net"].code == 250


async def test_api_key_from_the_environment(
    fake: FakeSendGrid, make_relay: MakeRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQD_TEST_SENDGRID_KEY", API_KEY)
    relay = make_relay(api_key_file=None, api_key_env="MQD_TEST_SENDGRID_KEY")
    result = await relay.deliver(make_envelope())
    assert fake.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"
    assert result.replies["rcpt@example.net"].code == 250


async def test_api_key_inline(fake: FakeSendGrid, make_relay: MakeRelay) -> None:
    relay = make_relay(api_key_file=None, api_key=API_KEY)
    await relay.deliver(make_envelope())
    assert fake.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"


def test_the_api_key_never_shows(relay_table: dict[str, Any]) -> None:
    relay = build(relay_table)
    assert API_KEY not in repr(relay.settings)
    assert API_KEY not in relay.describe()


def test_missing_api_key_is_a_config_error(fake: FakeSendGrid) -> None:
    with pytest.raises(ConfigError) as caught:
        build({"base_url": fake.url})
    assert caught.value.key == "relays.test.api_key_file"
    assert "api_key_env" in str(caught.value)


def test_unset_environment_variable_is_a_config_error(fake: FakeSendGrid) -> None:
    with pytest.raises(ConfigError, match="MQD_TEST_NOT_SET"):
        build({"base_url": fake.url, "api_key_env": "MQD_TEST_NOT_SET"})


# -- other keys -----------------------------------------------------------------------------------


def test_unknown_key_is_a_config_error_with_a_suggestion(relay_table: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        build({**relay_table, "sandbox": True})
    assert caught.value.key == "relays.test.sandbox"
    assert "did you mean 'sandbox_mode'" in str(caught.value)


def test_defaults(key_file: Path) -> None:
    relay = build({"api_key_file": str(key_file)})
    s = relay.settings
    assert (s.base_url, s.timeout, s.max_connections) == ("https://api.sendgrid.com", 30.0, 10)
    assert (s.sandbox_mode, s.categories, s.ip_pool) == (False, (), None)
    assert (s.click_tracking, s.open_tracking) == (None, None)
    assert relay.describe() == "sendgrid api.sendgrid.com"
    assert relay.network is True


def test_eu_base_url_and_trailing_slash(key_file: Path) -> None:
    relay = build({"api_key_file": str(key_file), "base_url": "https://api.eu.sendgrid.com/"})
    assert relay.settings.base_url == "https://api.eu.sendgrid.com"


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("base_url", "http://api.sendgrid.com", "clear text"),
        ("base_url", "ftp://api.sendgrid.com", "not an http(s) URL"),
        ("base_url", "https://api.sendgrid.com/?x=1", "query"),
        ("timeout", "0s", "more than 0s"),
        ("timeout", "soon", "duration"),
        ("max_connections", 0, "at least 1"),
        ("sandbox_mode", "yes", "true or false"),
        ("categories", [f"c{i}" for i in range(11)], "at most 10"),
        ("categories", ["a", "a"], "twice"),
        ("categories", ["caf\u00e9"], "ASCII"),
        ("ip_pool", "", "2 to 64 characters"),
        ("ip_pool", "p" * 65, "2 to 64 characters"),
    ],
)
def test_bad_values_are_config_errors(key_file: Path, key: str, value: object, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build({"api_key_file": str(key_file), key: value})
    assert caught.value.key == f"relays.test.{key}"
    assert says in str(caught.value)


def test_plain_http_is_accepted_for_this_machine(key_file: Path) -> None:
    for url in ("http://127.0.0.1:8025", "http://localhost:8025", "http://[::1]:8025"):
        assert build({"api_key_file": str(key_file), "base_url": url}).settings.base_url == url


# -- packaging ------------------------------------------------------------------------------------


def test_registered_through_the_mqd_entry_point_group() -> None:
    points = importlib.metadata.entry_points(group="mqd")
    [point] = [p for p in points if p.name == "sendgrid"]
    assert point.value == "mqd_sendgrid"
    assert PluginHost().relay_classes()["sendgrid"] is SendGridRelay


def test_version_matches_the_distribution() -> None:
    assert mqd_sendgrid.__version__ == importlib.metadata.version("mqd-sendgrid")


# -- documentation --------------------------------------------------------------------------------


def keys_read(table: dict[str, Any]) -> set[str]:
    options = Options(table, section="relays.x", path=None)
    SendGridRelay.from_options("x", options)
    return set(options._known)


def test_every_config_key_is_documented(key_file: Path) -> None:
    keys = keys_read({"api_key_file": str(key_file)})
    assert {"api_key", "api_key_file", "api_key_env", "base_url", "timeout"} <= keys
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## Configuration keys", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    documented = {key for row in rows for key in re.findall(r"^\|\s*`([a-z_]+)`", row)}
    missing = sorted(keys - documented)
    assert not missing, f"keys without a table row in {DOC.name}: {missing}"
    stale = sorted(documented - keys - {"plugin", "allowed_senders"})
    assert not stale, f"{DOC.name} documents keys the relay does not read: {stale}"
