"""The ``mqd`` command, run as real subprocesses of the installed entry point."""

from __future__ import annotations

import email
import email.policy
import json
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from corehelpers import USERS, drop, make_message
from lockholder import hold_queue_lock
from smtpserver import SMTPPeer

from mqd.__main__ import main

MQD = Path(sys.executable).with_name("mqd")
USER, PASSWORD = next(iter(USERS.items()))


def mqd(
    *argv: str, env: dict[str, str], stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    # subprocess.run kills the child if the timeout expires.
    return subprocess.run(
        [str(MQD), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def tls_config(
    write_config: Callable[..., Path],
    tmp_path: Path,
    spool: Path,
    queue_dir: Path,
    smtp_tls_server: SMTPPeer,
    ca_file: Path,
) -> Path:
    """STARTTLS + AUTH to ``smtp_tls_server``; the password in a file next to the config."""
    password_file = tmp_path / "smtp-password"
    password_file.write_text(PASSWORD + "\n", encoding="utf-8")
    password_file.chmod(0o600)
    password_file.chmod(0o600)
    return write_config(
        f"""
        [queue]
        dir = "{queue_dir}"
        bounce_sender = "mailer-daemon@mqd.test"

        [[spool]]
        path = "{spool}"
        relay = "main"
        allowed_senders = ["app@example.com"]

        [relays.main]
        plugin = "smtp"
        host = "127.0.0.1"
        port = {smtp_tls_server.port}
        security = "starttls"
        username = "{USER}"
        password_file = "smtp-password"
        tls_ca_file = "{ca_file}"
        connect_timeout = "10s"
        command_timeout = "10s"
        data_timeout = "10s"
        """
    )


@pytest.fixture
def plain_config_file(
    write_config: Callable[..., Path], spool: Path, queue_dir: Path, smtp_server: SMTPPeer
) -> Path:
    return write_config(
        f"""
        [queue]
        dir = "{queue_dir}"
        bounce_sender = "mailer-daemon@mqd.test"

        [[spool]]
        path = "{spool}"
        relay = "sink"
        allowed_senders = ["app@example.com"]

        [relays.sink]
        plugin = "smtp"
        host = "127.0.0.1"
        port = {smtp_server.port}
        security = "none"
        connect_timeout = "10s"
        command_timeout = "10s"
        data_timeout = "10s"
        """
    )


# -- help and plugins ----------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["send", "--help"], ["-h"]])
def test_help_exits_0(argv: list[str], env: dict[str, str]) -> None:
    proc = mqd(*argv, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout


def test_run_help_describes_once(env: dict[str, str]) -> None:
    proc = mqd("run", "--help", env=env)
    assert "--once" in proc.stdout


def test_version(env: dict[str, str]) -> None:
    proc = mqd("--version", env=env)
    assert proc.returncode == 0
    assert proc.stdout.startswith("mqd, version ")


def test_plugins_lists_the_builtin_relays(env: dict[str, str]) -> None:
    proc = mqd("plugins", env=env)
    assert proc.returncode == 0, proc.stderr
    [types_line] = [line for line in proc.stdout.splitlines() if line.startswith("relay types:")]
    types = {t.strip() for t in types_line.split(":", 1)[1].split(",")}
    assert {"smtp", "outbox"} <= types
    assert "mqd.relays.smtp.relay" in proc.stdout


def test_unknown_command_is_a_usage_error(env: dict[str, str]) -> None:
    proc = mqd("frobnicate", env=env)
    assert proc.returncode == 64  # EX_USAGE, as for sendmail
    assert "frobnicate" in proc.stderr


# -- init and config check -----------------------------------------------------------------------


def test_init_writes_a_config_that_checks_once_the_password_exists(
    tmp_path: Path, env: dict[str, str]
) -> None:
    target = tmp_path / "etc" / "mqd.toml"
    proc = mqd(
        "init",
        "--path",
        str(target),
        "--host",
        "smtp.mail.test",
        "--username",
        "noreply@mail.test",
        "--sender",
        "noreply@mail.test",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(target) in proc.stdout
    # Readable by producers (mqd sendmail finds the spool in it); the secret is elsewhere.
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    text = target.read_text(encoding="utf-8")
    assert "password =" not in text
    assert 'bounce_sender = "mailer-daemon@mail.test"' in text
    tomllib.loads(text)  # valid TOML

    password_file = target.parent / "smtp-password"
    check = mqd("--config", str(target), "config", "check", env=env)
    assert check.returncode == 78, check.stdout + check.stderr
    assert str(password_file) in check.stderr
    assert "password_file" in check.stderr

    password_file.write_text("the-init-password\n", encoding="utf-8")
    password_file.chmod(0o600)
    password_file.chmod(0o600)
    check = mqd("--config", str(target), "config", "check", env=env)
    assert check.returncode == 0, check.stderr
    assert "the-init-password" not in check.stdout + check.stderr
    effective = tomllib.loads(check.stdout)
    assert effective["relays"]["main"]["host"] == "smtp.mail.test"
    assert effective["relays"]["main"]["username"] == "noreply@mail.test"
    assert effective["spool"][0]["allowed_senders"] == ["noreply@mail.test"]


def test_init_uses_mqd_config_when_no_path_is_given(tmp_path: Path, env: dict[str, str]) -> None:
    target = tmp_path / "from-env.toml"
    proc = mqd("init", env={**env, "MQD_CONFIG": str(target)})
    assert proc.returncode == 0, proc.stderr
    assert target.is_file()


def test_init_refuses_to_overwrite_without_force(tmp_path: Path, env: dict[str, str]) -> None:
    target = tmp_path / "mqd.toml"
    target.write_text("# mine, hand-edited\n", encoding="utf-8")
    proc = mqd("init", "--path", str(target), env=env)
    assert proc.returncode != 0
    assert "already exists" in proc.stderr
    assert "--force" in proc.stderr
    assert target.read_text(encoding="utf-8") == "# mine, hand-edited\n"

    proc = mqd("init", "--path", str(target), "--force", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "[relays.main]" in target.read_text(encoding="utf-8")


def test_config_check_prints_toml_with_secrets_redacted(
    write_config: Callable[..., Path], tmp_path: Path, env: dict[str, str]
) -> None:
    secret = "Tr0ub4dor-inline-secret"
    path = write_config(
        f"""
        [queue]
        dir = "{tmp_path / "q"}"
        bounce_sender = "mailer-daemon@mqd.test"

        [[spool]]
        path = "{tmp_path / "s"}"
        allowed_senders = ["app@example.com"]

        [relays.main]
        plugin = "smtp"
        host = "smtp.example.com"
        username = "app@example.com"
        password = "{secret}"
        """
    )
    proc = mqd("--config", str(path), "config", "check", env=env)
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout
    assert secret not in proc.stderr
    assert f"# config: {path}" in proc.stdout
    effective = tomllib.loads(proc.stdout)
    assert effective["relays"]["main"]["password"] == "********"
    assert effective["relays"]["main"]["port"] == 587  # defaults are filled in
    assert effective["queue"]["dir"] == str(tmp_path / "q")
    assert not (tmp_path / "q").exists()  # checking creates nothing


def test_config_check_redacts_a_password_file(
    tls_config: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    proc = mqd("--config", str(tls_config), "config", "check", env=env)
    assert proc.returncode == 0, proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
    effective = tomllib.loads(proc.stdout)
    assert effective["relays"]["main"]["password_file"] == str(tmp_path / "smtp-password")


def test_config_check_quiet(tls_config: Path, env: dict[str, str]) -> None:
    proc = mqd("--config", str(tls_config), "config", "check", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("table", "bad", "dotted", "hint"),
    [
        ("[queue]", "concurency = 5", "queue.concurency", "concurrency"),
        ("[relays.main]", 'hots = "x"', "relays.main.hots", "host"),
    ],
)
def test_config_check_unknown_key_exits_78(
    write_config: Callable[..., Path],
    tmp_path: Path,
    env: dict[str, str],
    table: str,
    bad: str,
    dotted: str,
    hint: str,
) -> None:
    text = f"""
        [queue]
        dir = "{tmp_path / "q"}"

        [[spool]]
        path = "{tmp_path / "s"}"
        allowed_senders = ["app@example.com"]

        [relays.main]
        plugin = "smtp"
        host = "smtp.example.com"
        """
    text = text.replace(f"{table}\n", f"{table}\n        {bad}\n", 1)
    path = write_config(text)
    proc = mqd("--config", str(path), "config", "check", env=env)
    assert proc.returncode == 78, proc.stdout + proc.stderr
    assert dotted in proc.stderr
    assert str(path) in proc.stderr
    assert f"did you mean '{hint}'" in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line, no traceback


def test_config_check_reports_every_problem_not_just_the_first(
    write_config: Callable[..., Path], tmp_path: Path, env: dict[str, str]
) -> None:
    """Seven mistakes in the core's tables, a plugin's keys and the directories: one run names
    them all, a line each, and `mqd run` refuses with the same lines."""
    (tmp_path / "afile").write_text("not a directory")
    path = write_config(
        f"""
        [queue]
        dir = "{tmp_path / "q"}"
        concurency = 5
        scan_interval = "soon"

        [[spool]]
        path = "{tmp_path / "s"}"
        relay = "mian"
        allowed_senders = ["app@example.com"]

        [[spool]]
        path = "{tmp_path / "afile" / "spool"}"
        relay = "main"
        allowed_senders = ["app@example.com"]

        [relays.main]
        plugin = "smtp"
        host = "smtp.example.com"
        port = "submission"
        tls_verify = "yes"

        [http]
        port = 70000
        """
    )
    proc = mqd("--config", str(path), "config", "check", env=env)
    assert proc.returncode == 78, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert all(line.startswith(f"mqd: error: {path}: key '") for line in lines), lines
    keys = [line.split("key '")[1].split("'")[0] for line in lines]
    assert sorted(keys) == [
        "http.port",
        "queue.concurency",
        "queue.scan_interval",
        "relays.main.port",
        "relays.main.tls_verify",
        "spool[0].relay",
        "spool[1].path",
    ]
    assert f"{tmp_path / 'afile'} is not a directory" in proc.stderr
    run = mqd("--config", str(path), "run", "--once", env=env)
    assert run.returncode == 78
    assert [line for line in run.stderr.splitlines() if "mqd: error:" in line] == lines

    fixed = path.read_text().replace("concurency = 5\n", "").replace('"soon"', '"5s"')
    fixed = fixed.replace('"mian"', '"main"').replace("port = 70000", "port = 8025")
    fixed = fixed.replace('port = "submission"', "port = 587").replace('"yes"', "true")
    fixed = fixed.replace(str(tmp_path / "afile" / "spool"), str(tmp_path / "s2"))
    path.write_text(fixed)
    proc = mqd("--config", str(path), "config", "check", "--quiet", env=env)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert not (tmp_path / "q").exists() and not (tmp_path / "s2").exists()  # nothing created
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mqd-check")] == []


def test_config_check_refuses_what_run_refuses_a_spool_under_proc(
    write_config: Callable[..., Path], tmp_path: Path, env: dict[str, str]
) -> None:
    """`config check` passed a spool under /proc that `mqd run` then refused: both refuse it
    now, with the same words, and without creating anything."""
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    path = write_config(
        f"""
        [queue]
        dir = "{tmp_path / "q"}"
        [[spool]]
        path = "/proc/mqd-spool"
        [relays.dev]
        plugin = "outbox"
        path = "{tmp_path / "outbox"}"
        """
    )
    check = mqd("--config", str(path), "config", "check", env=env)
    run = mqd("--config", str(path), "run", "--once", env=env)
    assert check.returncode == run.returncode == 73  # EX_CANTCREAT: a directory, not a key
    assert "key 'spool[0].path': cannot create /proc/mqd-spool" in check.stderr
    assert [line for line in run.stderr.splitlines() if "mqd: error:" in line] == (
        check.stderr.splitlines()
    )
    assert not (tmp_path / "q").exists()


def test_config_check_missing_file_exits_78(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "missing.toml"
    proc = mqd("--config", str(missing), "config", "check", env=env)
    assert proc.returncode == 78
    assert str(missing) in proc.stderr


def test_config_from_the_environment(tls_config: Path, env: dict[str, str]) -> None:
    proc = mqd("config", "check", env={**env, "MQD_CONFIG": str(tls_config)})
    assert proc.returncode == 0, proc.stderr
    assert f"# config: {tls_config}" in proc.stdout


# -- send ----------------------------------------------------------------------------------------


def test_send_with_attachment_and_count(
    tls_config: Path, spool: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    attachment = tmp_path / "report.csv"
    attachment.write_text("a,b\n1,2\n", encoding="utf-8")
    proc = mqd(
        "send",
        "--from",
        "app@example.com",
        "--to",
        "alice@example.net",
        "--to",
        "bob@example.net",
        "--subject",
        "numbers",
        "--body",
        "See attached.",
        "--attach",
        str(attachment),
        "--count",
        "3",
        env={**env, "MQD_CONFIG": str(tls_config)},
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted(spool.glob("*.eml"))
    assert len(files) == 3
    assert [p for p in spool.iterdir() if p.name.startswith(".")] == []
    message_ids = set()
    for path in files:
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert msg["From"] == "app@example.com"
        assert msg["To"] == "alice@example.net, bob@example.net"
        assert msg["Subject"] == "numbers"
        message_ids.add(msg["Message-ID"])
        [part] = list(msg.iter_attachments())
        assert part.get_filename() == "report.csv"
        assert part.get_content() in ("a,b\n1,2\n", b"a,b\n1,2\n")
        assert "See attached." in msg.get_body(("plain",)).get_content()
    assert len(message_ids) == 3
    assert all(mid and mid.startswith("<") and mid.endswith("@example.com>") for mid in message_ids)


def test_send_with_a_missing_attachment_fails(
    tls_config: Path, spool: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    proc = mqd(
        "--config",
        str(tls_config),
        "send",
        "--from",
        "app@example.com",
        "--to",
        "alice@example.net",
        "--attach",
        str(tmp_path / "nope.pdf"),
        env=env,
    )
    assert proc.returncode != 0
    assert "nope.pdf" in proc.stderr
    assert list(spool.iterdir()) == []


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--from", "app@example.com\r\nBcc: victim@example.net"),
        ("--to", "alice@example.net\nBcc: victim@example.net"),
        ("--cc", "bob@example.net\r"),
        ("--subject", "hello\nBcc: victim@example.net"),
    ],
)
def test_send_refuses_a_line_break_as_a_usage_error(
    option: str, value: str, spool: Path, env: dict[str, str]
) -> None:
    argv = {"--from": "app@example.com", "--to": "alice@example.net", option: value}
    proc = mqd("send", *(x for pair in argv.items() for x in pair), "--spool", str(spool), env=env)
    assert proc.returncode == 64, proc.stderr  # EX_USAGE, not 70 with a traceback
    assert f"Invalid value for '{option}'" in proc.stderr
    assert "CR, LF or NUL" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(spool.iterdir()) == []


@pytest.mark.parametrize("option", ["--from", "--to", "--cc"])
def test_send_refuses_a_nul_as_a_usage_error(
    option: str, spool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A real process cannot get a NUL in its arguments: the entry point, in this process.
    argv = {"--from": "app@example.com", "--to": "alice@example.net", option: "a\x00@example.net"}
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "send",
                *(x for pair in argv.items() for x in pair),
                "--body",
                "x",
                "--spool",
                str(spool),
            ]
        )
    assert exited.value.code == 64
    assert f"Invalid value for '{option}'" in capsys.readouterr().err
    assert list(spool.iterdir()) == []


# -- run -----------------------------------------------------------------------------------------


def test_send_then_run_once_delivers_over_starttls_with_auth(
    tls_config: Path, spool: Path, queue_dir: Path, smtp_tls_server: SMTPPeer, env: dict[str, str]
) -> None:
    """The "done when" scenario: a real config, a real server, two commands."""
    sent = mqd(
        "--config",
        str(tls_config),
        "send",
        "--from",
        "app@example.com",
        "--to",
        "alice@example.net",
        "--subject",
        "done when",
        "--body",
        "It works.",
        env=env,
    )
    assert sent.returncode == 0, sent.stderr
    assert "queued" in sent.stdout
    assert len(list(spool.glob("*.eml"))) == 1

    ran = mqd("--config", str(tls_config), "run", "--once", env=env)
    assert ran.returncode == 0, ran.stderr
    [received] = smtp_tls_server.wait_for(1)
    assert received.tls is True
    assert received.authenticated is True
    assert received.mail_from == "app@example.com"
    assert received.rcpt_tos == ["alice@example.net"]
    msg = email.message_from_bytes(received.data, policy=email.policy.default)
    assert msg["Subject"] == "done when"
    assert "It works." in msg.get_body(("plain",)).get_content()
    assert list(spool.glob("*.eml")) == []
    assert list((queue_dir / "state").iterdir()) == []
    assert list((queue_dir / "failed").iterdir()) == []
    assert PASSWORD not in ran.stderr + ran.stdout


def test_run_once_with_nothing_to_do_exits_0(tls_config: Path, env: dict[str, str]) -> None:
    proc = mqd("--config", str(tls_config), "run", "--once", env=env)
    assert proc.returncode == 0, proc.stderr


def test_run_on_a_locked_queue_exits_75(
    tls_config: Path, queue_dir: Path, env: dict[str, str]
) -> None:
    with hold_queue_lock(queue_dir) as holder:
        proc = mqd("--config", str(tls_config), "run", "--once", env=env)
    assert proc.returncode == 75, proc.stderr
    assert str(queue_dir) in proc.stderr
    assert "in use by another mqd process" in proc.stderr
    assert f"pid {holder.pid}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_with_a_bad_config_exits_78(
    write_config: Callable[..., Path], tmp_path: Path, env: dict[str, str]
) -> None:
    path = write_config(
        f"""
        [queue]
        dir = "{tmp_path / "q"}"

        [[spool]]
        path = "{tmp_path / "s"}"

        [relays.main]
        plugin = "smtp"
        host = "smtp.example.com"
        """
    )
    proc = mqd("--config", str(path), "run", "--once", env=env)
    assert proc.returncode == 78
    assert "allowed_senders" in proc.stderr  # never an open relay
    assert not (tmp_path / "q").exists()


def test_run_once_json_logs(
    plain_config_file: Path, spool: Path, smtp_server: SMTPPeer, env: dict[str, str]
) -> None:
    drop(spool, make_message(to=("alice@example.net", "perm-bob@example.net")))
    proc = mqd("--config", str(plain_config_file), "--log-format", "json", "run", "--once", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
    attempts = [r for r in records if "outcome" in r]
    by_rcpt = {r["recipient"]: r for r in attempts}
    assert by_rcpt["alice@example.net"]["outcome"] == "delivered"
    assert by_rcpt["perm-bob@example.net"]["outcome"] == "permanent"
    for record in attempts:
        assert {"id", "sender", "recipient", "relay", "outcome"} <= set(record)
        assert record["relay"] == "sink"
        assert record["id"]
    assert by_rcpt["alice@example.net"]["sender"] == "app@example.com"
    smtp_server.wait_for(2)  # the message and the bounce


def test_init_with_security_none_writes_no_credentials(tmp_path: Path, env: dict[str, str]) -> None:
    target = tmp_path / "plain.toml"
    proc = mqd("init", "--path", str(target), "--security", "none", "--sender", "a@b.test", env=env)
    assert proc.returncode == 0, proc.stderr
    check = mqd("--config", str(target), "config", "check", env=env)
    assert check.returncode == 0, check.stderr
    effective = tomllib.loads(check.stdout)
    assert "username" not in effective["relays"]["main"]
    assert effective["relays"]["main"]["port"] == 25
