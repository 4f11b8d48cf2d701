"""Progress bars (mqd.cli.progress): drawn on a terminal only. A fake terminal is a text stream
whose
isatty() says True; click draws on it exactly as on a real one."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from corehelpers import make_event, make_message

from mqd.cli.main import cli
from mqd.cli.progress import Bar, DeliveryProgress, count_due_work, counted, maybe_bar, wanted
from mqd.events import EventKind
from mqd.message.reply import Reply
from mqd.plugins.host import PluginHost
from mqd.queue.entry import QueueEntry, RecipientState
from mqd.relays.memory import MemoryRelay
from mqd.testing import Harness


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal() -> FakeTerminal:
    return FakeTerminal()


def test_a_bar_is_wanted_on_a_terminal_unless_turned_off(terminal: FakeTerminal) -> None:
    assert wanted(terminal)
    assert not wanted(terminal, enabled=False)
    assert not wanted(io.StringIO())
    closed = io.StringIO()
    closed.close()
    assert not wanted(closed)  # isatty() raises ValueError: no bar, no crash


def test_nothing_is_written_off_a_terminal() -> None:
    stream = io.StringIO()
    with maybe_bar(3, "delivering", stream, True) as bar:
        assert bar is None
        assert list(counted([b"a", b"b"], bar)) == [b"a", b"b"]
    assert stream.getvalue() == ""


def test_no_bar_without_work_or_when_turned_off(terminal: FakeTerminal) -> None:
    with maybe_bar(0, "delivering", terminal, True) as bar:
        assert bar is None
    with maybe_bar(5, "delivering", terminal, False) as bar:
        assert bar is None
    assert terminal.getvalue() == ""


def test_counted_advances_as_each_item_is_taken_care_of(terminal: FakeTerminal) -> None:
    with maybe_bar(3, "queueing", terminal, True) as bar:
        assert bar is not None
        items = counted([b"1", b"2", b"3"], bar)
        next(items)
        assert bar.position == 0  # the first is being written
        next(items)
        assert bar.position == 1
        assert list(items) == [b"3"]
        assert bar.position == 3
    output = terminal.getvalue()
    assert "queueing" in output and "3/3" in output and "100%" in output
    assert output.endswith("\n")


def test_a_bar_grows_when_more_work_turns_up(terminal: FakeTerminal) -> None:
    with Bar(1, "delivering", terminal) as bar:
        bar.advance()
        bar.advance()  # more than announced: the total follows
        assert (bar.position, bar.length) == (2, 2)
        bar.grow(1)
        assert (bar.position, bar.length) == (2, 3)
    assert "2/3" in terminal.getvalue()


@pytest.fixture
def log_on(terminal: FakeTerminal) -> Iterator[logging.Handler]:
    handler = logging.StreamHandler(terminal)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


def test_a_log_line_first_clears_the_bar(terminal: FakeTerminal, log_on: logging.Handler) -> None:
    with Bar(2, "delivering", terminal) as bar:
        bar.advance()
        logging.getLogger("mqd.test").warning("something happened")
        assert log_on.filters  # installed while the bar is shown
    assert not log_on.filters  # and removed after
    output = terminal.getvalue()
    before, _, _ = output.partition("something happened")
    assert "1/2" in before
    assert before.endswith(" \r")  # the bar's line was blanked, the cursor back at its start


def test_delivery_progress_counts_each_message_once() -> None:
    bar = Bar(3, "delivering", FakeTerminal())
    tracker = DeliveryProgress(bar)
    for kind, message_id, given in [
        (EventKind.CLAIMED, "a", {}),
        (EventKind.QUEUED, "a", {}),
        (EventKind.DELIVERED, "a", {}),
        (EventKind.COMPLETED, "a", {}),
        (EventKind.DEFERRED, "b", {}),
        (EventKind.DEFERRED, "b", {"recipient": "carol@example.net"}),  # the same message
        (EventKind.BOUNCED, "c", {"dsn_sent": True}),
        (EventKind.BOUNCED, "c", {"dsn_sent": True}),  # one DSN for both recipients
        (EventKind.FAILED, "c", {}),
        (EventKind.BOUNCED, "d", {"dsn_sent": False}),  # from <>: no DSN
        (EventKind.REJECTED, "e", {}),
    ]:
        tracker.mqd_track_event(make_event(kind, message_id, **given))
    assert bar.position == 4  # a, b, c, e
    assert bar.length == 4  # 3 announced + the DSN of c


def test_count_due_work_counts_spool_files_and_due_entries(mqd_harness: Harness) -> None:
    config = mqd_harness.configure({"mem": {"plugin": "memory"}})
    mqd_harness.drop(make_message())
    mqd_harness.drop(make_message())
    (mqd_harness.spool_dir / ".in-progress.tmp").write_bytes(b"x")  # a producer's temp file
    now = time.time()

    def entry(entry_id: str, due: float, held: bool = False) -> QueueEntry:
        return QueueEntry(
            id=entry_id,
            sender="app@example.com",
            recipients=[RecipientState("a@example.net")],
            relay="mem",
            source="test",
            created_at=now,
            next_attempt_at=due,
            held=held,
        )

    # Three entries with their state files, as a daemon leaves them, and a state file broken.
    state_dir, body_dir = config.queue.dir / "state", config.queue.dir / "messages" / "test"
    state_dir.mkdir(parents=True)
    body_dir.mkdir(parents=True)
    for queued in (entry("due", now - 1), entry("later", now + 3600), entry("held", now - 1, True)):
        (state_dir / f"{queued.id}.json").write_bytes(queued.to_json())
        (body_dir / f"{queued.id}.eml").write_bytes(b"Subject: x\r\n\r\n")
    (state_dir / "broken.json").write_text("{")
    assert asyncio.run(count_due_work(config)) == 3  # 2 files + "due"


async def test_a_run_once_moves_the_bar_to_the_end(
    mqd_harness: Harness, terminal: FakeTerminal
) -> None:
    config = mqd_harness.configure({"mem": {"plugin": "memory"}})
    for to in ("a@example.net", "b@example.net", "bad@example.net"):
        mqd_harness.drop(make_message(to=(to,)))
    total = await count_due_work(config)
    assert total == 3
    with maybe_bar(total, "delivering", terminal, True) as bar:
        assert bar is not None
        host = PluginHost(entry_points=False, extra=(DeliveryProgress(bar),))
        daemon = mqd_harness.make_daemon(host=host)
        relay = daemon.relays["mem"]
        assert isinstance(relay, MemoryRelay)
        relay.replies["bad@example.net"] = Reply(550, "no such user", "5.1.1")
        await daemon.run()
        assert (bar.position, bar.length) == (4, 4)  # the bounce to app@ was delivered too
    assert len(relay.sent) == 3  # a, b and the bounce
    assert "4/4" in terminal.getvalue()


@pytest.fixture
def stderr_terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], FakeTerminal]]:
    """Makes sys.stderr a terminal for the command itself (CliRunner's streams are no
    terminals). Called in the test: pytest sets its own sys.stderr after fixtures are set up.
    The root logger, which the command points at that stream, is restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def install() -> FakeTerminal:
        terminal = FakeTerminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        return terminal

    yield install
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("turned_off", [False, True])
def test_mqd_run_once_draws_the_bar_on_a_terminal(
    mqd_harness: Harness, stderr_terminal: Callable[[], FakeTerminal], turned_off: bool
) -> None:
    terminal = stderr_terminal()
    mqd_harness.configure({"mem": {"plugin": "memory"}})
    for _ in range(2):
        mqd_harness.drop(make_message())
    argv = ["--config", str(mqd_harness.config_path), "--log-level", "error", "run", "--once"]
    cli.main([*argv, *(["--no-progress"] if turned_off else [])], standalone_mode=False)
    assert list(mqd_harness.spool_dir.glob("*.eml")) == [] and mqd_harness.queued() == []
    output = terminal.getvalue()
    if turned_off:
        assert output == ""
    else:
        assert "delivering" in output and "2/2" in output and "100%" in output


def test_mqd_send_count_draws_the_bar_on_a_terminal(
    mqd_harness: Harness, stderr_terminal: Callable[[], FakeTerminal]
) -> None:
    mqd_harness.configure({"mem": {"plugin": "memory"}})  # mqd send takes configured spools
    terminal = stderr_terminal()
    argv = ["send", "--from", "app@example.com", "--to", "a@example.net", "--body", "x"]
    spool = ["--spool", str(mqd_harness.spool_dir)]
    config = ["--config", str(mqd_harness.config_path)]
    cli.main([*config, *argv, *spool, "--count", "3"], standalone_mode=False)
    assert len(list(mqd_harness.spool_dir.glob("*.eml"))) == 3
    assert "queueing" in terminal.getvalue() and "3/3" in terminal.getvalue()
