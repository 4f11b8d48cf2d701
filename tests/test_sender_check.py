"""``mqd send`` and ``mqd sendmail`` check the sender policy while the caller waits (issue 25 #4):
a sender the spool would refuse is refused at once (exit 77, stderr naming the sender and the
list's source, nothing written), with the daemon's own policy code; ``mqd send --spool`` takes
only a configured spool. The launcher holds the spool's rule and checks it without the config."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mqd.config.load import load_config
from mqd.config.senders import SenderRules
from mqd.exitcodes import ExitCode
from mqd.intake.policy import mqd_check_policy
from mqd.message.envelope import parse_message
from mqd.producer.launcher import write_launcher

MQD = Path(sys.executable).with_name("mqd")

RELAYS = """
[relays.main]
plugin = "smtp"
host = "127.0.0.1"
port = 25
security = "none"
[relays.bulk]
plugin = "smtp"
host = "127.0.0.1"
port = 26
security = "none"
allowed_senders = ["news@example.org", "ceo@example.com"]
[[route]]
senders = ["*@example.org", "ceo@example.com"]
relay = "bulk"
"""


@pytest.fixture
def config(write_config: Callable[..., Path], spool: Path, queue_dir: Path) -> Path:
    return write_config(
        f"""
        [queue]
        dir = "{queue_dir}"
        [[spool]]
        path = "{spool}"
        relay = "main"
        allowed_senders = ["app@example.com", "ceo@example.com", "*@example.org"]
        """
        + RELAYS
    )


def run(
    argv: list[str], env: dict[str, str], stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=60, check=False)
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def send(
    config: Path, sender: str, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    argv = [str(MQD), "--config", str(config), "send", "--from", sender, "--to", "bob@example.net"]
    return run([*argv, "--body", "hi", *extra], env)


# -- one implementation: the daemon's hook and the producers' rule agree -------------------------

CASES = [
    ("app@example.com", "App <app@example.com>"),
    ("app@example.com", "Visitor <visitor@example.net>"),  # From refused (check_from)
    ("app@example.com", None),
    ("stranger@example.net", None),  # the spool's list
    ("news@example.org", None),  # routed to bulk, whose list has it
    ("other@example.org", None),  # routed to bulk: the spool's list has it, bulk's not
    ("ceo@example.com", "ceo@example.com"),
    ("app@example.com", "not an address"),
]


@pytest.mark.parametrize(("sender", "from_value"), CASES)
def test_the_producers_rule_is_the_daemons_policy(
    config: Path, sender: str, from_value: str | None
) -> None:
    loaded = load_config(config)
    spool = loaded.spools[0]
    headers = f"From: {from_value}\n" if from_value else ""
    raw = f"X-Sender: <{sender}>\nX-Receiver: <bob@example.net>\n{headers}\nhi\n".encode()
    message = parse_message(raw)
    route = ("bulk",) if sender.endswith("example.org") or sender.startswith("ceo") else ("main",)
    daemon = mqd_check_policy(message, spool, route[0], loaded)
    rules = SenderRules.from_config(loaded, spool)
    assert rules.refusal(sender, from_value) == daemon
    # ... and as written into a launcher and read back.
    assert SenderRules.from_data(rules.to_data()).refusal(sender, from_value) == daemon


def test_the_cases_cover_both_answers(config: Path) -> None:
    rules = SenderRules.from_config(load_config(config), load_config(config).spools[0])
    answers = [rules.refusal(sender, from_value) for sender, from_value in CASES]
    assert [a is None for a in answers] == [True, False, True, False, True, False, True, False]
    assert "of the relay 'bulk'" in (answers[5] or "")


# -- mqd send -----------------------------------------------------------------------------------


def test_mqd_send_refuses_a_sender_the_spool_refuses(
    config: Path, spool: Path, env: dict[str, str]
) -> None:
    proc = send(config, "stranger@example.net", env)
    assert proc.returncode == ExitCode.NOPERM == 77, proc.stderr
    assert "sender stranger@example.net is not allowed" in proc.stderr
    assert f"allowed_senders of the spool {spool}" in proc.stderr
    assert f"nothing was queued (from config {config})" in proc.stderr
    assert list(spool.iterdir()) == []
    assert send(config, "app@example.com", env).returncode == 0
    assert len(list(spool.glob("*.eml"))) == 1


def test_mqd_send_refuses_what_a_routes_relay_refuses(
    config: Path, spool: Path, env: dict[str, str]
) -> None:
    proc = send(config, "other@example.org", env)
    assert proc.returncode == ExitCode.NOPERM, proc.stderr
    assert "matches no entry of allowed_senders of the relay 'bulk'" in proc.stderr
    assert list(spool.iterdir()) == []


def test_mqd_send_takes_only_a_configured_spool(
    config: Path, spool: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    nowhere = tmp_path / "nonexistent" / "dir"
    proc = send(config, "app@example.com", env, "--spool", str(nowhere))
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert f"{nowhere} is not a configured spool, so no daemon would read it" in proc.stderr
    assert f"the spools of {config}: {spool}" in proc.stderr
    assert not (tmp_path / "nonexistent").exists()
    # The configured one, named as the config names it or not, is taken.
    os.rmdir(spool)
    relative = os.path.relpath(spool)
    proc = send(config, "app@example.com", env, "--spool", relative)
    assert proc.returncode == 0, proc.stderr
    assert len(list(spool.glob("*.eml"))) == 1


# -- mqd sendmail, without and with a launcher --------------------------------------------------

MESSAGE = b"From: Stranger <stranger@example.net>\nTo: bob@example.net\nSubject: hi\n\nhello\n"


def test_mqd_sendmail_refuses_the_sender_and_the_from(
    config: Path, spool: Path, env: dict[str, str]
) -> None:
    sendmail = [str(MQD), "--config", str(config), "sendmail", "-t", "-i"]
    proc = run(sendmail, env, MESSAGE)
    assert proc.returncode == ExitCode.NOPERM, proc.stderr
    assert "sender stranger@example.net is not allowed" in proc.stderr
    assert f"(from config {config})" in proc.stderr
    # An allowed -f, but a From recipients would see that no list allows.
    proc = run([*sendmail, "-f", "app@example.com"], env, MESSAGE)
    assert proc.returncode == ExitCode.NOPERM, proc.stderr
    assert "From address stranger@example.net is not allowed" in proc.stderr
    assert "check_from = false" in proc.stderr
    assert list(spool.iterdir()) == []


def test_mqd_sendmail_refuses_a_sender_header_no_list_allows(
    config: Path, spool: Path, env: dict[str, str]
) -> None:
    """Mail programs show Sender ("on behalf of"): checked as From is, before anything is
    written, and by the daemon's hook alike."""
    message = b"From: app@example.com\nSender: stranger@example.net\nTo: bob@example.net\n\nhi\n"
    sendmail = [str(MQD), "--config", str(config), "sendmail", "-t", "-i", "-f", "app@example.com"]
    proc = run(sendmail, env, message)
    assert proc.returncode == ExitCode.NOPERM, proc.stderr
    assert "Sender address stranger@example.net is not allowed" in proc.stderr
    assert list(spool.iterdir()) == []
    loaded = load_config(config)
    rules = SenderRules.from_config(loaded, loaded.spools[0])
    written = b"X-Sender: <app@example.com>\nX-Receiver: <bob@example.net>\n" + message  # as -f
    daemon = mqd_check_policy(parse_message(written), loaded.spools[0], "main", loaded)
    assert rules.refusal("app@example.com", "app@example.com", "stranger@example.net") == daemon


