"""Unit tests for routing: the [[spool]] failover list, [[route]] tables, the relay quota and
circuit keys (mqd.config.load), route_for (mqd.intake.routing), the policy hook and the open-relay
checks
with routes (mqd.intake.policy, mqd.relays.build), and effective_config."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from mqd.config.effective import effective_config
from mqd.config.load import parse_config
from mqd.config.schema import CircuitConfig, Config, QuotaConfig, RouteConfig
from mqd.errors import ConfigError
from mqd.intake.policy import mqd_check_policy
from mqd.intake.routing import route_for
from mqd.message.envelope import ParsedMessage
from mqd.plugins.host import PluginHost
from mqd.relays.build import build_relays
from mqd.relays.smtp.relay import SMTPRelay

#: A network relay (it needs an allow-list on the way); never contacted by these tests.
NET: dict[str, Any] = {"plugin": "smtp", "host": "127.0.0.1", "security": "none"}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """The file errors name (parse_config reads a dict; the file need not exist)."""
    return tmp_path / "mqd.toml"


def outbox(tmp_path: Path, name: str, **keys: Any) -> dict[str, Any]:
    return {"plugin": "outbox", "path": str(tmp_path / f"outbox-{name}"), **keys}


def document(
    tmp_path: Path,
    *,
    relays: dict[str, dict[str, Any]] | None = None,
    spools: list[dict[str, Any]] | None = None,
    routes: Any = None,
) -> dict[str, Any]:
    """A config document: local relays a, b, c and one spool using a, unless told otherwise."""
    data: dict[str, Any] = {
        "queue": {"dir": str(tmp_path / "queue"), "bounce_sender": "mailer-daemon@mqd.test"},
        "relays": relays if relays is not None else {n: outbox(tmp_path, n) for n in "abc"},
        "spool": spools
        if spools is not None
        else [{"path": str(tmp_path / "spool"), "relay": "a"}],
    }
    if routes is not None:
        data["route"] = routes
    return data


@pytest.fixture
def parse(tmp_path, config_path):
    def run(**kwargs: Any) -> Config:
        return parse_config(document(tmp_path, **kwargs), config_path)

    return run


@pytest.fixture
def parse_error(parse, config_path):
    def run(**kwargs: Any) -> ConfigError:
        with pytest.raises(ConfigError) as info:
            parse(**kwargs)
        error = info.value
        assert error.path == config_path
        assert str(config_path) in str(error)
        assert f"key '{error.key}'" in str(error)
        return error

    return run


def spool(tmp_path: Path, relay: Any = None, name: str = "spool", **keys: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"path": str(tmp_path / name), **keys}
    if relay is not None:
        table["relay"] = relay
    return table


# -- [[spool]] relay: a name or a failover list ----------------------------------------------------


def test_spool_relay_as_a_string(parse, tmp_path):
    [s] = parse(spools=[spool(tmp_path, "b")]).spools
    assert s.relays == ("b",)
    assert s.relay == "b"


def test_spool_relay_as_a_failover_list(parse, tmp_path):
    [s] = parse(spools=[spool(tmp_path, ["c", "a", "b"])]).spools
    assert s.relays == ("c", "a", "b")
    assert s.relay == "c"  # the preferred one


def test_spool_relay_as_a_list_of_one(parse, tmp_path):
    [s] = parse(spools=[spool(tmp_path, ["b"])]).spools
    assert s.relays == ("b",)


def test_spool_without_relay_uses_the_only_relay(parse, tmp_path):
    config = parse(relays={"only": outbox(tmp_path, "only")}, spools=[spool(tmp_path)])
    assert config.spools[0].relays == ("only",)


def test_unknown_relay_in_a_failover_list(parse_error, tmp_path):
    error = parse_error(spools=[spool(tmp_path, ["a", "nope"])])
    assert error.key == "spool[0].relay"
    assert "'nope'" in error.message
    assert "configured: a, b, c" in error.message


def test_a_relay_twice_in_a_failover_list(parse_error, tmp_path):
    error = parse_error(spools=[spool(tmp_path, ["a", "b", "a"])])
    assert error.key == "spool[0].relay"
    assert "twice" in error.message
    assert "['a', 'b', 'a']" in error.message


def test_an_empty_failover_list(parse_error, tmp_path):
    error = parse_error(spools=[spool(tmp_path, [])])
    assert error.key == "spool[0].relay"
    assert "failover list" in error.message
    assert "got []" in error.message


@pytest.mark.parametrize("relay", [["a", 2], [1], [["a"]], 7, True, {"name": "a"}])
def test_a_relay_that_is_not_a_name_or_a_list_of_names(parse_error, tmp_path, relay):
    error = parse_error(spools=[spool(tmp_path, relay)])
    assert error.key == "spool[0].relay"
    assert "expected a relay name or a failover list" in error.message
    assert repr(relay) in error.message


def test_the_second_spool_is_named(parse_error, tmp_path):
    error = parse_error(
        spools=[spool(tmp_path, ["a", "b"]), spool(tmp_path, ["b", "x"], name="spool2")]
    )
    assert error.key == "spool[1].relay"
    assert "'x'" in error.message


# -- [[route]] -------------------------------------------------------------------------------------


def test_routes_are_parsed_in_order(parse):
    config = parse(
        routes=[
            {"senders": ["*@News.Example.com."], "relay": ["b", "a"]},
            {"senders": ["ceo@example.com", "*@example.org"], "relay": "c"},
        ]
    )
    assert config.routes == (
        RouteConfig(senders=("*@news.example.com",), relays=("b", "a")),
        RouteConfig(senders=("ceo@example.com", "*@example.org"), relays=("c",)),
    )


def test_no_routes(parse):
    assert parse().routes == ()


def test_a_single_route_table(tmp_path, config_path):
    # TOML [route] (not [[route]]) is one table: taken as one route.
    text = f"""
