"""mqd.producer.sendmail: the sendmail command line, the spool file it builds, and the real
command."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mqd.config.senders import SenderRules
from mqd.errors import MessageParseError, PolicyError
from mqd.message.envelope import parse_message
from mqd.producer.sendmail import SendmailArgs, UsageError, build, parse_args, read_message

MQD = Path(sys.executable).with_name("mqd")


# -- parse_args ----------------------------------------------------------------------------------


def test_t_and_i() -> None:
    args = parse_args(["-t", "-i"])
    assert args.from_headers is True
    assert args.ignore_dots is True
    assert args.recipients == []
    assert args.sender is None


def test_defaults_without_options() -> None:
    args = parse_args(["bob@example.net"])
    assert args == SendmailArgs(recipients=["bob@example.net"])


def test_oi_ignores_dots() -> None:
    args = parse_args(["-oi", "bob@example.net"])
    assert args.ignore_dots is True
    assert args.from_headers is False
    assert args.recipients == ["bob@example.net"]


@pytest.mark.parametrize(
    "argv",
    [
        ["-f", "app@example.com"],
        ["-fapp@example.com"],
        ["-r", "app@example.com"],
        ["-rapp@example.com"],
    ],
)
def test_envelope_sender(argv: list[str]) -> None:
    args = parse_args([*argv, "bob@example.net"])
    assert args.sender == "app@example.com"
    assert args.recipients == ["bob@example.net"]


def test_full_name() -> None:
    assert parse_args(["-F", "Jane Doe", "bob@example.net"]).full_name == "Jane Doe"
    assert parse_args(["-FJane", "bob@example.net"]).full_name == "Jane"


def test_cron_command_line() -> None:
    # What Debian's cron runs: /usr/sbin/sendmail -FCronDaemon -i -B8BITMIME -oem root
    args = parse_args(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"])
    assert args.full_name == "CronDaemon"
    assert args.ignore_dots is True
    assert args.recipients == ["root"]
    assert args.sender is None


@pytest.mark.parametrize(
    "ignored",
    [["-odi"], ["-bm"], ["-oem"], ["-B8BITMIME"], ["-B", "8BITMIME"], ["-v"], ["-U"], ["-odb"]],
)
def test_ignored_options(ignored: list[str]) -> None:
    args = parse_args([*ignored, "bob@example.net"])
    assert args.recipients == ["bob@example.net"]
    assert args.sender is None and args.full_name is None


def test_php_style_sendmail_path() -> None:
    args = parse_args(["-t", "-i", "-fapp@example.com"])
    assert (args.from_headers, args.ignore_dots, args.sender) == (True, True, "app@example.com")


def test_double_dash_ends_options() -> None:
    args = parse_args(["-i", "--", "-odd@example.net", "-t"])
    assert args.recipients == ["-odd@example.net", "-t"]
    assert args.from_headers is False


def test_comma_separated_recipients() -> None:
    args = parse_args(["a@example.net,b@example.net", "c@example.net, d@example.net", " ,"])
    assert args.recipients == ["a@example.net", "b@example.net", "c@example.net", "d@example.net"]


@pytest.mark.parametrize("argv", [["-q"], ["-x"], ["-bp"], ["-bs"], ["-f"], ["-F"]])
def test_unknown_or_incomplete_option_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


# -- build ---------------------------------------------------------------------------------------


def test_build_writes_envelope_lines_and_adds_from_with_the_full_name() -> None:
    args = parse_args(["-f", "app@example.com", "-F", "The App", "bob@example.net"])
    raw = b"Subject: hi\r\n\r\nbody\r\n"
    out = build(args, raw, None)
    assert out == (
        b"X-Sender: <app@example.com>\r\n"
        b"X-Receiver: <bob@example.net>\r\n"
        b"From: The App <app@example.com>\r\n" + raw
    )
    parsed = parse_message(out)
    assert parsed.sender == "app@example.com"
    assert parsed.recipients == ("bob@example.net",)


def test_build_adds_a_bare_from_without_a_full_name() -> None:
    out = build(
        parse_args(["-f", "app@example.com", "bob@example.net"]), b"Subject: x\n\nb\n", None
    )
    assert b"\r\nFrom: app@example.com\r\nSubject: x\n" in out


def test_build_keeps_an_existing_from() -> None:
    args = parse_args(["-f", "bounce@example.com", "-F", "Ignored", "bob@example.net"])
    raw = b"Subject: hi\r\nfrom: App <app@example.com>\r\n\r\nbody mentions From: nobody\r\n"
    out = build(args, raw, None)
    assert out.endswith(raw)
    assert out.count(b"rom: ") == 2  # the original header and the one in the body
    assert b"Ignored" not in out
    assert parse_message(out).sender == "bounce@example.com"  # -f is the envelope sender


def test_build_without_f_takes_the_sender_from_the_headers() -> None:
    raw = b"From: App <app@example.com>\nSubject: s\n\nbody\n"
    out = build(parse_args(["bob@example.net"]), raw, None)
    assert out.startswith(b"X-Sender: <app@example.com>\r\nX-Receiver: <bob@example.net>\r\n")


def test_build_t_takes_to_cc_and_bcc() -> None:
    raw = (
        b"From: App <app@example.com>\n"
        b"To: Bob <bob@example.net>, carol@example.net\n"
        b"Cc: dave@example.net\n"
        b"Bcc: erin@example.net\n"
        b"Subject: s\n\nbody\n"
    )
    out = build(parse_args(["-t", "-i", "extra@example.net"]), raw, None)
    parsed = parse_message(out)
    assert parsed.sender == "app@example.com"
    assert set(parsed.recipients) == {
        "bob@example.net",
        "carol@example.net",
        "dave@example.net",
        "erin@example.net",
        "extra@example.net",
    }
    assert out.endswith(raw)


def test_build_without_t_ignores_header_recipients() -> None:
    raw = b"From: app@example.com\nTo: header@example.net\n\nbody\n"
    out = build(parse_args(["arg@example.net"]), raw, None)
    assert parse_message(out).recipients == ("arg@example.net",)


def test_build_deduplicates_recipients() -> None:
    raw = b"From: app@example.com\nTo: bob@example.net\n\nbody\n"
    out = build(parse_args(["-t", "bob@example.net"]), raw, None)
    assert out.count(b"X-Receiver:") == 1


def test_qualify_domain_qualifies_root() -> None:
    args = parse_args(["-f", "root", "root", "<admin>"])
    out = build(args, b"Subject: cron\n\noutput\n", "example.com")
    parsed = parse_message(out)
    assert parsed.sender == "root@example.com"
    assert parsed.recipients == ("root@example.com", "admin@example.com")


def test_qualify_domain_qualifies_header_recipients_with_t() -> None:
    raw = b"From: app@example.com\nTo: root\n\nbody\n"
    out = build(parse_args(["-t"]), raw, "example.com")
    assert parse_message(out).recipients == ("root@example.com",)


def test_cron_mail_is_qualified() -> None:
    """Cron gives no -f: the sender is its From header, "root (Cron Daemon)"."""
    args = parse_args(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"])
    raw = b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host> ls\n\noutput\n"
    out = build(args, raw, "example.com")
    parsed = parse_message(out)
    assert parsed.sender == "root@example.com"
    assert parsed.recipients == ("root@example.com",)
    # Its From qualified too, as Postfix does: the daemon reads From strictly (check_from).
    assert out.endswith(raw.replace(b"From: root (", b"From: root@example.com ("))
    assert parsed.headers["from"] == "root@example.com (Cron Daemon)"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"From: root\n", b"From: root@example.com\n"),
        (b"from: Cron Daemon <root>\r\n", b"from: Cron Daemon <root@example.com>\r\n"),
        (b"From: root (Cron Daemon)\n", b"From: root@example.com (Cron Daemon)\n"),
        (b"From: app@example.org\n", b"From: app@example.org\n"),
        (b"From: a, b\n", b"From: a, b\n"),  # not one local name: left to the policy
        (b"From: root (open\n", b"From: root (open\n"),
    ],
)
def test_an_unqualified_from_is_qualified(header: bytes, expected: bytes) -> None:
    from mqd.producer.sendmail import _qualify_from

    rest = b"To: bob@example.net\n\nbody From: root\n"
    assert _qualify_from(header + rest, "example.com") == expected + rest


@pytest.mark.parametrize(
    "argv",
    [["-f", "root", "bob@example.net"], ["-f", "app@example.com", "root"]],
    ids=["sender", "recipient"],
)
def test_unqualified_without_qualify_domain_is_refused(argv: list[str]) -> None:
    with pytest.raises(MessageParseError, match="qualify_domain"):
        build(parse_args(argv), b"Subject: x\n\nbody\n", None)


def test_no_recipients_is_refused() -> None:
    with pytest.raises(MessageParseError, match="no recipients"):
        build(parse_args(["-f", "app@example.com"]), b"Subject: x\n\nbody\n", None)
    with pytest.raises(MessageParseError, match="no recipients"):
        build(parse_args(["-t"]), b"From: app@example.com\nSubject: x\n\nbody\n", None)


def test_no_sender_is_refused() -> None:
    with pytest.raises(MessageParseError, match="sender"):
        build(parse_args(["bob@example.net"]), b"Subject: x\n\nbody\n", None)


@pytest.fixture
def login() -> str:
    """The effective user's name in the password database (POSIX only)."""
    pwd = pytest.importorskip("pwd")
    return str(pwd.getpwuid(os.geteuid()).pw_name)


