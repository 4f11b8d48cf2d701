"""The failed folder (mqd.admin.failed): real failures made by a daemon run with the memory relay,
then
listed, re-injected into a spool and delivered again, or deleted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from corehelpers import make_message

from mqd.admin.failed import (
    FailedError,
    delete,
    failed_dir,
    find,
    list_failed,
    reinjection,
    retry,
    strip_envelope_lines,
)
from mqd.config.schema import Config
from mqd.message.envelope import parse_message
from mqd.message.reply import Reply
from mqd.plugins.host import PluginHost
from mqd.queue.file.failed import FileFailedFolder
from mqd.relays.memory import MemoryRelay
from mqd.testing import Harness

NO_SUCH_USER = Reply(550, "no such user", "5.1.1")


def configure(harness: Harness, **spool_senders: list[str]) -> Config:
    """A memory relay; spool 0 allows *@example.com, a second spool ``other`` when asked."""
    spools = [{"path": harness.spool_dir, "relay": "mem", "allowed_senders": ["*@example.com"]}]
    if "other" in spool_senders:
        spools.append(
            {
                "path": harness.root / "other",
                "relay": "mem",
                "allowed_senders": spool_senders["other"],
            }
        )
    return harness.configure({"mem": {"plugin": "memory"}}, spools=spools)


async def run(harness: Harness, failing: tuple[str, ...] = ()) -> MemoryRelay:
    """One --once run in which each address in ``failing`` gets a 550."""
    daemon = harness.make_daemon(host=PluginHost(entry_points=False))
    relay = daemon.relays["mem"]
    assert isinstance(relay, MemoryRelay)
    for address in failing:
        relay.replies[address] = NO_SUCH_USER
    await daemon.run()
    return relay


async def test_a_partial_failure_is_retried_to_the_failed_recipients_only(
    mqd_harness: Harness,
) -> None:
    config = configure(mqd_harness)
    # The envelope given in leading lines: the retry replaces them rather than adding more.
    mqd_harness.drop(
        make_message(
            to=("alice@example.net", "bob@example.net"),
            envelope=("app@example.com", ("alice@example.net", "bob@example.net")),
            subject="partial",
        )
    )
    first = await run(mqd_harness, failing=("bob@example.net",))
    assert [e.recipients for e in first.sent] == [("alice@example.net",), ("app@example.com",)]

    [message] = await list_failed(failed_dir(config))
    assert message.stage == "delivery" and message.sender == "app@example.com"
    assert [(r.address, r.status) for r in message.recipients] == [
        ("alice@example.net", "delivered"),
        ("bob@example.net", "failed"),
    ]

    report = await retry(config, [message])
    [(old_id, written, recipients)] = report.retried
    assert old_id == message.id and recipients == ["bob@example.net"]
    assert written.parent == mqd_harness.spool_dir
    content = written.read_bytes()
    assert content.startswith(
        b"X-Sender: <app@example.com>\r\nX-Receiver: <bob@example.net>\r\nFrom:"
    )
    assert content.count(b"X-Receiver") == 1 and content.count(b"X-Sender") == 1
    assert await list_failed(failed_dir(config)) == []
    assert not (config.failed_dir / f"{message.id}.eml").exists()

    again = await run(mqd_harness)
    [envelope] = again.sent
    assert envelope.recipients == ("bob@example.net",)
    assert envelope.sender == "app@example.com"
    assert b"Subject: partial" in envelope.message
    assert mqd_harness.queued() == [] and mqd_harness.failed() == []


async def test_a_policy_refusal_goes_back_unchanged_into_the_spool_that_refused_it(
    mqd_harness: Harness,
) -> None:
    configure(mqd_harness, other=["app@example.com"])
    original = make_message(sender="news@example.com", to=("carol@example.net",))
    mqd_harness.drop(original, spool=1)
    await run(mqd_harness)
    [refused] = mqd_harness.failed()
    assert refused["stage"] == "policy"

    config = configure(mqd_harness, other=["*@example.com"])  # the administrator's fix
    [message] = await find(failed_dir(config), [refused["id"][:12]])
    report = await retry(config, [message])
    [(_, written, recipients)] = report.retried
    assert recipients is None  # the envelope is left as it was
    assert written.parent == mqd_harness.root / "other"
    assert written.read_bytes() == original

    delivered = await run(mqd_harness)
    assert [e.recipients for e in delivered.sent] == [("carol@example.net",)]


async def test_a_bounce_that_failed_is_not_retried(mqd_harness: Harness) -> None:
    config = configure(mqd_harness)
    mqd_harness.drop(make_message(to=("bob@example.net",)))
    await run(mqd_harness, failing=("bob@example.net", "app@example.com"))
    messages = await list_failed(failed_dir(config))
    [bounce] = [m for m in messages if m.is_bounce]
    [original] = [m for m in messages if not m.is_bounce]
    assert bounce.sender == ""

    with pytest.raises(FailedError, match="is a bounce"):
        await retry(config, [bounce])
    report = await retry(config, messages, skip_unretryable=True)
    assert [old for old, _, _ in report.retried] == [original.id]
    assert [(old, "is a bounce" in why) for old, why in report.skipped] == [(bounce.id, True)]
    assert [m.id for m in await list_failed(failed_dir(config))] == [bounce.id]

    assert await delete(config, [bounce]) == [bounce.id]
    assert await list_failed(failed_dir(config)) == []
    assert [p.name for p in config.failed_dir.iterdir() if not p.name.startswith(".")] == []


async def test_find_by_prefix_and_its_errors(tmp_path: Path) -> None:
    for entry_id in ("1a2000aaaa", "1a2000bbbb"):
        (tmp_path / f"{entry_id}.json").write_text(json.dumps({"stage": "intake"}))
        (tmp_path / f"{entry_id}.eml").write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    folder = FileFailedFolder(tmp_path)
    [message] = await find(folder, ["1a2000b"])
    assert message.id == "1a2000bbbb" and message.location == str(tmp_path / "1a2000bbbb.eml")
    assert [m.id for m in await find(folder, ["1a2000aaaa", "1a2000a"])] == ["1a2000aaaa"]
    with pytest.raises(FailedError, match="start of 2 failed ids"):
        await find(folder, ["1a2000"])
    with pytest.raises(FailedError, match="'mqd failed list' shows the ids"):
        await find(folder, ["ffff"])
    with pytest.raises(FailedError):
        await find(folder, [""])


async def test_a_record_without_its_message_cannot_be_retried_but_can_be_deleted(
    mqd_harness: Harness,
) -> None:
    config = configure(mqd_harness)
    directory = config.failed_dir
    directory.mkdir(parents=True)
    (directory / "1a2000cccc.json").write_text(json.dumps({"stage": "intake", "reason": "x"}))
    (directory / "1a2000dddd.json").write_text("{not json")
    messages = await list_failed(failed_dir(config))
    assert [(m.id, m.stage, m.location) for m in messages] == [
        ("1a2000cccc", "intake", None),
        ("1a2000dddd", "unreadable", None),
    ]
    with pytest.raises(FailedError, match="'mqd failed delete 1a2000cccc'"):
        await retry(config, messages[:1])
    assert await delete(config, messages) == ["1a2000cccc", "1a2000dddd"]
    assert await list_failed(failed_dir(config)) == []


async def test_nothing_failed_yet_is_an_empty_list(tmp_path: Path) -> None:
    assert await list_failed(FileFailedFolder(tmp_path / "missing")) == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"X-Sender: <a@b.c>\r\nX-Receiver: <d@e.f>\r\nFrom: a@b.c\r\n\r\nx",
            b"From: a@b.c\r\n\r\nx",
        ),
        (b"x-sender:a@b.c\nX-RECEIVER: \n <d@e.f>\nTo: d@e.f\n\nx", b"To: d@e.f\n\nx"),
        # A blank before the colon is not an envelope line (as for read_envelope): kept.
        (
            b"X-Sender : <a@b.c>\r\nFrom: a@b.c\r\n\r\nx",
            b"X-Sender : <a@b.c>\r\nFrom: a@b.c\r\n\r\nx",
        ),
        (
            b"X-Sender: <a@b.c>\nX-Receiver\t: <d@e.f>\nTo: d@e.f\n\nx",
            b"X-Receiver\t: <d@e.f>\nTo: d@e.f\n\nx",
        ),
        (
            b"From: a@b.c\r\nX-Sender: <a@b.c>\r\n\r\nx",
            b"From: a@b.c\r\nX-Sender: <a@b.c>\r\n\r\nx",
        ),
        (b" folded: first\r\n\r\n", b" folded: first\r\n\r\n"),
        (b"X-Sender: <a@b.c>", b""),
    ],
)
def test_strip_envelope_lines(data: bytes, expected: bytes) -> None:
    assert strip_envelope_lines(data) == expected


@pytest.mark.parametrize(
    "first", [b"X-Sender : <evil@example.org>", b"x-receiver\t: <evil@example.org>"]
)
def test_both_readers_leave_a_blank_before_the_colon_to_the_headers(first: bytes) -> None:
    # What read_envelope takes for the envelope is what a retry strips, and nothing else.
    data = first + b"\r\nFrom: app@example.com\r\nTo: a@example.net\r\n\r\nbody\r\n"
    parsed = parse_message(data)
    assert (parsed.sender, parsed.recipients) == ("app@example.com", ("a@example.net",))
    assert strip_envelope_lines(data) == data


def test_reinjection_needs_a_failed_usable_recipient(tmp_path: Path) -> None:
    from mqd.queue.failed import FailedMessage, FailureRecord

    def message(recipients: list[dict[str, str]]) -> FailedMessage:
        record = {"stage": "delivery", "sender": "app@example.com", "recipients": recipients}
        return FailedMessage("1a2", 0.0, FailureRecord.from_dict(record), str(tmp_path / "x"))

    delivered = {"address": "a@example.net", "status": "delivered"}
    invalid = {"address": "not an address", "status": "failed"}
    with pytest.raises(FailedError, match="no recipient failed"):
        reinjection(message([delivered]), b"From: x\r\n\r\n")
    with pytest.raises(FailedError, match="not valid addresses"):
        reinjection(message([delivered, invalid]), b"From: x\r\n\r\n")
    failed = {"address": "b@example.net", "status": "failed"}
    content, recipients = reinjection(message([delivered, invalid, failed]), b"From: x\r\n\r\n")
    assert recipients == ["b@example.net"]
    assert (
        content == b"X-Sender: <app@example.com>\r\nX-Receiver: <b@example.net>\r\nFrom: x\r\n\r\n"
    )


def write_failed(directory: Path, entry_id: str, failed_at: float, **record: object) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    data = {"id": entry_id, "failed_at": failed_at, "stage": "policy", "reason": "x", **record}
    (directory / f"{entry_id}.json").write_text(json.dumps(data))
    (directory / f"{entry_id}.eml").write_bytes(b"Subject: x\r\n\r\nx\r\n")


async def test_a_daemon_removes_failed_messages_older_than_the_retention(
    mqd_harness: Harness,
) -> None:
    import time

    config = mqd_harness.configure({"mem": {"plugin": "memory"}}, queue={"failed_retention": "7d"})
    now = time.time()
    write_failed(config.failed_dir, "1a2000old", now - 8 * 86400)
    write_failed(config.failed_dir, "1a2000new", now - 6 * 86400)
    await run(mqd_harness)
    assert [m.id for m in await list_failed(failed_dir(config))] == ["1a2000new"]
    assert not (config.failed_dir / "1a2000old.eml").exists()


async def test_a_retention_of_zero_keeps_them_for_good(mqd_harness: Harness) -> None:
    import time

    config = mqd_harness.configure({"mem": {"plugin": "memory"}}, queue={"failed_retention": "0"})
    write_failed(config.failed_dir, "1a2000ancient", time.time() - 400 * 86400)
    await run(mqd_harness)
    assert [m.id for m in await list_failed(failed_dir(config))] == ["1a2000ancient"]


def test_failed_list_limits_and_filters_and_delete_by_age_or_all(
    mqd_harness: Harness, env: dict[str, str]
) -> None:
    import subprocess
    import sys
    import time

    config = configure(mqd_harness)
    now = time.time()
    for n in range(8):
        write_failed(
            config.failed_dir,
            f"1a20000{n}",
            now - (10 - n) * 86400,
            stage="delivery" if n % 2 else "policy",
            sender="app@example.com" if n < 4 else "news@example.org",
        )

    def mqd(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "mqd", "--config", str(config.source), *argv]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

    listed = mqd("failed", "list", "--limit", "3")
    assert listed.returncode == 0
    assert "1a200007" in listed.stdout and "1a200004" not in listed.stdout
    assert "(and 5 older: --limit 0 lists them all)" in listed.stdout
    shown = json.loads(mqd("failed", "list", "--json", "--stage", "delivery").stdout)
    assert [m["id"] for m in shown] == ["1a200001", "1a200003", "1a200005", "1a200007"]
    shown = json.loads(mqd("failed", "list", "--json", "--sender", "*@example.org").stdout)
    assert [m["id"] for m in shown] == ["1a200004", "1a200005", "1a200006", "1a200007"]

    refused = mqd("failed", "delete", "--older-than", "5d")  # not a terminal: --yes needed
    assert refused.returncode == 64
    deleted = mqd("failed", "delete", "--older-than", "5d", "--yes")
    assert deleted.stdout.strip() == "deleted 6 failed message(s)"
    left = json.loads(mqd("failed", "list", "--json", "--limit", "0").stdout)
    assert [m["id"] for m in left] == ["1a200006", "1a200007"]
    assert mqd("failed", "delete", "--all", "--older-than", "1d").returncode == 64
    deleted = mqd("failed", "delete", "--all", "--yes", "-v")
    assert deleted.stdout.splitlines() == [
        "deleted 1a200006",
        "deleted 1a200007",
        "deleted 2 failed message(s)",
    ]
    assert json.loads(mqd("failed", "list", "--json").stdout) == []


def _refused_five_then_allowed(harness: Harness) -> Config:
    """Five messages refused by policy in spool ``other``, whose allow-list is then fixed."""
    configure(harness, other=["app@example.com"])
    for n in range(5):
        harness.drop(make_message(sender="news@example.com", subject=f"n{n}"), spool=1)
    import asyncio

    asyncio.run(run(harness))
    assert len(harness.failed()) == 5
    return configure(harness, other=["*@example.com"])


def test_failed_retry_all_draws_a_bar_on_a_terminal_then_prints_one_total(
    mqd_harness: Harness, env: dict[str, str]
) -> None:
    """300 failures retried printed 300 lines; now a bar on the terminal (stderr) and one line,
    the per-message lines behind -v."""
    import os
    import pty
    import subprocess
    import sys

    config = _refused_five_then_allowed(mqd_harness)
    command = [sys.executable, "-m", "mqd", "--config", str(config.source), "failed", "retry"]
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*command, "--all"], stdout=subprocess.PIPE, stderr=slave, env=env, text=True
    )
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert stdout == "retried 5 messages\n"
    assert b"retrying" in drawn and b"5/5" in drawn and b"100%" in drawn
    assert len(list((mqd_harness.root / "other").iterdir())) == 5
    assert mqd_harness.failed() == []


def test_failed_retry_all_off_a_terminal_prints_the_total_or_each_with_v(
    mqd_harness: Harness, env: dict[str, str]
) -> None:
    import subprocess
    import sys

    config = _refused_five_then_allowed(mqd_harness)
    ids = sorted(f["id"] for f in mqd_harness.failed())
    command = [sys.executable, "-m", "mqd", "--config", str(config.source), "failed", "retry"]
    first = subprocess.run(
        [*command, "--all", "-v"], capture_output=True, text=True, env=env, timeout=60
    )
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert sorted(line.split()[1].rstrip(":") for line in lines) == ids
    assert all(line.startswith("retried ") for line in lines)
    assert first.stderr == ""  # no bar off a terminal

    again = subprocess.run([*command, "--all"], capture_output=True, text=True, env=env)
    assert again.stdout == "no failed messages\n"


async def test_retry_reports_each_message_dealt_with(mqd_harness: Harness) -> None:
    config = configure(mqd_harness)
    mqd_harness.drop(make_message(to=("bob@example.net",)))
    await run(mqd_harness, failing=("bob@example.net", "app@example.com"))
    messages = await list_failed(failed_dir(config))
    ticks: list[int] = []
    report = await retry(
        config, messages, skip_unretryable=True, done=lambda: ticks.append(len(ticks))
    )
    assert len(report.retried) == 1 and len(report.skipped) == 1  # the bounce
    assert len(ticks) == len(messages) == 2