[queue]
dir = "{tmp_path / "queue"}"
[relays.a]
plugin = "outbox"
path = "{tmp_path / "out"}"
[[spool]]
path = "{tmp_path / "spool"}"
[route]
senders = ["*@example.com"]
relay = "a"
"""
    config = parse_config(tomllib.loads(text), config_path)
    assert config.routes == (RouteConfig(senders=("*@example.com",), relays=("a",)),)


@pytest.mark.parametrize("senders", [None, []])
def test_route_senders_are_required(parse_error, senders):
    route: dict[str, Any] = {"relay": "a"}
    if senders is not None:
        route["senders"] = senders
    error = parse_error(routes=[route])
    assert error.key == "route[0].senders"
    assert "required" in error.message


@pytest.mark.parametrize("pattern", ["*", "*@*", "a@*", "@example.com", "*.example.com"])
def test_route_senders_are_validated_like_allowed_senders(parse_error, pattern):
    error = parse_error(routes=[{"senders": ["ok@example.com", pattern], "relay": "a"}])
    assert error.key == "route[0].senders"
    assert repr(pattern) in error.message
    assert "open relay" in error.message


def test_route_senders_must_be_a_list(parse_error):
    error = parse_error(routes=[{"senders": "*@example.com", "relay": "a"}])
    assert error.key == "route[0].senders"
    assert "list of strings" in error.message


def test_route_relay_is_required(parse_error):
    error = parse_error(routes=[{"senders": ["*@example.com"]}])
    assert error.key == "route[0].relay"
    assert "required" in error.message
    assert "a, b, c" in error.message


@pytest.mark.parametrize(
    ("relay", "fragment"),
    [
        ("nope", "no relay named 'nope' (configured: a, b, c)"),
        (["a", "nope"], "no relay named 'nope'"),
        (["b", "b"], "twice"),
        ([], "failover list"),
        (["a", 3], "failover list"),
    ],
)
def test_bad_route_relay(parse_error, relay, fragment):
    error = parse_error(
        routes=[
            {"senders": ["*@example.com"], "relay": "a"},
            {"senders": ["*@example.org"], "relay": relay},
        ]
    )
    assert error.key == "route[1].relay"
    assert fragment in error.message


def test_unknown_key_in_a_route_table(parse_error):
    error = parse_error(routes=[{"senders": ["*@example.com"], "relays": ["a"], "relay": "a"}])
    assert error.key == "route[0].relays"
    assert "unknown key" in error.message
    assert "did you mean 'relay'?" in error.message


@pytest.mark.parametrize(("routes", "key"), [("a", "route"), (5, "route"), (["a"], "route[0]")])
def test_route_that_is_not_a_table(parse_error, routes, key):
    error = parse_error(routes=routes)
    assert error.key == key


# -- relay quota keys ------------------------------------------------------------------------------


def relay_keys(tmp_path: Path, **keys: Any) -> dict[str, dict[str, Any]]:
    return {"a": outbox(tmp_path, "a", **keys)}


def test_quota_defaults_to_no_limit(parse):
    quota = parse().relays["a"].quota
    assert quota == QuotaConfig(None, None, None)
    assert not quota.limited


@pytest.mark.parametrize("rate", [14, 0.5, 2.5, 1])
def test_max_per_second_takes_an_int_or_a_float(parse, tmp_path, rate):
    quota = parse(relays=relay_keys(tmp_path, max_per_second=rate)).relays["a"].quota
    assert quota.max_per_second == rate
    assert isinstance(quota.max_per_second, float)
    assert quota.limited


def test_max_per_hour_and_day(parse, tmp_path):
    quota = (
        parse(relays=relay_keys(tmp_path, max_per_hour=100, max_per_day=50000)).relays["a"].quota
    )
    assert quota == QuotaConfig(max_per_second=None, max_per_hour=100, max_per_day=50000)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("max_per_second", 0, "more than zero"),
        ("max_per_second", -1.5, "more than zero"),
        ("max_per_second", "14", "expected a number"),
        ("max_per_second", True, "expected a number"),
        ("max_per_hour", 0, "more than zero"),
        ("max_per_hour", -10, "more than zero"),
        ("max_per_hour", 1.5, "expected an integer"),
        ("max_per_hour", "100", "expected an integer"),
        ("max_per_day", 0, "more than zero"),
        ("max_per_day", 100.0, "expected an integer"),
        ("max_per_day", False, "expected an integer"),
    ],
)
def test_bad_quota_values(parse_error, tmp_path, key, value, fragment):
    error = parse_error(relays=relay_keys(tmp_path, **{key: value}))
    assert error.key == f"relays.a.{key}"
    assert fragment in error.message


def test_zero_quota_error_says_how_to_have_no_limit(parse_error, tmp_path):
    error = parse_error(relays=relay_keys(tmp_path, max_per_day=0))
    assert "leave it out for no limit" in error.message


# -- relay circuit keys ----------------------------------------------------------------------------


def test_circuit_defaults(parse):
    assert parse().relays["a"].circuit == CircuitConfig(
        failures=5, cooldown=60.0, max_cooldown=900.0
    )


def test_circuit_keys(parse, tmp_path):
    relays = relay_keys(
        tmp_path, circuit_failures=1, circuit_cooldown="30s", circuit_max_cooldown="1h"
    )
    assert parse(relays=relays).relays["a"].circuit == CircuitConfig(1, 30.0, 3600.0)


@pytest.mark.parametrize(("cooldown", "maximum"), [("30s", 900.0), ("15m", 900.0), ("1h", 3600.0)])
def test_circuit_max_cooldown_defaults_to_15m_or_the_cooldown_if_longer(
    parse, tmp_path, cooldown, maximum
):
    circuit = parse(relays=relay_keys(tmp_path, circuit_cooldown=cooldown)).relays["a"].circuit
    assert circuit.max_cooldown == maximum


def test_circuit_max_cooldown_may_equal_the_cooldown(parse, tmp_path):
    relays = relay_keys(tmp_path, circuit_cooldown=90, circuit_max_cooldown="1m30s")
    assert parse(relays=relays).relays["a"].circuit == CircuitConfig(5, 90.0, 90.0)


@pytest.mark.parametrize(
    ("keys", "key", "fragment"),
    [
        ({"circuit_failures": 0}, "circuit_failures", "must be at least 1, got 0"),
        ({"circuit_failures": -3}, "circuit_failures", "must be at least 1"),
        ({"circuit_failures": "5"}, "circuit_failures", "expected an integer"),
        ({"circuit_failures": 2.0}, "circuit_failures", "expected an integer"),
        ({"circuit_cooldown": "0s"}, "circuit_cooldown", "must be more than zero"),
        ({"circuit_cooldown": 0}, "circuit_cooldown", "must be more than zero"),
        ({"circuit_cooldown": -5}, "circuit_cooldown", "negative"),
        ({"circuit_cooldown": "soon"}, "circuit_cooldown", "expected a duration"),
        (
            {"circuit_cooldown": "5m", "circuit_max_cooldown": "4m"},
            "circuit_max_cooldown",
            "must not be less than circuit_cooldown",
        ),
        (
            # against the default cooldown of 1m
            {"circuit_max_cooldown": "30s"},
            "circuit_max_cooldown",
            "must not be less than circuit_cooldown",
        ),
    ],
)
def test_bad_circuit_values(parse_error, tmp_path, keys, key, fragment):
    error = parse_error(relays=relay_keys(tmp_path, **keys))
    assert error.key == f"relays.a.{key}"
    assert fragment in error.message


def test_quota_and_circuit_keys_are_not_unknown_to_the_plugin(tmp_path, config_path, host):
    relays = {
        "a": outbox(
            tmp_path,
            "a",
            max_per_second=2,
            max_per_hour=10,
            max_per_day=100,
            circuit_failures=2,
            circuit_cooldown="10s",
            circuit_max_cooldown="5m",
        ),
        "net": {**NET, "allowed_senders": ["*@example.com"], "max_per_second": 0.5},
    }
    config = parse_config(document(tmp_path, relays=relays), config_path)
    built = build_relays(config, host)
    assert isinstance(built["net"], SMTPRelay)
    assert config.relays["net"].quota.max_per_second == 0.5


# -- route_for -------------------------------------------------------------------------------------


@pytest.fixture
def routed(parse, tmp_path):
    """Routes: a domain route listed before an exact one for the same domain, two routes for
    example.org, two exact routes for the same address."""
    return parse(
        spools=[spool(tmp_path, ["a", "b"]), spool(tmp_path, "c", name="spool2")],
        routes=[
            {"senders": ["*@example.com"], "relay": "b"},
            {"senders": ["*@example.org"], "relay": ["c", "a"]},
            {"senders": ["ceo@example.com", "*@example.net"], "relay": ["c", "b"]},
            {"senders": ["*@example.org", "ceo@example.com"], "relay": "a"},
            {"senders": ["Boss@example.org"], "relay": "b"},
            {"senders": ["boss@example.org"], "relay": "a"},
        ],
    )


def test_exact_sender_beats_a_domain_route_listed_before_it(routed):
    assert route_for(routed, routed.spools[0], "ceo@example.com") == ("c", "b")
    assert route_for(routed, routed.spools[0], "cfo@example.com") == ("b",)


def test_first_of_equal_routes_wins(routed):
    assert route_for(routed, routed.spools[0], "news@example.org") == ("c", "a")  # domains
    assert route_for(routed, routed.spools[0], "boss@example.org") == ("b",)  # exact


@pytest.mark.parametrize(
    ("sender", "route"),
    [
        ("CEO@Example.COM", ("c", "b")),
        ("ceo@EXAMPLE.com", ("c", "b")),
        ("BOSS@example.ORG", ("b",)),
        ("Someone@EXAMPLE.NET", ("c", "b")),
        ("x@Example.Com", ("b",)),
    ],
)
def test_routes_match_case_insensitively(routed, sender, route):
    assert route_for(routed, routed.spools[0], sender) == route


def test_the_null_sender_takes_the_spools_relays(routed):
    assert route_for(routed, routed.spools[0], "") == ("a", "b")
    assert route_for(routed, routed.spools[1], "") == ("c",)


@pytest.mark.parametrize("sender", ["app@example.de", "app@sub.example.com", "ceo@example.co"])
def test_no_match_takes_the_spools_relays(routed, sender):
    assert route_for(routed, routed.spools[0], sender) == ("a", "b")
    assert route_for(routed, routed.spools[1], sender) == ("c",)


def test_a_route_applies_whatever_the_spool(routed):
    assert route_for(routed, routed.spools[1], "ceo@example.com") == ("c", "b")


def test_without_routes_the_spool_decides(parse, tmp_path):
    config = parse(spools=[spool(tmp_path, ["b", "c"])])
    assert route_for(config, config.spools[0], "ceo@example.com") == ("b", "c")


def test_an_exact_route_matches_a_sender_domain_with_a_trailing_dot(routed):
    assert route_for(routed, routed.spools[0], "ceo@example.com.") == ("c", "b")


# -- the policy hook with routes -------------------------------------------------------------------


def check(config: Config, sender: str, spool_index: int = 0) -> str | None:
    spool_config = config.spools[spool_index]
    route = route_for(config, spool_config, sender)
    return mqd_check_policy(
        message=ParsedMessage(sender=sender, recipients=("rcpt@example.net",)),
        spool=spool_config,
        relay_name=route[0],  # as intake calls it
        config=config,
    )


@pytest.fixture
def guarded(parse, tmp_path):
    """The spool allows example.com and example.org; ses only news@example.com, sendgrid
    example.com; the spool's own relay has no list."""
    return parse(
        relays={
            "local": outbox(tmp_path, "local"),
            "ses": {**NET, "allowed_senders": ["news@example.com"]},
            "sendgrid": {**NET, "allowed_senders": ["*@example.com"]},
        },
        spools=[spool(tmp_path, "local", allowed_senders=["*@example.com", "*@example.org"])],
        routes=[
            {"senders": ["*@example.com"], "relay": ["ses", "sendgrid"]},
            {"senders": ["*@example.org"], "relay": ["sendgrid", "local"]},
            {"senders": ["alerts@example.com"], "relay": "sendgrid"},
        ],
    )