def test_without_f_or_from_the_sender_is_the_login_name(login: str) -> None:
    """What mail and mailx send: recipients as arguments, a message with no From."""
    out = build(parse_args(["-i", "bob@example.net"]), b"Subject: x\n\nbody\n", "example.com")
    assert out.startswith(f"X-Sender: <{login}@example.com>\r\n".encode())
    # ... and a From header from it, as Postfix adds one from the envelope sender.
    assert f"\r\nFrom: {login}@example.com\r\nSubject: x\n".encode() in out
    assert parse_message(out).sender == f"{login}@example.com"
    named = build(parse_args(["-F", "Ops Team", "bob@example.net"]), b"Subject: x\n\nb\n", "e.org")
    assert f"From: Ops Team <{login}@e.org>\r\n".encode() in named


def test_the_login_name_is_the_effective_users_not_the_environments(
    monkeypatch: pytest.MonkeyPatch, login: str
) -> None:
    monkeypatch.setenv("LOGNAME", "mallory")
    monkeypatch.setenv("USER", "mallory")
    out = build(parse_args(["bob@example.net"]), b"Subject: x\n\nbody\n", "example.com")
    assert out.startswith(f"X-Sender: <{login}@example.com>".encode())


def test_the_login_name_takes_the_origin_without_qualify_domain(login: str) -> None:
    raw = b"Subject: x\n\nbody\n"
    out = build(parse_args(["bob@example.net"]), raw, None, origin="host.example.org")
    assert out.startswith(f"X-Sender: <{login}@host.example.org>".encode())
    with pytest.raises(MessageParseError, match="qualify_domain"):
        build(parse_args(["bob@example.net"]), raw, None)  # no domain at all
    with pytest.raises(MessageParseError, match="no sender"):  # -f "" is not "no -f"
        build(parse_args(["-f", "", "bob@example.net"]), raw, "example.com")


