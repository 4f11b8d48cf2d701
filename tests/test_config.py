"""Unit tests for the configuration: mqd.config.load, mqd.config.options and mqd.relays.build."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tomli_w

from mqd.config.effective import effective_config
from mqd.config.load import load_config, locate_config, parse_config
from mqd.config.options import REDACTED, Options, Secret
from mqd.config.paths import DefaultPaths, default_paths
from mqd.config.schema import CONFIG_ENV, DEFAULT_RELAY, Config
from mqd.config.senders import validate_sender_pattern
from mqd.errors import ConfigError
from mqd.plugins.host import PluginHost
from mqd.relays.build import build_relays
from mqd.relays.outbox import OutboxRelay
from mqd.relays.smtp.relay import SMTPRelay

SECRET = "Tr0ub4dor-&-3-unique-secret"
ALLOWED = 'allowed_senders = ["app@example.com"]'

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are a POSIX notion")


def smtp_toml(*, relay: str = "", spool: str = ALLOWED, extra: str = "") -> str:
    """A config with one spool and one smtp relay ``main``; the arguments are added lines."""
    return f"""
[queue]
dir = "queue"
bounce_sender = "mailer-daemon@mqd.test"

[[spool]]
path = "spool"
{spool}

[relays.main]
plugin = "smtp"
host = "smtp.example.com"
{relay}
{extra}
"""


def outbox_toml(*, spool: str = "", extra: str = "") -> str:
    return f"""
[queue]
dir = "queue"

[[spool]]
path = "spool"
{spool}

[relays.dev]
plugin = "outbox"
path = "outbox"
{extra}
"""


@pytest.fixture
def load(write_config):
    """Write a config, load it, build its relays; return (config, relays, path)."""

    def run(text: str, *, mode: int = 0o600):
        path = write_config(text)
        path.chmod(mode)
        config = load_config(path)
        relays = build_relays(config, PluginHost(entry_points=False))
        return config, relays, path

    return run


def config_error(load, text: str, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, **kwargs)
    return info.value


# -- a valid file ----------------------------------------------------------------------------------


def test_minimal_smtp_config(load):
    config, relays, path = load(smtp_toml(relay='username = "u"\npassword_env = "HOME"'))
    assert config.source == path
    assert not config.is_embedded_default
    assert config.queue.dir == path.parent / "queue"  # relative to the config file
    assert config.queue.bounce_sender == "mailer-daemon@mqd.test"
    [spool] = config.spools
    assert spool.path == path.parent / "spool"
    assert spool.relay == "main"
    assert spool.allowed_senders == ("app@example.com",)
    assert list(relays) == ["main"]
    relay = relays["main"]
    assert isinstance(relay, SMTPRelay)
    assert relay.settings.host == "smtp.example.com"
    assert relay.settings.port == 587
    assert relay.settings.security == "starttls"
    assert config.inject_spool == spool.path


def test_queue_values_are_converted(load):
    config, _, _ = load(
        outbox_toml(
            extra="""