def test_a_sender_routed_to_a_relay_that_does_not_list_it_is_refused(guarded):
    # The spool allows it, the route's second relay would too: the first one does not.
    reason = check(guarded, "app@example.com")
    assert reason is not None
    assert "app@example.com" in reason
    assert "relay 'ses'" in reason


def test_every_relay_of_the_route_must_allow_the_sender(guarded):
    # example.org goes to ["sendgrid", "local"]: sendgrid's list has no example.org
    reason = check(guarded, "app@example.org")
    assert reason is not None
    assert "relay 'sendgrid'" in reason


def test_refusal_names_the_second_relay_of_a_failover_route(parse, tmp_path):
    config = parse(
        relays={
            "first": {**NET, "allowed_senders": ["*@example.com"]},
            "second": {**NET, "allowed_senders": ["ops@example.com"]},
        },
        spools=[spool(tmp_path, "first")],
        routes=[{"senders": ["*@example.com"], "relay": ["first", "second"]}],
    )
    assert check(config, "ops@example.com") is None
    reason = check(config, "app@example.com")
    assert reason is not None
    assert "relay 'second'" in reason


def test_accepted_when_the_spool_and_every_relay_of_the_route_allow(guarded):
    assert check(guarded, "news@example.com") is None  # ses and sendgrid both list it
    assert check(guarded, "alerts@example.com") is None  # exact route: sendgrid only