def test_the_login_sender_is_subject_to_the_allow_list(login: str) -> None:
    rules = SenderRules(path="/var/spool/mqd", allowed_senders=["app@example.com"])
    with pytest.raises(PolicyError, match=f"sender {login}@example.com is not allowed"):
        build(parse_args(["bob@example.net"]), b"Subject: x\n\nbody\n", "example.com", rules)
    allowed = SenderRules(path="/var/spool/mqd", allowed_senders=["*@example.com"])
    build(parse_args(["bob@example.net"]), b"Subject: x\n\nbody\n", "example.com", allowed)


def test_empty_message_is_refused() -> None:
    with pytest.raises(MessageParseError, match="empty"):
        build(parse_args(["-f", "app@example.com", "bob@example.net"]), b"\n\n", None)


def test_address_with_a_line_break_is_refused() -> None:
    with pytest.raises(MessageParseError):
        build(
            parse_args(["-f", "app@example.com\r\nRCPT TO:<x@y>", "b@example.net"]), b"S: x\n", None
        )


# -- read_message --------------------------------------------------------------------------------


MESSAGE_WITH_DOT = b"Subject: dots\n\nfirst\n.\nafter the dot\n"


def test_read_message_stops_at_a_lone_dot_without_i() -> None:
    assert read_message(io.BytesIO(MESSAGE_WITH_DOT), ignore_dots=False) == (
        b"Subject: dots\n\nfirst\n"
    )