[sendmail]
qualify_domain = "example.com"
"""
        ).replace(
            'dir = "queue"',
            'dir = "queue"\nconcurrency = 3\nmax_message_size = "1MiB"\nscan_interval = "250ms"\n'
            'watch = "poll"\nretry = { initial = "1m", max = "2h", lifetime = "1d" }',
        )
    )
    queue = config.queue
    assert queue.concurrency == 3
    assert queue.max_message_size == 1024 * 1024
    assert queue.scan_interval == 0.25
    assert queue.watch == "poll"
    assert (queue.retry.initial, queue.retry.max, queue.retry.lifetime) == (60, 7200, 86400)
    assert config.sendmail.qualify_domain == "example.com"


@pytest.mark.parametrize(
    ("queue_line", "key", "fragment"),
    [
        ("concurrency = 0", "queue.concurrency", "at least 1"),
        ('concurrency = "ten"', "queue.concurrency", "an integer"),
        ("concurrency = true", "queue.concurrency", "an integer"),
        ('watch = "magic"', "queue.watch", "'poll'"),
        ('scan_interval = "0s"', "queue.scan_interval", "more than zero"),
        ('scan_interval = "soon"', "queue.scan_interval", "'30s'"),
        ('max_message_size = "lots"', "queue.max_message_size", "25MiB"),
        ('bounce_sender = "mailer-daemon"', "queue.bounce_sender", "address"),
        ('retry = { initial = "0s" }', "queue.retry.initial", "more than zero"),
        ('retry = { initial = "2h", max = "1h" }', "queue.retry.max", "less than"),
        # TOML has nan and inf floats; neither is a duration
        ("scan_interval = nan", "queue.scan_interval", ""),
        ("retry = { initial = nan }", "queue.retry.initial", ""),
        ("retry = { lifetime = nan }", "queue.retry.lifetime", ""),
        ("retry = { max = inf }", "queue.retry.max", ""),
    ],
)
def test_bad_queue_values_name_key_and_file(load, queue_line, key, fragment):
    text = outbox_toml().replace('dir = "queue"', f'dir = "queue"\n{queue_line}')
    error = config_error(load, text)
    assert error.key == key
    assert fragment in error.message
    assert str(error.path) in str(error)
    assert f"'{key}'" in str(error)


# -- unknown keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        (
            outbox_toml().replace('dir = "queue"', 'dir = "queue"\nconcurency = 5'),
            "queue.concurency",
            "concurrency",
        ),
        (
            outbox_toml().replace('dir = "queue"', 'dir = "queue"\nretry = { intial = "1m" }'),
            "queue.retry.intial",
            "initial",
        ),
        (
            outbox_toml(spool='alowed_senders = ["app@example.com"]'),
            "spool[0].alowed_senders",
            "allowed_senders",
        ),
        (outbox_toml(extra='[sendmial]\nspool = "spool"'), "sendmial", "sendmail"),
        (
            outbox_toml(extra='[sendmail]\nqualify_domian = "x.org"'),
            "sendmail.qualify_domian",
            "qualify_domain",
        ),
        (outbox_toml(extra='[queues]\ndir = "q"'), "queues", "queue"),
        (smtp_toml(relay="prot = 2525"), "relays.main.prot", "port"),
        (smtp_toml(relay='securty = "tls"'), "relays.main.securty", "security"),
        (outbox_toml(extra='paht = "x"'), "relays.dev.paht", "path"),
    ],
)
def test_unknown_key_is_an_error_naming_key_file_and_suggestion(load, text, key, hint):
    error = config_error(load, text)
    assert error.key == key
    assert error.path is not None
    message = str(error)
    assert str(error.path) in message
    assert f"'{key}'" in message
    assert "unknown key" in message
    assert f"did you mean '{hint}'?" in message


def test_unknown_key_without_a_close_match_lists_known_keys(load):
    error = config_error(load, outbox_toml(spool="frobnicate = 1"))
    assert error.key == "spool[0].frobnicate"
    assert "did you mean" not in str(error)
    assert "allowed_senders" in str(error) and "relay" in str(error)


@pytest.mark.parametrize(
    ("old", "new", "key", "hint"),
    [
        ("[[spool]]", "[[spools]]", "spools", "spool"),
        ("[relays.dev]", "[relay.dev]", "relay", "relays"),
    ],
)
def test_misspelled_top_level_table_names_the_unknown_key(load, old, new, key, hint):
    # `[[spools]]` instead of `[[spool]]`: the error should name the key the user wrote
    # rather than only report that the table it expected is missing.
    error = config_error(load, outbox_toml().replace(old, new))
    assert error.key == key
    assert f"did you mean '{hint}'?" in str(error)


def test_options_finish_directly():
    opts = Options({"hots": "x", "port": 1}, section="relays.x", path=Path("/etc/mqd/mqd.toml"))
    assert opts.integer("port") == 1
    opts.string("host", "default")
    with pytest.raises(ConfigError) as info:
        opts.finish()
    assert info.value.key == "relays.x.hots"
    assert "did you mean 'host'?" in str(info.value)
    assert "/etc/mqd/mqd.toml" in str(info.value)


# -- broken files ----------------------------------------------------------------------------------


def test_bad_toml_names_the_file(write_config):
    path = write_config("[queue\ndir = 'x'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == path
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == path
    assert str(path) in str(info.value)


def test_file_without_spool_table(load):
    text = """