def test_routes_never_allow_what_the_spool_refuses(guarded):
    reason = check(guarded, "news@example.net")
    assert reason is not None
    assert "spool" in reason


def test_policy_through_the_plugin_host(guarded, host):
    message = ParsedMessage(sender="app@example.com", recipients=("rcpt@example.net",))
    spool_config = guarded.spools[0]
    route = route_for(guarded, spool_config, message.sender)
    assert route == ("ses", "sendgrid")
    reason = host.check_policy(message, spool_config, route[0], guarded)
    assert reason is not None and "relay 'ses'" in reason
    good = ParsedMessage(sender="news@example.com", recipients=("rcpt@example.net",))
    assert host.check_policy(good, spool_config, route[0], guarded) is None


# -- open-relay checks with routes (build_relays) --------------------------------------------------


@pytest.fixture
def build(parse):
    def run(**kwargs: Any) -> dict[str, Any]:
        return build_relays(parse(**kwargs), PluginHost(entry_points=False))

    return run


@pytest.fixture
def build_error(parse, config_path):
    def run(**kwargs: Any) -> ConfigError:
        config = parse(**kwargs)
        with pytest.raises(ConfigError) as info:
            build_relays(config, PluginHost(entry_points=False))
        assert info.value.path == config_path
        return info.value

    return run


