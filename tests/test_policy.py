"""Unit tests for mqd.intake.policy: the sender allow-list (mqd is never an open relay)."""

from __future__ import annotations

import pytest
from corehelpers import make_message

from mqd.config.load import parse_config
from mqd.intake.policy import mqd_check_policy, sender_allowed
from mqd.message.envelope import ParsedMessage, parse_message
from mqd.plugins.host import PluginHost
from mqd.relays.memory import MemoryRelay
from mqd.testing import Harness


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
        ("Jürgen@example.com", ["jürgen@example.com"], True),
        # ... in ASCII only: Unicode's case mapping makes look-alikes equal
        ("straße@example.com", ["STRASSE@example.com"], False),
        ("\u017fales@example.com", ["sales@example.com"], False),  # long s
        ("o\ufb03ce@example.com", ["office@example.com"], False),  # the ffi ligature
        ("app@\u212aiwi.example", ["*@kiwi.example"], False),  # the Kelvin sign
        ("JÜRGEN@example.com", ["jürgen@example.com"], False),
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


def make_config(
    tmp_path, *, spool_senders=None, relay_senders=None, plugin="smtp", check_from=None
):
    spool = {"path": str(tmp_path / "spool")}
    if spool_senders is not None:
        spool["allowed_senders"] = spool_senders
    if check_from is not None:
        spool["check_from"] = check_from
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


# -- the From header ------------------------------------------------------------------------------


def check_from(config, from_: str | None, sender: str = "app@example.com") -> str | None:
    headers = {} if from_ is None else {"from": from_}
    parsed = ParsedMessage(sender=sender, recipients=("rcpt@example.net",), headers=headers)
    return mqd_check_policy(
        message=parsed, spool=config.spools[0], relay_name="main", config=config
    )


@pytest.mark.parametrize(
    "from_",
    [
        "app@example.com",
        "Example Shop <app@example.com>",
        '"Doe, Jane" <APP@Example.COM>',
        "app@example.com.",  # a root dot names the same domain
        "news@example.org",  # another allowed address than the envelope's
        "app@example.com, news@example.org",  # several authors, all allowed
        "Authors: app@example.com, news@example.org;",
        '"evil@attacker.test" <app@example.com>',  # a display name is not an address
        "app@example.com (Example Shop)",
        f'"{"x" * 250}" <app@example.com>',
    ],
)
def test_an_allowed_from_passes(tmp_path, from_):
    config = make_config(tmp_path, spool_senders=["app@example.com", "*@example.org"])
    assert check_from(config, from_) is None


@pytest.mark.parametrize(
    ("from_", "named"),
    [
        ("ceo@bank.test", "ceo@bank.test"),
        ("Example Shop <visitor@gmail.test>", "visitor@gmail.test"),
        ("app@example.com, visitor@gmail.test", "visitor@gmail.test"),  # every address counts
        ("app@sub.example.com", "app@sub.example.com"),
        (f'"{"x" * 250}" <ceo@bank.test>', "ceo@bank.test"),  # long: read without the cache
    ],
)
def test_a_from_outside_the_spool_list_is_refused(tmp_path, from_, named):
    config = make_config(tmp_path, spool_senders=["app@example.com", "*@example.org"])
    reason = check_from(config, from_)
    assert reason is not None
    assert f"From address {named} is not allowed" in reason
    assert str(config.spools[0].path) in reason  # the list that refused it
    assert "Reply-To" in reason  # what to do instead
    assert "check_from = false" in reason  # how to turn the check off


def test_the_from_is_checked_against_every_relay_list_as_the_sender_is(tmp_path):
    config = make_config(
        tmp_path,
        spool_senders=["app@example.com", "news@example.org"],
        relay_senders=["*@example.com"],
    )
    assert check_from(config, "app@example.com") is None
    # allowed by the spool, refused by the relay
    reason = check_from(config, "news@example.org")
    assert reason is not None
    assert "From address news@example.org" in reason and "relay 'main'" in reason
    # only a relay list
    config = make_config(tmp_path, relay_senders=["*@example.com"])
    assert check_from(config, "anyone@example.com") is None
    reason = check_from(config, "anyone@example.org")
    assert reason is not None and "relay 'main'" in reason


@pytest.mark.parametrize(
    ("from_", "fragment"),
    [
        ("<app@example.com> <ceo@bank.test>", "cannot be parsed"),  # which one would be shown?
        ('app@example.com"', "cannot be parsed"),
        ("Example Shop <app@example.com.>", "cannot be parsed"),
        ("", "holds no address"),
        ('"Your Bank" :;', "holds no address"),  # a name and no address at all
    ],
)
def test_a_from_that_cannot_be_read_is_refused(tmp_path, from_, fragment):
    config = make_config(tmp_path, spool_senders=["app@example.com"])
    reason = check_from(config, from_)
    assert reason is not None
    assert fragment in reason
    assert "check_from = false" in reason


