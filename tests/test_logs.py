"""The text log format: what the standard formatter would write, time stamp included."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mqd.logs import TextFormatter


def test_text_lines_match_the_standard_formatter_across_seconds() -> None:
    ours = TextFormatter()
    standard = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    record = logging.LogRecord("mqd.delivery", logging.INFO, __file__, 1, "%s sent", ("q1",), None)
    for created in (1_796_240_974.001, 1_796_240_974.999, 1_796_240_975.5, 1_796_240_974.25):
        record.created, record.msecs = created, (created % 1) * 1000
        assert ours.format(record) == standard.format(record)


def test_journal_lines_carry_the_priority_and_no_timestamp() -> None:
    from mqd.logs import JournalFormatter

    formatter = JournalFormatter()
    for level, priority in (
        (logging.ERROR, "<3>"),
        (logging.WARNING, "<4>"),
        (logging.INFO, "<6>"),
        (logging.DEBUG, "<7>"),
    ):
        record = logging.LogRecord("mqd.delivery", level, __file__, 1, "%s sent", ("q1",), None)
        assert formatter.format(record) == f"{priority}mqd.delivery: q1 sent"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("mqd.daemon", logging.ERROR, __file__, 1, "bad", (), None)
        record.exc_info = sys.exc_info()
    lines = formatter.format(record).split("\n")
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)
    assert JournalFormatter(worker=2).format(record).startswith("<3>[worker 2] mqd.daemon: bad")


def test_stderr_is_the_journal_only_when_journal_stream_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from mqd.logs import to_journal

    with (tmp_path / "journal").open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert to_journal(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not to_journal(stream)  # a redirection inherited from a unit: not the journal
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not to_journal(stream)


def test_a_daemon_whose_stderr_is_the_journal_logs_priorities(
    tmp_path: Path, env: dict[str, str], write_config, spool: Path, queue_dir: Path
) -> None:
    import os
    import subprocess
    import sys

    config = write_config(
        f"""
        [queue]
        dir = "{queue_dir}"
        [[spool]]
        path = "{spool}"
        allowed_senders = ["app@example.com"]
        [relays.out]
        plugin = "outbox"
        path = "{tmp_path / "outbox"}"
        """
    )
    log = tmp_path / "journal"
    with log.open("w") as stderr:
        st = os.fstat(stderr.fileno())
        env = {**env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.run(
            [sys.executable, "-m", "mqd", "--config", str(config), "run", "--once"],
            stderr=stderr,
            env=env,
            timeout=60,
        )
    assert proc.returncode == 0
    lines = log.read_text().splitlines()
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    assert any(line.startswith("<6>mqd.daemon: mqd stopped") for line in lines)
    assert not any(line[3:7].isdigit() for line in lines), "no timestamp: the journal has one"


@pytest.mark.parametrize("fmt", ["text", "journal"])
def test_a_producers_text_cannot_forge_a_log_line(fmt: str) -> None:
    """An AMQP message_id, an SMTP address or a peer's name is logged as the producer gave it:
    a line break or a control character in it is written escaped, never as a line of its own
    (nor a carriage return that overwrites the line on a terminal)."""
    from mqd.logs import JournalFormatter

    formatter = TextFormatter() if fmt == "text" else JournalFormatter()
    forged = "x\n2026-12-07 20:00:00,000 INFO    mqd.intake: q1 queued from=<ceo@bank.test>"
    record = logging.LogRecord(
        "mqd.mailbox",
        logging.WARNING,
        __file__,
        1,
        "rejected message_id=%s: %s",
        (forged, "a\rb"),
        None,
    )
    [line] = formatter.format(record).split("\n")
    assert "message_id=x\\n2026-12-07" in line and "a\\rb" in line
    plain = logging.LogRecord("mqd.mailbox", logging.INFO, __file__, 1, "%s", ("é\tok ✓",), None)
    assert formatter.format(plain).endswith("é\\tok ✓")  # printable text stays as it is
