"""Unit tests for mqd.intake.policy: the sender allow-list (mqd is never an open relay)."""

from __future__ import annotations

import pytest

from mqd.config.load import parse_config
from mqd.intake.policy import mqd_check_policy, sender_allowed
from mqd.message.envelope import ParsedMessage


@pytest.mark.parametrize(
    ("sender", "patterns", "allowed"),
    [
        # exact addresses
        ("app@example.com", ["app@example.com"], True),
        ("app@example.com", ["other@example.com"], False),
        ("app@example.com", ["app@example.org"], False),
        ("app@example.com", [], False),
        ("app@example.com", ["other@example.com", "app@example.com"], True),
        # case-insensitive
        ("APP@EXAMPLE.COM", ["app@example.com"], True),
        ("app@Example.Com", ["App@example.com"], True),
        ("app@example.com", ["APP@EXAMPLE.COM"], True),
        ("straße@example.com", ["STRASSE@example.com"], True),  # casefold, not lower
        # trailing dot on the sender's domain
        ("app@example.com.", ["app@example.com"], True),
        ("app@example.com.", ["*@example.com"], True),
        # *@domain
        ("anyone@example.com", ["*@example.com"], True),
        ("Anyone@EXAMPLE.com", ["*@example.com"], True),
        ("anyone@example.org", ["*@example.com"], False),
        # *@domain does not match subdomains, nor lookalike domains
        ("app@sub.example.com", ["*@example.com"], False),
        ("app@sub.example.com", ["app@example.com"], False),
        ("app@evil-example.com", ["*@example.com"], False),
        ("app@example.com.evil.test", ["*@example.com"], False),
        ("app@example.co", ["*@example.com"], False),
        ("app@xample.com", ["*@example.com"], False),
        # a subdomain pattern does not match the parent domain
        ("app@example.com", ["*@mail.example.com"], False),
        # no partial local-part wildcards
        ("app@example.com", ["a*@example.com"], False),
        ("app@example.com", ["ap@example.com"], False),
        ("app@example.com", ["app2@example.com"], False),
        # the sender must be an address
        ("", ["*@example.com"], False),
        ("example.com", ["*@example.com"], False),
        ("@example.com", ["*@example.com"], False),
        ("*@example.com", ["app@example.com"], False),
        # the local part is compared whole, including "@" in a quoted local part
        ('"a@b"@example.com', ["*@example.com"], True),
        ('"a@b"@example.com', ["b@example.com"], False),
    ],
)
def test_sender_allowed(sender, patterns, allowed):
    assert sender_allowed(sender, patterns) is allowed


def test_sender_allowed_accepts_any_iterable():
    assert sender_allowed("app@example.com", iter(["x@example.com", "*@example.com"]))
    assert sender_allowed("app@example.com", ("app@example.com",))


def test_pattern_with_trailing_dot_compares_without_it():
    # "Domains compare case-insensitively and without a trailing dot" holds for both sides.
    assert sender_allowed("app@example.com", ["app@Example.com."])
    assert sender_allowed("app@example.com", ["*@example.com."])


# -- the mqd_check_policy hook ---------------------------------------------------------------------


def make_config(tmp_path, *, spool_senders=None, relay_senders=None, plugin="smtp"):
    spool = {"path": str(tmp_path / "spool")}
    if spool_senders is not None:
        spool["allowed_senders"] = spool_senders
    relay = {"plugin": plugin, "host": "smtp.example.com"}
    if relay_senders is not None:
        relay["allowed_senders"] = relay_senders
    return parse_config(
        {"queue": {"dir": str(tmp_path / "queue")}, "spool": [spool], "relays": {"main": relay}},
        None,
    )


def message(sender: str) -> ParsedMessage:
    return ParsedMessage(sender=sender, recipients=("rcpt@example.net",))


def check(config, sender: str) -> str | None:
    return mqd_check_policy(
        message=message(sender), spool=config.spools[0], relay_name="main", config=config
    )


def test_policy_spool_list_only(tmp_path):
    config = make_config(tmp_path, spool_senders=["app@example.com", "*@example.org"])
    assert check(config, "app@example.com") is None
    assert check(config, "APP@example.COM.") is None
    assert check(config, "news@example.org") is None
    reason = check(config, "intruder@example.com")
    assert reason is not None
    assert "intruder@example.com" in reason
    assert str(config.spools[0].path) in reason  # names the list that refused it
    assert check(config, "app@sub.example.org") is not None


def test_policy_relay_list_only(tmp_path):
    config = make_config(tmp_path, relay_senders=["*@example.com"])
    assert check(config, "anyone@example.com") is None
    reason = check(config, "anyone@example.org")
    assert reason is not None
    assert "anyone@example.org" in reason
    assert "'main'" in reason


def test_policy_spool_and_relay_lists_both_apply(tmp_path):
    config = make_config(
        tmp_path,
        spool_senders=["app@example.com", "news@example.org"],
        relay_senders=["*@example.com"],
    )
    assert check(config, "app@example.com") is None
    # allowed by the spool, refused by the relay
    by_relay = check(config, "news@example.org")
    assert by_relay is not None and "relay 'main'" in by_relay
    # allowed by the relay, refused by the spool
    by_spool = check(config, "other@example.com")
    assert by_spool is not None and "spool" in by_spool
    # refused by both
    assert check(config, "x@elsewhere.test") is not None


def test_policy_without_any_list_allows(tmp_path):
    # Only a local relay can have no list at all (build_relays refuses a network relay without
    # one); the hook itself then has nothing to check.
    config = make_config(tmp_path, plugin="outbox")
    assert check(config, "anyone@anywhere.test") is None


def test_policy_refuses_null_sender(tmp_path):
    config = make_config(tmp_path, spool_senders=["*@example.com"])
    assert check(config, "") is not None


def test_policy_through_the_plugin_host(tmp_path, host):
    config = make_config(tmp_path, spool_senders=["app@example.com"], relay_senders=["*@x.test"])
    spool = config.spools[0]
    assert (
        host.check_policy(message("app@example.com"), spool, "main", config) is not None
    )  # refused by the relay list
    config = make_config(tmp_path, spool_senders=["app@example.com"])
    assert host.check_policy(message("app@example.com"), spool, "main", config) is None
    refusal = host.check_policy(message("bad@example.com"), spool, "main", config)
    assert refusal is not None and "bad@example.com" in refusal