def local_and_net(tmp_path: Path, **net_keys: Any) -> dict[str, dict[str, Any]]:
    return {"local": outbox(tmp_path, "local"), "net": {**NET, **net_keys}}


NET_ROUTE = [{"senders": ["*@example.com"], "relay": "net"}]


def test_a_route_to_an_unlisted_network_relay_is_refused(build_error, tmp_path):
    error = build_error(
        relays=local_and_net(tmp_path), spools=[spool(tmp_path, "local")], routes=NET_ROUTE
    )
    assert error.key == "route[0].relay"
    assert "'net'" in error.message
    assert "open relay" in error.message
    assert "[relays.net]" in error.message


def test_the_refused_route_is_named_by_its_index(build_error, tmp_path):
    error = build_error(
        relays={**local_and_net(tmp_path), "listed": {**NET, "allowed_senders": ["*@a.test"]}},
        spools=[spool(tmp_path, "local")],
        routes=[
            {"senders": ["*@a.test"], "relay": "listed"},
            {"senders": ["*@b.test"], "relay": ["local", "net"]},
        ],
    )
    assert error.key == "route[1].relay"
    assert "'net'" in error.message


def test_one_unlisted_spool_is_enough_to_refuse_the_route(build_error, tmp_path):
    error = build_error(
        relays=local_and_net(tmp_path),
        spools=[
            spool(tmp_path, "local", allowed_senders=["*@example.com"]),
            spool(tmp_path, "local", name="spool2"),
        ],
        routes=NET_ROUTE,
    )
    assert error.key == "route[0].relay"