@pytest.mark.skipif(os.name != "posix", reason="a launcher is a #! script")
def test_the_launcher_checks_the_rule_written_into_it(
    config: Path, spool: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    launcher = tmp_path / "sendmail"
    write_launcher(launcher, load_config(config))
    # The config replaced by one of the same size and time that would not parse: the launcher
    # does not read it.
    stat = config.stat()
    text = config.read_bytes()
    config.write_bytes(b"[" * stat.st_size)
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    proc = run([str(launcher), "-t", "-i"], env, MESSAGE)
    assert proc.returncode == ExitCode.NOPERM, proc.stderr
    assert "sender stranger@example.net is not allowed" in proc.stderr
    assert f"as written into {launcher} by mqd install-sendmail" in proc.stderr
    assert list(spool.iterdir()) == []
    allowed = MESSAGE.replace(b"stranger@example.net", b"app@example.com")
    assert run([str(launcher), "-t", "-i"], env, allowed).returncode == 0
    assert len(list(spool.glob("*.eml"))) == 1
    # allowed_senders changed: the launcher sees the file changed, reads it in full (the new
    # list applies), and says it is stale until written again.
    config.write_bytes(text.replace(b'"app@example.com", ', b'"stranger@example.net", '))
    proc = run([str(launcher), "-t", "-i"], env, MESSAGE)
    assert proc.returncode == 0, proc.stderr
    assert f"{config} has changed since {launcher} was written" in proc.stderr
    proc = run([str(launcher), "-t", "-i"], env, allowed)
    assert proc.returncode == ExitCode.NOPERM, proc.stderr
    write_launcher(launcher, load_config(config), force=True)
    proc = run([str(launcher), "-t", "-i"], env, MESSAGE)
    assert proc.returncode == 0 and proc.stderr == ""
    assert len(list(spool.glob("*.eml"))) == 3


# -- sendmail without -f and without From (issue 25 #5) --------------------------------------------

MAILX = b"To: bob@example.net\nSubject: disk full\n\n/var is at 97%\n"


@pytest.mark.skipif(os.name != "posix", reason="a login name from the password database")
@pytest.mark.parametrize("through", ["mqd sendmail", "launcher"])
def test_mail_without_any_sender_is_from_the_login_name_at_the_host(
    write_config: Callable[..., Path],
    spool: Path,
    queue_dir: Path,
    tmp_path: Path,
    env: dict[str, str],
    through: str,
) -> None:
    """What mail and mailx run: ``sendmail -i bob@example.net``, a message without From. No
    qualify_domain: the host name (queue.hostname), as Postfix's myorigin defaults to it."""
    import pwd

    login = pwd.getpwuid(os.geteuid()).pw_name
    config = write_config(
        f"""
        [queue]
        dir = "{queue_dir}"
        hostname = "box.example.org"
        [[spool]]
        path = "{spool}"
        relay = "main"
        allowed_senders = ["*@box.example.org"]
        """
        + RELAYS.split("[relays.bulk]")[0]
    )
    if through == "launcher":
        write_launcher(tmp_path / "sendmail", load_config(config))
        command = [str(tmp_path / "sendmail")]
    else:
        command = [str(MQD), "--config", str(config), "sendmail"]
    environment = {**env, "LOGNAME": "mallory", "USER": "mallory"}  # not what is used
    proc = run([*command, "-i", "bob@example.net"], environment, MAILX)
    assert proc.returncode == 0, proc.stderr
    [written] = spool.glob("*.eml")
    message = parse_message(written.read_bytes())
    assert message.sender == f"{login}@box.example.org"
    assert message.headers["from"] == f"{login}@box.example.org"  # added, as Postfix does
    assert message.recipients == ("bob@example.net",)
    # Still subject to the allow-list.
    config.write_text(config.read_text().replace("*@box.example.org", "app@box.example.org"))
    if through == "launcher":
        write_launcher(tmp_path / "sendmail", load_config(config), force=True)
    proc = run([*command, "-i", "bob@example.net"], environment, MAILX)
    assert proc.returncode == ExitCode.NOPERM, proc.stderr
    assert f"sender {login}@box.example.org is not allowed" in proc.stderr
    assert len(list(spool.glob("*.eml"))) == 1