[relays.dev]
plugin = "outbox"
path = "outbox"
"""
    error = config_error(load, text)
    assert error.key == "spool"
    assert "[[spool]]" in error.message
    assert str(error.path) in str(error)


def test_file_without_relays_table(load):
    text = """
[[spool]]
path = "spool"
"""
    error = config_error(load, text)
    assert error.key == "relays"
    assert "[relays." in error.message
    assert str(error.path) in str(error)


def test_empty_spool_list(load):
    text = "spool = []\n" + outbox_toml().replace('[[spool]]\npath = "spool"\n', "")
    error = config_error(load, text)
    assert error.key == "spool"


def test_relay_without_plugin_key(load):
    error = config_error(load, outbox_toml().replace('plugin = "outbox"\n', ""))
    assert error.key == "relays.dev.plugin"
    assert "required" in error.message


def test_unknown_relay_plugin(load):
    error = config_error(load, outbox_toml().replace('plugin = "outbox"', 'plugin = "pigeon"'))
    assert error.key == "relays.dev.plugin"
    assert "'pigeon'" in error.message
    assert "smtp" in error.message and "outbox" in error.message


# -- spools and relays -----------------------------------------------------------------------------


def test_spool_relay_that_does_not_exist(load):
    error = config_error(load, outbox_toml(spool='relay = "main"'))
    assert error.key == "spool[0].relay"
    assert "'main'" in error.message
    assert "dev" in error.message  # lists what is configured
    assert str(error.path) in str(error)


def test_single_relay_is_the_default_for_a_spool(load):
    config, _, _ = load(outbox_toml())
    assert config.spools[0].relay == "dev"


def test_spool_must_name_a_relay_when_there_are_several(load):
    text = outbox_toml(extra='[relays.other]\nplugin = "outbox"\npath = "other"')
    error = config_error(load, text)
    assert error.key == "spool[0].relay"
    assert "required" in error.message
    assert "dev" in error.message and "other" in error.message


def test_spools_pick_their_relays(load):
    text = (
        outbox_toml(spool='relay = "other"', extra='[relays.other]\nplugin = "outbox"\npath = "o"')
        + '\n[[spool]]\npath = "spool2"\nrelay = "dev"\n'
    )
    config, relays, _ = load(text)
    assert [s.relay for s in config.spools] == ["other", "dev"]
    assert set(relays) == {"dev", "other"}


@pytest.mark.parametrize("second", ["spool", "./spool", "spool/", "sub/../spool", "ABSOLUTE"])
def test_duplicate_spool_paths(load, write_config, second):
    if second == "ABSOLUTE":
        second = str(write_config("").parent / "spool")
    text = outbox_toml().replace(
        '[[spool]]\npath = "spool"\n',
        f'[[spool]]\npath = "spool"\n\n[[spool]]\npath = "{second}"\n',
    )
    error = config_error(load, text)
    assert error.key == "spool[1].path"
    assert "spool[0]" in error.message


def test_spool_paths_that_differ_are_fine(load):
    text = outbox_toml().replace(
        '[[spool]]\npath = "spool"\n', '[[spool]]\npath = "a"\n\n[[spool]]\npath = "b"\n'
    )
    config, _, path = load(text)
    assert [s.path for s in config.spools] == [path.parent / "a", path.parent / "b"]
    assert config.spools[0].key != config.spools[1].key


# -- allowed senders -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "normalised"),
    [
        ("app@example.com", "app@example.com"),
        ("App@Example.COM", "App@example.com"),
        ("app@example.com.", "app@example.com"),
        ("*@example.com", "*@example.com"),
        ("*@Example.Com.", "*@example.com"),
        ("  app@example.com ", "app@example.com"),
        ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
    ],
)
def test_valid_sender_patterns(pattern, normalised):
    assert validate_sender_pattern(pattern) == normalised


BAD_PATTERNS = [
    "*",
    "a@*",
    "*@*",
    "*@",
    "@example.com",
    "example.com",
    "",
    "   ",
    "a@b@example.com",
    "*.example.com",
    "*@*.example.com",
    "a*@example.com",
    "a b@example.com",
    "<app@example.com>",
    "app@example.com, other@example.com",
    "*@.",
]


@pytest.mark.parametrize("pattern", BAD_PATTERNS)
def test_wide_or_broken_sender_patterns_are_refused(pattern):
    with pytest.raises(ValueError, match="open relay"):
        validate_sender_pattern(pattern)


@pytest.mark.parametrize("pattern", ["*", "a@*", "*@*"])
def test_wide_patterns_in_spool_are_config_errors(load, pattern):
    error = config_error(
        load, smtp_toml(spool=f'allowed_senders = ["app@example.com", "{pattern}"]')
    )
    assert error.key == "spool[0].allowed_senders"
    assert repr(pattern) in error.message
    assert str(error.path) in str(error)


@pytest.mark.parametrize("pattern", ["*", "a@*"])
def test_wide_patterns_in_relay_are_config_errors(load, pattern):
    error = config_error(load, smtp_toml(spool="", relay=f'allowed_senders = ["{pattern}"]'))
    assert error.key == "relays.main.allowed_senders"
    assert repr(pattern) in error.message


def test_allowed_senders_must_be_a_list(load):
    error = config_error(load, smtp_toml(spool='allowed_senders = "app@example.com"'))
    assert error.key == "spool[0].allowed_senders"
    assert "list of strings" in error.message


def test_allowed_senders_are_normalised(load):
    config, _, _ = load(smtp_toml(spool='allowed_senders = ["App@Example.COM.", "*@Example.org"]'))
    assert config.spools[0].allowed_senders == ("App@example.com", "*@example.org")


def test_check_from_defaults_to_true_and_can_be_turned_off(load):
    assert load(smtp_toml())[0].spools[0].check_from is True
    off = load(smtp_toml(spool=f"{ALLOWED}\ncheck_from = false"))[0]
    assert off.spools[0].check_from is False


def test_check_from_must_be_true_or_false(load):
    error = config_error(load, smtp_toml(spool=f'{ALLOWED}\ncheck_from = "no"'))
    assert error.key == "spool[0].check_from"
    assert "true or false" in error.message


def test_network_relay_without_allowed_senders_is_refused(load):
    error = config_error(load, smtp_toml(spool=""))
    assert error.key == "spool[0].allowed_senders"
    assert "spool[0].allowed_senders" in str(error)
    assert "'main'" in error.message
    assert "open relay" in error.message
    assert str(error.path) in str(error)


def test_network_relay_with_empty_allowed_senders_is_refused(load):
    error = config_error(load, smtp_toml(spool="allowed_senders = []"))
    assert error.key == "spool[0].allowed_senders"


def test_second_spool_without_allowed_senders_is_named(load):
    text = smtp_toml().replace("[relays.main]", '[[spool]]\npath = "spool2"\n\n[relays.main]', 1)
    error = config_error(load, text)
    assert error.key == "spool[1].allowed_senders"


def test_relay_level_allowed_senders_suffice(load):
    config, relays, _ = load(smtp_toml(spool="", relay='allowed_senders = ["*@example.com"]'))
    assert config.spools[0].allowed_senders == ()
    assert config.relays["main"].allowed_senders == ("*@example.com",)
    assert isinstance(relays["main"], SMTPRelay)


def test_outbox_relay_needs_no_allowed_senders(load):
    config, relays, path = load(outbox_toml())
    assert config.spools[0].allowed_senders == ()
    relay = relays["dev"]
    assert isinstance(relay, OutboxRelay)
    assert relay.network is False
    assert relay.folder == path.parent / "outbox"


# -- embedded defaults -----------------------------------------------------------------------------


def test_embedded_defaults(host):
    config = parse_config({}, None)
    defaults = default_paths()
    assert config.source is None
    assert config.is_embedded_default
    assert len(config.spools) == 1
    assert config.spools[0].path == defaults.spool_dir
    assert config.spools[0].relay == DEFAULT_RELAY
    assert list(config.relays) == [DEFAULT_RELAY]
    assert config.relays[DEFAULT_RELAY].plugin == "outbox"
    assert config.queue.dir == defaults.queue_dir
    assert "@" in config.queue.bounce_sender
    relays = build_relays(config, host)
    assert isinstance(relays[DEFAULT_RELAY], OutboxRelay)
    assert relays[DEFAULT_RELAY].folder == defaults.outbox_dir
    effective = effective_config(config)
    assert effective["relays"][DEFAULT_RELAY]["plugin"] == "outbox"
    assert effective["spool"][0]["path"] == str(defaults.spool_dir)


def test_load_config_none_is_embedded_defaults():
    assert load_config(None).is_embedded_default


# -- locate_config ---------------------------------------------------------------------------------


@pytest.fixture
def platform_default(tmp_path, monkeypatch):
    """Point the platform default config file into tmp_path (not created) and clear the env."""
    path = tmp_path / "platform" / "mqd.toml"
    paths = DefaultPaths(
        config_file=path,
        queue_dir=tmp_path / "q",
        spool_dir=tmp_path / "s",
        outbox_dir=tmp_path / "o",
    )
    monkeypatch.setattr("mqd.config.paths.default_paths", lambda: paths)
    monkeypatch.setattr("mqd.config.paths.SYSTEM_CONFIG", tmp_path / "etc" / "mqd.toml")
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    return path


def test_locate_falls_back_to_the_system_config(platform_default, tmp_path):
    system = tmp_path / "etc" / "mqd.toml"
    system.parent.mkdir()
    system.write_text("")
    assert locate_config() == system  # a user without a config of their own
    platform_default.parent.mkdir()
    platform_default.write_text("")
    assert locate_config() == platform_default  # their own wins


def test_locate_explicit_path_wins(platform_default, write_config, monkeypatch):
    explicit = write_config("", name="explicit.toml")
    env = write_config("", name="env.toml")
    monkeypatch.setenv(CONFIG_ENV, str(env))
    platform_default.parent.mkdir()
    platform_default.write_text("")
    assert locate_config(explicit) == explicit


def test_locate_env_before_platform_default(platform_default, write_config, monkeypatch):
    env = write_config("", name="env.toml")
    monkeypatch.setenv(CONFIG_ENV, str(env))
    platform_default.parent.mkdir()
    platform_default.write_text("")
    assert locate_config() == env


def test_locate_platform_default(platform_default):
    platform_default.parent.mkdir()
    platform_default.write_text("")
    assert locate_config() == platform_default


def test_locate_nothing_means_embedded_defaults(platform_default, monkeypatch):
    assert locate_config() is None
    monkeypatch.setenv(CONFIG_ENV, "")  # an empty variable is not set
    assert locate_config() is None


def test_locate_missing_explicit_path_is_an_error(platform_default, tmp_path):
    platform_default.parent.mkdir()
    platform_default.write_text("")
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        locate_config(missing)
    assert info.value.path == missing
    assert str(missing) in str(info.value)
    assert "--config" in str(info.value)


def test_locate_explicit_directory_is_an_error(platform_default, tmp_path):
    with pytest.raises(ConfigError):
        locate_config(tmp_path)


def test_locate_missing_env_path_is_an_error(platform_default, tmp_path, monkeypatch):
    platform_default.parent.mkdir()
    platform_default.write_text("")
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv(CONFIG_ENV, str(missing))
    with pytest.raises(ConfigError) as info:
        locate_config()
    assert info.value.path == missing
    assert str(missing) in str(info.value)
    assert CONFIG_ENV in str(info.value)


# -- secrets ---------------------------------------------------------------------------------------


def test_password_file_relative_to_config_dir(load, tmp_path, monkeypatch):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text(SECRET + "\n", encoding="utf-8")
    (tmp_path / "secrets" / "pw").chmod(0o600)
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)  # relative to the config file, not to the working directory
    _, relays, _ = load(smtp_toml(relay='username = "u"\npassword_file = "secrets/pw"'))
    password = relays["main"].settings.password
    assert isinstance(password, Secret)
    assert password.reveal() == SECRET


@pytest.mark.parametrize("content", [SECRET, SECRET + "\n", SECRET + "\r\n", SECRET + "\n\n"])
def test_password_file_trailing_newline_stripped(load, tmp_path, content):
    secret_file = tmp_path / "pw"
    secret_file.write_bytes(content.encode())
    secret_file.chmod(0o600)
    _, relays, _ = load(smtp_toml(relay=f'username = "u"\npassword_file = "{secret_file}"'))
    assert relays["main"].settings.password.reveal() == SECRET


def test_password_file_keeps_inner_spaces(load, tmp_path):
    (tmp_path / "pw").write_text(" two words \n", encoding="utf-8")
    (tmp_path / "pw").chmod(0o600)
    _, relays, _ = load(smtp_toml(relay='username = "u"\npassword_file = "pw"'))
    assert relays["main"].settings.password.reveal() == " two words "


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o666])
def test_a_secret_file_others_may_read_or_write_is_refused(load, tmp_path, mode):
    """As an inline password in a readable config is: msmtp and ssh refuse the same way."""
    (tmp_path / "pw").write_text("s3cret\n", encoding="utf-8")
    (tmp_path / "pw").chmod(mode)
    error = config_error(load, smtp_toml(relay='username = "u"\npassword_file = "pw"'))
    assert error.key == "relays.main.password_file"
    assert f"permissions {mode:04o}" in error.message and "too open" in error.message
    assert f"chmod 600 {tmp_path / 'pw'}" in error.message


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_a_secret_file_for_its_owner_or_group_is_taken(load, tmp_path, mode):
    (tmp_path / "pw").write_text("s3cret\n", encoding="utf-8")
    (tmp_path / "pw").chmod(mode)
    _, relays, _ = load(smtp_toml(relay='username = "u"\npassword_file = "pw"'))
    assert relays["main"].settings.password.reveal() == "s3cret"


def test_password_file_missing(load, tmp_path):
    error = config_error(load, smtp_toml(relay='username = "u"\npassword_file = "missing-pw"'))
    assert error.key == "relays.main.password_file"
    assert "cannot read" in error.message
    assert str(tmp_path / "missing-pw") in error.message


def test_password_file_empty(load, tmp_path):
    (tmp_path / "pw").write_text("\n", encoding="utf-8")
    error = config_error(load, smtp_toml(relay='username = "u"\npassword_file = "pw"'))
    assert error.key == "relays.main.password_file"
    assert "empty" in error.message


def test_password_env(load, monkeypatch):
    monkeypatch.setenv("MQD_TEST_SMTP_PASSWORD", SECRET)
    _, relays, _ = load(smtp_toml(relay='username = "u"\npassword_env = "MQD_TEST_SMTP_PASSWORD"'))
    assert relays["main"].settings.password.reveal() == SECRET


def test_password_env_not_set(load, monkeypatch):
    monkeypatch.delenv("MQD_TEST_SMTP_PASSWORD", raising=False)
    error = config_error(
        load, smtp_toml(relay='username = "u"\npassword_env = "MQD_TEST_SMTP_PASSWORD"')
    )
    assert error.key == "relays.main.password_env"
    assert "MQD_TEST_SMTP_PASSWORD" in error.message


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o610, 0o601])
def test_inline_password_refused_when_file_is_readable_by_others(load, mode):
    error = config_error(load, smtp_toml(relay=f'username = "u"\npassword = "{SECRET}"'), mode=mode)
    assert error.key == "relays.main.password"
    message = str(error)
    assert f"chmod 600 {error.path}" in message
    assert f"{mode:04o}" in message
    assert "too open" in message
    assert SECRET not in message


@posix_only
@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_inline_password_accepted_when_private(load, mode):
    _, relays, _ = load(smtp_toml(relay=f'username = "u"\npassword = "{SECRET}"'), mode=mode)
    assert relays["main"].settings.password.reveal() == SECRET


def test_inline_password_without_file_is_accepted():
    # parse_config with no file (a dict built by code): there is no file mode to check.
    opts = Options({"password": SECRET}, section="relays.x", path=None)
    secret = opts.secret("password")
    assert secret is not None and secret.reveal() == SECRET


@pytest.mark.parametrize(
    "lines",
    [
        'password_file = "pw"\npassword = "x"',
        'password_file = "pw"\npassword_env = "HOME"',
        'password_env = "HOME"\npassword = "x"',
        'password_file = "pw"\npassword_env = "HOME"\npassword = "x"',
    ],
)
def test_two_secret_sources_are_an_error(load, tmp_path, lines):
    (tmp_path / "pw").write_text("pw\n", encoding="utf-8")
    error = config_error(load, smtp_toml(relay=f'username = "u"\n{lines}'))
    assert error.key is not None and error.key.startswith("relays.main.password")
    assert "only one of" in error.message
    assert "password_file" in error.message and "password_env" in error.message


def test_username_without_password(load):
    error = config_error(load, smtp_toml(relay='username = "u"'))
    assert error.key == "relays.main.password_file"
    assert "'u'" in error.message


def test_password_without_username(load, monkeypatch):
    monkeypatch.setenv("MQD_TEST_SMTP_PASSWORD", SECRET)
    error = config_error(load, smtp_toml(relay='password_env = "MQD_TEST_SMTP_PASSWORD"'))
    assert error.key == "relays.main.username"
    assert SECRET not in str(error)


def test_security_none_with_credentials_is_refused(load, monkeypatch):
    monkeypatch.setenv("MQD_TEST_SMTP_PASSWORD", SECRET)
    error = config_error(
        load,
        smtp_toml(
            relay='security = "none"\nusername = "u"\npassword_env = "MQD_TEST_SMTP_PASSWORD"'
        ),
    )
    assert error.key == "relays.main.security"
    assert "clear text" in error.message


def test_security_none_without_credentials_is_fine(load):
    _, relays, _ = load(smtp_toml(relay='security = "none"'))
    assert relays["main"].settings.security == "none"
    assert relays["main"].settings.port == 25


@pytest.mark.parametrize(("security", "port"), [("tls", 465), ("starttls", 587), ("none", 25)])
def test_default_port_follows_security(load, security, port):
    config, relays, _ = load(smtp_toml(relay=f'security = "{security}"'))
    assert relays["main"].settings.port == port
    assert effective_config(config)["relays"]["main"]["port"] == port


# -- effective_config ------------------------------------------------------------------------------


def _secret_configs(tmp_path):
    (tmp_path / "pw").write_text(SECRET + "\n", encoding="utf-8")
    (tmp_path / "pw").chmod(0o600)
    return {
        "file": 'username = "u"\npassword_file = "pw"',
        "env": 'username = "u"\npassword_env = "MQD_TEST_SMTP_PASSWORD"',
        "inline": f'username = "u"\npassword = "{SECRET}"',
    }


@pytest.mark.parametrize("kind", ["file", "env", "inline"])
def test_effective_config_never_shows_the_secret(load, tmp_path, monkeypatch, kind):
    monkeypatch.setenv("MQD_TEST_SMTP_PASSWORD", SECRET)
    config, relays, _ = load(smtp_toml(relay=_secret_configs(tmp_path)[kind]))
    assert relays["main"].settings.password.reveal() == SECRET  # the real secret was read
    effective = effective_config(config)
    assert SECRET not in json.dumps(effective)
    assert SECRET not in tomli_w.dumps(effective)
    assert SECRET not in repr(config)
    assert SECRET not in repr(relays["main"].settings)
    assert SECRET not in relays["main"].describe()
    shown = effective["relays"]["main"]
    if kind == "inline":
        assert shown["password"] == REDACTED
    elif kind == "file":
        assert shown["password_file"] == str(tmp_path / "pw")
    else:
        assert shown["password_env"] == "MQD_TEST_SMTP_PASSWORD"


def test_effective_config_shows_defaults(load):
    config, _, path = load(smtp_toml())
    effective = effective_config(config)
    relay = effective["relays"]["main"]
    assert relay["port"] == 587
    assert relay["security"] == "starttls"
    assert relay["host"] == "smtp.example.com"
    assert relay["plugin"] == "smtp"
    assert relay["tls_verify"] is True
    assert relay["connect_timeout"] == "30s"
    assert relay["command_timeout"] == "1m"
    assert relay["data_timeout"] == "10m"
    assert relay["max_connections"] == 10
    assert relay["allowed_senders"] == []
    queue = effective["queue"]
    assert queue["dir"] == str(path.parent / "queue")
    assert queue["concurrency"] == 20
    assert queue["scan_interval"] == "5s"
    assert queue["max_message_size"] == 25 * 1024 * 1024
    assert queue["watch"] == "auto"
    assert queue["retry"] == {"initial": "5m", "max": "1h", "lifetime": "5d"}
    assert effective["spool"] == [
        {
            "path": str(path.parent / "spool"),
            "relay": "main",
            "allowed_senders": ["app@example.com"],
            "check_from": True,
        }
    ]
    assert effective["sendmail"] == {"spool": str(path.parent / "spool")}


def test_effective_config_is_valid_toml_and_reloads(load, write_config):
    config, _, _ = load(smtp_toml(relay='security = "tls"'))
    text = tomli_w.dumps(effective_config(config))
    again = load(text)[0]
    assert again.queue == config.queue
    assert again.spools == config.spools
    assert effective_config(again) == effective_config(config)


# -- Secret ----------------------------------------------------------------------------------------


def test_secret_hides_its_value():
    secret = Secret(SECRET)
    assert SECRET not in repr(secret)
    assert SECRET not in str(secret)
    assert SECRET not in f"{secret}"
    assert SECRET not in repr([secret])
    assert REDACTED in repr(secret)
    assert secret.reveal() == SECRET


def test_secret_equality():
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert hash(Secret("a")) == hash(Secret("a"))


def test_config_is_frozen(load):
    config, _, _ = load(outbox_toml())
    assert isinstance(config, Config)
    with pytest.raises(AttributeError):
        config.source = None  # type: ignore[misc]


def test_a_missing_required_key_points_at_its_misspelling(write_config, tmp_path):
    from mqd.plugins.host import PluginHost
    from mqd.relays.build import build_relays

    path = write_config(
        f"""
        [queue]
        dir = "{tmp_path / "q"}"
        [[spool]]
        path = "{tmp_path / "s"}"
        allowed_senders = ["a@example.com"]
        [relays.main]
        plugin = "smtp"
        hots = "smtp.example.com"
        """
    )
    with pytest.raises(ConfigError, match=r"relays\.main\.host.*is required.*'hots'"):
        build_relays(load_config(path), PluginHost(entry_points=False))


def test_sendmail_spool_must_be_a_configured_spool(write_config, tmp_path):
    text = f"""
        [[spool]]
        path = "{tmp_path / "s"}"
        [relays.o]
        plugin = "outbox"
        path = "{tmp_path / "o"}"
        [sendmail]
        spool = "{{spool}}"
        """
    ok = load_config(write_config(text.format(spool=tmp_path / "s")))
    assert ok.inject_spool == tmp_path / "s"
    with pytest.raises(ConfigError, match=r"sendmail\.spool.*not one of the \[\[spool\]\] paths"):
        load_config(write_config(text.format(spool=tmp_path / "elsewhere")))