def test_a_route_to_a_network_relay_is_fine_when_every_spool_has_a_list(build, tmp_path):
    relays = build(
        relays=local_and_net(tmp_path),
        spools=[
            spool(tmp_path, "local", allowed_senders=["*@example.com"]),
            spool(tmp_path, "local", name="spool2", allowed_senders=["app@example.org"]),
        ],
        routes=NET_ROUTE,
    )
    assert isinstance(relays["net"], SMTPRelay)


def test_a_route_to_a_network_relay_with_its_own_list_is_fine(build, tmp_path):
    relays = build(
        relays=local_and_net(tmp_path, allowed_senders=["*@example.com"]),
        spools=[spool(tmp_path, "local")],
        routes=NET_ROUTE,
    )
    assert set(relays) == {"local", "net"}


def test_a_route_to_local_relays_needs_no_list(build, tmp_path):
    relays = build(
        spools=[spool(tmp_path, "a")], routes=[{"senders": ["*@example.com"], "relay": ["b", "c"]}]
    )
    assert set(relays) == {"a", "b", "c"}


def test_an_unlisted_network_relay_second_in_a_spools_failover_list_is_refused(
    build_error, tmp_path
):
    error = build_error(relays=local_and_net(tmp_path), spools=[spool(tmp_path, ["local", "net"])])
    assert error.key == "spool[0].allowed_senders"
    assert "'net'" in error.message
    assert "open relay" in error.message