@pytest.mark.parametrize(
    ("sender_header", "refused"),
    [
        ("app@example.com", None),
        ("Example Shop <news@example.org>", None),
        ("ceo@bank.test", "Sender address ceo@bank.test is not allowed"),
        ("app@example.com, ceo@bank.test", "Sender address ceo@bank.test"),  # two fields
        ("<a@example.com> <ceo@bank.test>", "the Sender header cannot be parsed"),
    ],
)
def test_the_sender_header_is_checked_as_from_is(tmp_path, sender_header, refused):
    """Mail programs show the Sender header ("on behalf of"): an address in it is one a
    recipient reads as the message's, so the lists must allow it as they allow From."""
    config = make_config(tmp_path, spool_senders=["app@example.com", "*@example.org"])
    headers = {"from": "app@example.com", "sender": sender_header}
    parsed = ParsedMessage(sender="app@example.com", recipients=("r@example.net",), headers=headers)
    reason = mqd_check_policy(
        message=parsed, spool=config.spools[0], relay_name="main", config=config
    )
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason and "check_from = false" in reason
    off = make_config(tmp_path, spool_senders=["app@example.com"], check_from=False)
    assert (
        mqd_check_policy(message=parsed, spool=off.spools[0], relay_name="main", config=off) is None
    )


def test_the_envelope_sender_is_checked_first(tmp_path):
    config = make_config(tmp_path, spool_senders=["app@example.com"])
    reason = check_from(config, "ceo@bank.test", sender="intruder@example.com")
    assert reason is not None and reason.startswith("sender intruder@example.com is not allowed")


def test_without_a_from_header_the_envelope_alone_is_checked(tmp_path):
    config = make_config(tmp_path, spool_senders=["app@example.com"])
    assert check_from(config, None) is None
    assert check_from(config, None, sender="intruder@example.com") is not None


def test_check_from_false_checks_the_envelope_only(tmp_path):
    config = make_config(tmp_path, spool_senders=["app@example.com"], check_from=False)
    assert check_from(config, "Visitor <visitor@gmail.test>") is None
    assert check_from(config, "<a@x.test> <b@y.test>") is None  # not even read
    assert check_from(config, "visitor@gmail.test", sender="intruder@example.com") is not None


def test_without_any_list_any_from_passes(tmp_path):
    config = make_config(tmp_path, plugin="outbox")
    assert check_from(config, "anyone@anywhere.test", sender="x@anywhere.test") is None


def test_a_second_from_header_is_checked_too(tmp_path):
    # parse_message joins repeated From fields, so the second cannot slip past the check.
    data = (
        b"X-Sender: <app@example.com>\r\nX-Receiver: <rcpt@example.net>\r\n"
        b"From: app@example.com\r\nFrom: ceo@bank.test\r\nTo: rcpt@example.net\r\n\r\nhi\r\n"
    )
    config = make_config(tmp_path, spool_senders=["app@example.com"])
    reason = mqd_check_policy(
        message=parse_message(data), spool=config.spools[0], relay_name="main", config=config
    )
    assert reason is not None and "From address ceo@bank.test" in reason


async def test_a_spoofed_from_lands_in_failed_and_check_from_false_lets_it_through(
    mqd_harness: Harness,
) -> None:
    spool = {"path": mqd_harness.spool_dir, "relay": "mem", "allowed_senders": ["app@example.com"]}
    mqd_harness.configure({"mem": {"plugin": "memory"}}, spools=[spool])
    # The envelope is allowed; the From, which the recipient sees, is not.
    spoofed = make_message(
        sender="Your Bank <ceo@bank.test>", envelope=("app@example.com", ("alice@example.net",))
    )
    mqd_harness.drop(spoofed)
    await mqd_harness.run_once(host=PluginHost(entry_points=False))
    assert mqd_harness.relay("mem", MemoryRelay).sent == []
    [record] = mqd_harness.failed()
    assert record["stage"] == "policy"
    assert "From address ceo@bank.test is not allowed" in record["reason"]
    assert "check_from = false" in record["reason"]
    assert mqd_harness.queued() == []

    mqd_harness.configure({"mem": {"plugin": "memory"}}, spools=[{**spool, "check_from": False}])
    mqd_harness.drop(spoofed)
    await mqd_harness.run_once(host=PluginHost(entry_points=False))
    [envelope] = mqd_harness.relay("mem", MemoryRelay).sent
    assert envelope.sender == "app@example.com"
    assert envelope.recipients == ("alice@example.net",)
    assert b"From: Your Bank <ceo@bank.test>" in envelope.message
    assert len(mqd_harness.failed()) == 1  # only the first one