def test_read_message_lone_dot_with_crlf() -> None:
    data = b"Subject: dots\r\n\r\nfirst\r\n.\r\nafter\r\n"
    assert read_message(io.BytesIO(data), ignore_dots=False) == b"Subject: dots\r\n\r\nfirst\r\n"


def test_read_message_keeps_everything_with_i() -> None:
    assert read_message(io.BytesIO(MESSAGE_WITH_DOT), ignore_dots=True) == MESSAGE_WITH_DOT


def test_read_message_keeps_lines_that_only_start_with_a_dot() -> None:
    data = b"Subject: dots\n\n.. two\n.x\n"
    assert read_message(io.BytesIO(data), ignore_dots=False) == data


# -- the real command ----------------------------------------------------------------------------


@pytest.fixture
def sendmail_config(write_config: Callable[..., Path], spool: Path, queue_dir: Path) -> Path:
    return write_config(
        f"""
        [queue]
        dir = "{queue_dir}"
        bounce_sender = "mailer-daemon@mqd.test"

        [sendmail]
        qualify_domain = "example.com"

        [[spool]]
        path = "{spool}"
        relay = "sink"
        allowed_senders = ["app@example.com", "*@example.com"]

        [relays.sink]
        plugin = "smtp"
        host = "127.0.0.1"
        port = 25
        security = "none"
        """
    )


def run_mqd(
    argv: list[str], stdin: bytes, env: dict[str, str], program: Path = MQD
) -> subprocess.CompletedProcess[bytes]:
    # subprocess.run kills the child when the timeout expires.
    return subprocess.run(
        [str(program), *argv], input=stdin, capture_output=True, env=env, timeout=60, check=False
    )


PHP_MESSAGE = (
    b"To: Bob <bob@example.net>\n"
    b"Cc: carol@example.net\n"
    b"From: App <app@example.com>\n"
    b"Subject: from PHP\n"
    b"\n"
    b"Hello.\n"
    b".\n"
    b"This line follows a lone dot.\n"
)


def test_command_t_i_writes_a_spool_file(
    sendmail_config: Path, spool: Path, env: dict[str, str]
) -> None:
    proc = run_mqd(["--config", str(sendmail_config), "sendmail", "-t", "-i"], PHP_MESSAGE, env)
    assert proc.returncode == 0, proc.stderr.decode()
    [written] = list(spool.glob("*.eml"))
    data = written.read_bytes()
    assert data.endswith(PHP_MESSAGE)  # -i: the lone dot did not end the message
    parsed = parse_message(data)
    assert parsed.sender == "app@example.com"
    assert parsed.recipients == ("bob@example.net", "carol@example.net")
    assert [p.name for p in spool.iterdir() if p.name.startswith(".")] == []


def test_command_without_i_stops_at_the_dot(
    sendmail_config: Path, spool: Path, env: dict[str, str]
) -> None:
    proc = run_mqd(["--config", str(sendmail_config), "sendmail", "-t"], PHP_MESSAGE, env)
    assert proc.returncode == 0, proc.stderr.decode()
    [written] = list(spool.glob("*.eml"))
    assert written.read_bytes().endswith(b"\nHello.\n")