def test_the_spool_with_the_unlisted_failover_relay_is_named(build_error, tmp_path):
    error = build_error(
        relays=local_and_net(tmp_path),
        spools=[
            spool(tmp_path, "local"),
            spool(tmp_path, ["local", "net"], name="spool2"),
        ],
    )
    assert error.key == "spool[1].allowed_senders"


@pytest.mark.parametrize(
    ("spool_keys", "net_keys"),
    [({"allowed_senders": ["*@example.com"]}, {}), ({}, {"allowed_senders": ["*@example.com"]})],
)
def test_a_failover_list_with_a_listed_network_relay_is_fine(build, tmp_path, spool_keys, net_keys):
    relays = build(
        relays=local_and_net(tmp_path, **net_keys),
        spools=[spool(tmp_path, ["local", "net"], **spool_keys)],
    )
    assert isinstance(relays["net"], SMTPRelay)


# -- effective_config ------------------------------------------------------------------------------


def test_effective_config_shows_failover_lists_and_routes(parse, tmp_path):
    config = parse(
        spools=[
            spool(tmp_path, ["b", "a"]),
            spool(tmp_path, "c", name="spool2"),
        ],
        routes=[
            {"senders": ["*@News.example.com"], "relay": ["c", "a"]},
            {"senders": ["ceo@example.com"], "relay": "b"},
        ],
    )
    build_relays(config, PluginHost(entry_points=False))
    effective = effective_config(config)
    assert [s["relay"] for s in effective["spool"]] == [["b", "a"], "c"]
    assert effective["route"] == [
        {"senders": ["*@news.example.com"], "relay": ["c", "a"]},
        {"senders": ["ceo@example.com"], "relay": ["b"]},
    ]


def test_effective_config_without_routes_has_no_route_key(parse):
    config = parse()
    build_relays(config, PluginHost(entry_points=False))
    assert "route" not in effective_config(config)


def test_effective_config_shows_quota_and_circuit_keys(parse, tmp_path):
    config = parse(relays=relay_keys(tmp_path, max_per_second=14, max_per_day=50000))
    build_relays(config, PluginHost(entry_points=False))
    shown = effective_config(config)["relays"]["a"]
    assert shown["max_per_second"] == 14.0
    assert shown["max_per_day"] == 50000
    assert "max_per_hour" not in shown  # no limit: nothing to show
    assert shown["circuit_failures"] == 5
    assert shown["circuit_cooldown"] == "1m"


def test_effective_config_shows_a_given_circuit_max_cooldown(parse, tmp_path):
    config = parse(relays=relay_keys(tmp_path, circuit_max_cooldown=7200))
    build_relays(config, PluginHost(entry_points=False))
    assert effective_config(config)["relays"]["a"]["circuit_max_cooldown"] == "2h"


def test_effective_config_with_routes_reloads_to_the_same_config(parse, tmp_path, config_path):
    config = parse(
        relays=relay_keys(tmp_path, max_per_hour=10, circuit_cooldown="30s")
        | {"b": outbox(tmp_path, "b")},
        spools=[spool(tmp_path, ["a", "b"])],
        routes=[{"senders": ["*@example.com"], "relay": ["b", "a"]}],
    )
    build_relays(config, PluginHost(entry_points=False))
    effective = effective_config(config)
    again = parse_config(tomllib.loads(tomli_w.dumps(effective)), config_path)
    build_relays(again, PluginHost(entry_points=False))
    assert again.spools == config.spools
    assert again.routes == config.routes
    assert {n: (r.quota, r.circuit) for n, r in again.relays.items()} == {
        n: (r.quota, r.circuit) for n, r in config.relays.items()
    }
    assert effective_config(again) == effective
