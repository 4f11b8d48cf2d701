"""The intake source contract: a plugin's source, registered with ``mqd_register_sources`` and
configured as ``[[source]] kind = "..."``, hands messages over through the same path as
``[[smtpd]]`` (policy, route, the durable accept), to the in-test SMTP sink."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from corehelpers import make_message
from smtpserver import SMTPPeer

from mqd import (
    Config,
    HandOver,
    Queued,
    RegisterSource,
    Source,
    SourceConfig,
    SourceStatus,
    Submission,
    SubmissionError,
    hookimpl,
)
from mqd.config.load import load_config
from mqd.daemon.root import Daemon
from mqd.errors import ConfigError
from mqd.events import Event
from mqd.plugins.host import PluginHost
from mqd.testing import wait_until


class OneShot(Source):
    """A plugin's source: hands over one message from its table's ``sender`` to ``to``."""

    def __init__(self, config: SourceConfig, app: Config, handover: HandOver) -> None:
        super().__init__(config, app, handover)
        assert config.options is not None
        self.sender = config.options.string("sender")
        self.to = config.options.string("to")
        config.options.finish()
        self.outcome: str | SubmissionError | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._hand_over())

    async def _hand_over(self) -> None:
        message = make_message(sender=self.sender, to=(self.to,))
        try:
            self.outcome = await self.handover.submit(
                self.config, Submission(self.sender, (self.to,), message, peer="test")
            )
            self.accepted += 1
        except SubmissionError as exc:
            self.outcome = exc
            self.refused += 1

    async def stop(self) -> None:
        if self._task is not None:
            await self._task

    def status(self) -> SourceStatus:
        name, kind = self.config.name, self.config.kind
        return SourceStatus(name, kind, (), 0, self.accepted, self.refused)


class OneShotPlugin:
    @hookimpl
    def mqd_register_sources(self, register: RegisterSource) -> None:
        register("oneshot", OneShot)


@pytest.fixture
def plugin_host() -> PluginHost:
    return PluginHost(entry_points=False, extra=[OneShotPlugin()])


@pytest.fixture
def source_config(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path, smtp_server: SMTPPeer
) -> Callable[[str], Config]:
    def make(sources: str) -> Config:
        text = f"""
            [queue]
            dir = "{queue_dir}"
            [[spool]]
            path = "{spool}"
            allowed_senders = ["*@example.com"]
            [relays.sink]
            plugin = "smtp"
            host = "127.0.0.1"
            port = {smtp_server.port}
            security = "none"
        """
        return load_config(write_config(textwrap.dedent(text) + textwrap.dedent(sources)))

    return make


async def test_a_plugins_source_hands_over_through_the_same_path(
    source_config: Callable[[str], Config], plugin_host: PluginHost, smtp_server: SMTPPeer
) -> None:
    config = source_config(
        """
        [[source]]
        kind = "oneshot"
        allowed_senders = ["*@example.com"]
        sender = "app@example.com"
        to = "alice@example.net"

        [[source]]
        kind = "oneshot"
        allowed_senders = ["*@example.com"]
        sender = "mallory@evil.test"
        to = "alice@example.net"
        """
    )
    daemon = Daemon(config, host=plugin_host, shutdown_timeout=5)
    events: list[Event] = []
    emit = daemon.emit
    daemon.handover.emit = lambda event: (events.append(event), emit(event))[1]
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 10)
    good, evil = daemon.sources.sources
    assert isinstance(good, OneShot) and isinstance(evil, OneShot)
    await wait_until(lambda: good.outcome and evil.outcome, "both handed over")
    [received] = await asyncio.to_thread(smtp_server.wait_for, 1)
    assert received.rcpt_tos == ["alice@example.net"]
    [queued] = [e for e in events if isinstance(e, Queued)]
    assert (queued.message_id, queued.source, queued.peer) == (good.outcome, "source[0]", "test")
    assert isinstance(evil.outcome, SubmissionError)
    assert evil.outcome.stage == "policy" and evil.outcome.permanent
    assert "mallory@evil.test" in evil.outcome.reason
    status = await daemon.admin.status()
    assert [(s.name, s.kind, s.accepted, s.refused) for s in status.sources] == [
        ("source[0]", "oneshot", 1, 0),
        ("source[1]", "oneshot", 0, 1),
    ]
    daemon.request_stop()
    await asyncio.wait_for(task, 15)


ALLOWED = 'allowed_senders = ["*@example.com"]'


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('[[source]]\nallowed_senders = ["*@example.com"]', r"source\[0\]\.kind.*is required"),
        ('[[source]]\nkind = "smtpd"', r"source\[0\]\.kind.*its own \[\[smtpd\]\] tables"),
        (
            '[[source]]\nkind = "kafka"\n' + ALLOWED,
            r"no plugin registered an intake source 'kafka'",
        ),
        ('[[source]]\nkind = "oneshot"\nto = "a@example.net"\n' + ALLOWED, r"source\[0\]\.sender"),
        ('[[source]]\nkind = "oneshot"', r"source\[0\]\.allowed_senders.*never an open relay"),
    ],
)
def test_a_source_table_that_cannot_be_built_is_named(
    source_config: Callable[[str], Config], plugin_host: PluginHost, table: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        Daemon(source_config(table), host=plugin_host)