def test_command_without_recipients_exits_65(
    sendmail_config: Path, spool: Path, env: dict[str, str]
) -> None:
    message = b"From: app@example.com\nSubject: nobody\n\nbody\n"
    proc = run_mqd(["--config", str(sendmail_config), "sendmail", "-i"], message, env)
    assert proc.returncode == 65, proc.stderr.decode()
    assert b"no recipients" in proc.stderr
    assert list(spool.iterdir()) == []


def test_command_with_an_unknown_option_exits_64(
    sendmail_config: Path, spool: Path, env: dict[str, str]
) -> None:
    proc = run_mqd(["--config", str(sendmail_config), "sendmail", "-q"], b"", env)
    assert proc.returncode == 64
    assert b"-q" in proc.stderr
    assert b"usage:" in proc.stderr
    assert list(spool.iterdir()) == []


def test_command_with_a_missing_config_exits_78(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "nope.toml"
    proc = run_mqd(["--config", str(missing), "sendmail", "-t"], PHP_MESSAGE, env)
    assert proc.returncode == 78
    assert str(missing).encode() in proc.stderr


def test_symlink_named_sendmail(
    sendmail_config: Path, spool: Path, env: dict[str, str], tmp_path: Path
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    link = bindir / "sendmail"
    link.symlink_to(MQD)
    env = {**env, "MQD_CONFIG": str(sendmail_config)}
    message = b"From: App <app@example.com>\nSubject: via symlink\n\nhi\n"
    proc = run_mqd(["-oi", "bob@example.net"], message, env, program=link)
    assert proc.returncode == 0, proc.stderr.decode()
    [written] = list(spool.glob("*.eml"))
    parsed = parse_message(written.read_bytes())
    assert parsed.sender == "app@example.com"
    assert parsed.recipients == ("bob@example.net",)


def test_symlink_named_sendmail_rejects_unknown_options(
    sendmail_config: Path, env: dict[str, str], tmp_path: Path
) -> None:
    link = tmp_path / "sendmail"
    link.symlink_to(MQD)
    proc = run_mqd(["--bogus"], b"", {**env, "MQD_CONFIG": str(sendmail_config)}, program=link)
    assert proc.returncode == 64


def test_cron_through_the_command(sendmail_config: Path, spool: Path, env: dict[str, str]) -> None:
    message = b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host> true\n\nok\n"
    proc = run_mqd(
        [
            "--config",
            str(sendmail_config),
            "sendmail",
            "-FCronDaemon",
            "-i",
            "-B8BITMIME",
            "-oem",
            "root",
        ],
        message,
        env,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    [written] = list(spool.glob("*.eml"))
    parsed = parse_message(written.read_bytes())
    assert parsed.sender == "root@example.com"
    assert parsed.recipients == ("root@example.com",)


def test_help_prints_the_options_and_exits_0() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mqd", "sendmail", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0
    assert "-t " in proc.stdout and "qualify" not in proc.stderr
    assert "Exit codes" in proc.stdout


def test_capital_o_option_is_ignored() -> None:
    assert parse_args(["-O", "DeliveryMode=b", "-t"]).from_headers
    assert parse_args(["-ODeliveryMode=b", "bob@example.net"]).recipients == ["bob@example.net"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["sendmail", "-t"], ["-t"]),
        (
            ["--config", "/etc/mqd.toml", "sendmail", "-t", "-i"],
            ["-C", "/etc/mqd.toml", "-t", "-i"],
        ),
        (["-c", "x.toml", "sendmail"], ["-C", "x.toml"]),
        (["--config=x.toml", "sendmail", "a@b.c"], ["-C", "x.toml", "a@b.c"]),
        (["--config", "x.toml", "run"], None),
        (["--log-level", "debug", "sendmail"], None),  # through click: it knows every option
        ([], None),
    ],
)
def test_the_sendmail_fast_path_also_takes_a_config(args, expected):
    from mqd.__main__ import _sendmail_args

    assert _sendmail_args(args) == expected
