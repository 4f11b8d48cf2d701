"""A daemon running in the test process for the network sources' tests (smtpd, submit, mailbox):
started, recorded (every event it emits) and stopped, and what the hostile-input suites check at
the end of each case: the SMTP sink got only what was allowed, and nothing waits in the queue."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

from smtpserver import SMTPPeer

from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.events import Event, Queued, Rejected
from mqd.intake.source import Source
from mqd.plugins.host import PluginHost
from mqd.relays.memory import MemoryRelay
from mqd.testing import wait_until

__all__ = ["Running", "running", "sink_holds_only"]

R = TypeVar("R", bound="Running")


class Running:
    """A daemon started by ``running`` and the events it emitted."""

    def __init__(self, daemon: Daemon, events: list[Event]) -> None:
        self.daemon = daemon
        self.events = events

    @property
    def source(self) -> Source:
        """The first network source (the configs of these tests have one)."""
        return self.daemon.sources.sources[0]

    @property
    def port(self) -> int:
        """The port the first source listens on (an [[smtpd]] on port 0)."""
        address = self.source.status().listening[0]
        return int(address.rsplit(":", 1)[1])

    @property
    def queued(self) -> list[Queued]:
        return [e for e in self.events if isinstance(e, Queued)]

    @property
    def rejected(self) -> list[Rejected]:
        return [e for e in self.events if isinstance(e, Rejected)]

    async def drained(self) -> None:
        """Wait until the queue is empty: every message queued has had its relay session."""

        async def empty() -> bool:
            return (await self.daemon.store.counts()).total == 0

        await wait_until(empty, "the queue to be empty")


@contextlib.asynccontextmanager
async def running(
    config: Config,
    host: PluginHost,
    kind: type[R] = Running,  # type: ignore[assignment]
) -> AsyncIterator[R]:
    """A daemon for ``config``, ready (the queue open, the sources started), stopped after;
    ``kind``: a subclass of ``Running`` with a test module's own views of it."""
    MemoryRelay.instances.clear()
    daemon = Daemon(config, host=host, shutdown_timeout=5)
    events: list[Event] = []
    emit = daemon.emit

    def record(event: Event) -> None:
        events.append(event)
        emit(event)

    daemon.emit = record  # type: ignore[method-assign]
    daemon.handover.emit = record
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        yield kind(daemon, events)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)


async def sink_holds_only(mqd: Running, sink: SMTPPeer, senders: set[str], count: int) -> None:
    """After the refused input, the allowed messages sent last (``count`` of them, from
    ``senders``) arrive; then the queue is empty and the sink holds nothing else: whatever was
    refused had its chance to get through and did not."""
    await asyncio.to_thread(sink.wait_for, count)
    await mqd.drained()
    assert len(sink.messages) == count, [(m.mail_from, m.rcpt_tos) for m in sink.messages]
    assert {m.mail_from for m in sink.messages} <= senders
    assert len(mqd.queued) == count
