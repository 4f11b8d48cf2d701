"""The relay's config keys: defaults, checks at start-up, errors naming the key, and the docs."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from mqd import ConfigError, Options, PluginHost
from ses_support import MakeRelay

from mqd_ses import SESRelay

DOCS = Path(__file__).resolve().parents[3] / "docs" / "plugins" / "ses.md"


def config_error(make_relay: MakeRelay, **keys: Any) -> ConfigError:
    endpoint_url = keys.pop("endpoint_url", None)
    with pytest.raises(ConfigError) as caught:
        make_relay(endpoint_url, **keys)
    return caught.value


def test_the_plugin_registers_ses_through_its_entry_point() -> None:
    host = PluginHost()
    assert host.relay_classes()["ses"] is SESRelay
    [info] = [info for info in host.describe() if info.name == "ses"]
    assert info.error is None
    assert info.version == "0.1.0"


def test_defaults(make_relay: MakeRelay) -> None:
    s = make_relay(None, api_attempts=2).settings
    assert (s.region, s.profile, s.endpoint_url, s.configuration_set, s.tags) == (
        "us-east-1",
        None,
        None,
        None,
        (),
    )
    assert (s.max_connections, s.connect_timeout, s.read_timeout, s.api_attempts) == (
        10,
        10.0,
        60.0,
        2,
    )


def test_an_unknown_key_is_refused_with_a_suggestion(make_relay: MakeRelay) -> None:
    error = config_error(make_relay, regoin="eu-west-1")
    assert error.key == "relays.test.regoin"
    assert "did you mean 'region'" in str(error)


def test_the_region_is_required_when_nothing_provides_one(
    make_relay: MakeRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    error = config_error(make_relay)
    assert error.key == "relays.test.region"
    assert "is required" in str(error)
    assert "AWS_DEFAULT_REGION" in str(error)
    misspelled = config_error(make_relay, regoin="eu-west-1")
    assert misspelled.key == "relays.test.region"
    assert "is 'regoin' a misspelling of it?" in str(misspelled)


def test_the_region_comes_from_the_profile_then_aws_region(
    make_relay: MakeRelay, monkeypatch: pytest.MonkeyPatch, aws_env: Path
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    aws_env.parent.mkdir(parents=True)
    aws_env.write_text("[profile mailer]\nregion = eu-central-1\n")
    assert make_relay(None, profile="mailer").settings.region == "eu-central-1"
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert make_relay(None).settings.region == "ap-south-1"
    assert make_relay(None, region="sa-east-1").settings.region == "sa-east-1"


def test_a_missing_profile_is_refused_even_with_a_region(
    make_relay: MakeRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = config_error(make_relay, profile="nope", region="eu-west-1")
    assert error.key == "relays.test.profile"
    monkeypatch.setenv("AWS_PROFILE", "from-env")
    error = config_error(make_relay)
    assert "no AWS profile named 'from-env'" in str(error)


def test_a_missing_profile_is_refused(
    make_relay: MakeRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    error = config_error(make_relay, profile="nope")
    assert error.key == "relays.test.profile"
    assert "no AWS profile named 'nope'" in str(error)


BAD_VALUES = {
    "region": ("EU West", "relays.test.region", "not an AWS region"),
    "endpoint_url": ("email.amazonaws.com", "relays.test.endpoint_url", "not an http(s) URL"),
    "configuration_set": ("has space", "relays.test.configuration_set", "1 to 64"),
    "max_connections": (0, "relays.test.max_connections", "at least 1"),
    "api_attempts": (0, "relays.test.api_attempts", "at least 1"),
    "connect_timeout": ("0s", "relays.test.connect_timeout", "longer than 0s"),
    "read_timeout": ("soon", "relays.test.read_timeout", "expected a duration"),
    "max_message_size": (0, "relays.test.max_message_size", "at least 1 byte"),
    "tags": ("app=shop", "relays.test.tags", "expected a table"),
}


@pytest.mark.parametrize(
    ("key", "value", "where", "text"), [(k, *v) for k, v in BAD_VALUES.items()]
)
def test_bad_values_name_their_key(
    make_relay: MakeRelay, key: str, value: object, where: str, text: str
) -> None:
    error = config_error(make_relay, **{key: value})
    assert error.key == where
    assert text in str(error)


@pytest.mark.parametrize(
    ("tags", "where", "text"),
    [
        ({"bad name": "x"}, "relays.test.tags.bad name", "not a valid SES tag name"),
        ({"app": "a b"}, "relays.test.tags.app", "not a valid SES tag value"),
        ({"app": 3}, "relays.test.tags.app", "not a valid SES tag value"),
        ({"mqd_id": "x"}, "relays.test.tags.mqd_id", "reserved"),
    ],
)
def test_bad_tags_are_refused(
    make_relay: MakeRelay, tags: dict[str, object], where: str, text: str
) -> None:
    error = config_error(make_relay, tags=tags)
    assert error.key == where
    assert text in str(error)


def test_plain_http_to_another_host_warns(
    make_relay: MakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mqd.relay.ses"):
        make_relay("http://127.0.0.1:9")
        assert caplog.records == []
        make_relay("http://ses-proxy.internal:8080")
    [record] = caplog.records
    assert "unencrypted" in record.getMessage()


def test_a_size_limit_above_ses_warns(
    make_relay: MakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mqd.relay.ses"):
        relay = make_relay(None, max_message_size="50MiB")
    assert relay.settings.max_message_size == 50 * 1024 * 1024
    assert any("SES itself refuses" in r.getMessage() for r in caplog.records)


# -- the docs -----------------------------------------------------------------------------------

EVERY_KEY: dict[str, Any] = {
    "region": "eu-west-1",
    "profile": None,
    "endpoint_url": "https://email.eu-west-1.amazonaws.com",
    "configuration_set": "tx",
    "tags": {"app": "shop"},
    "max_connections": 5,
    "connect_timeout": "5s",
    "read_timeout": "30s",
    "api_attempts": 1,
    "max_message_size": "10MiB",
    "webhook_topics": ["arn:aws:sns:eu-west-1:123456789012:ses-events"],
    "webhook_certificate_urls": ["https://sns-proxy.internal.example/certs/"],
    "webhook_max_age": "30m",
}


def keys_read() -> set[str]:
    """The keys ``from_options`` asks for (read from a table that sets all it knows)."""
    options = Options(
        {k: v for k, v in EVERY_KEY.items() if v is not None}, section="relays.ses", path=None
    )
    SESRelay.from_options("ses", options)
    options.finish()  # nothing in EVERY_KEY is unknown
    return set(options._known)


def test_every_key_is_documented_in_the_plugin_docs() -> None:
    text = DOCS.read_text(encoding="utf-8")
    section = text.split('### `plugin = "ses"`', 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {re.match(r"\| `([^`]+)`", row).group(1) for row in rows}  # type: ignore[union-attr]
    read = keys_read()
    assert read == set(EVERY_KEY)  # the test's own list is complete
    assert read == documented, f"undocumented: {read - documented}, stale: {documented - read}"


def test_the_docs_state_each_default_the_code_uses(make_relay: MakeRelay) -> None:
    text = DOCS.read_text(encoding="utf-8")
    s = make_relay(None, api_attempts=2).settings
    for row in (
        f"| `max_connections` | integer ≥ 1 | `{s.max_connections}` |",
        f"| `api_attempts` | integer ≥ 1 | `{s.api_attempts}` |",
        '| `connect_timeout` | duration | `"10s"` |',
        '| `read_timeout` | duration | `"1m"` |',
        '| `max_message_size` | size | `"40MiB"` |',
    ):
        assert row in text
    assert (s.connect_timeout, s.read_timeout, s.max_message_size) == (10, 60, 40 * 1024**2)
