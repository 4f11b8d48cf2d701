"""Progress bars for ``mqd run --once`` and ``mqd send --count``: on a terminal only.

A bar is drawn (click's ``progressbar``) only when the stream is a terminal and the user did not
pass ``--no-progress``; in logs, pipes and CI nothing is written. While a bar is shown, each log
line first clears the bar's line, so that log lines and the bar do not run into each other; the
bar is drawn again at its next step.

``run --once`` counts its work up front (the files in the spools and the queued messages due
now) and advances on the daemon's events, through a plugin object implementing
``mqd_track_event`` (``DeliveryProgress``), so the daemon knows nothing about it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from typing import TextIO

import click

from mqd.admin.client import offline
from mqd.config.schema import Config
from mqd.errors import MQDError
from mqd.events import Bounced, Event, EventKind
from mqd.intake.spool import is_spool_name
from mqd.plugins.hookspecs import hookimpl

__all__ = ["Bar", "DeliveryProgress", "count_due_work", "counted", "wanted"]

#: The events after which a message needs nothing more from this ``--once`` run.
_DONE = frozenset(
    {
        EventKind.COMPLETED,
        EventKind.FAILED,
        EventKind.REJECTED,
        EventKind.DELETED,
        EventKind.DEFERRED,
    }
)


def wanted(stream: TextIO, enabled: bool = True) -> bool:
    """True when a bar should be drawn on ``stream``: enabled, and a terminal."""
    if not enabled:
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Bar:
    """A click progress bar whose length may grow, which log lines do not garble.

    Use as a context manager; ``advance()`` moves it, ``grow()`` raises the total.
    """

    def __init__(self, length: int, label: str, stream: TextIO) -> None:
        self.stream = stream
        self._bar = click.progressbar(
            length=length,
            label=label,
            file=stream,
            show_pos=True,
            show_percent=True,
            show_eta=True,
        )
        self._filter = _ClearLine(stream)
        self._handlers: list[logging.Handler] = []

    @property
    def position(self) -> int:
        return self._bar.pos

    @property
    def length(self) -> int:
        return self._bar.length or 0

    def advance(self, steps: int = 1) -> None:
        if self._bar.pos + steps > self.length:
            self.grow(self._bar.pos + steps - self.length)
        self._bar.update(steps)

    def grow(self, steps: int) -> None:
        """More work turned up (e.g. a bounce to deliver)."""
        self._bar.length = self.length + steps
        self._bar.finished = self._bar.pos >= self._bar.length

    def __enter__(self) -> Bar:
        for handler in logging.getLogger().handlers:
            if getattr(handler, "stream", None) is self.stream:
                handler.addFilter(self._filter)
                self._handlers.append(handler)
        self._bar.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handler in self._handlers:
            handler.removeFilter(self._filter)
        self._handlers.clear()
        self._bar.render_progress()
        self._bar.render_finish()


class _ClearLine(logging.Filter):
    """Blanks the bar's line before a log line is written over it."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def filter(self, record: logging.LogRecord) -> bool:
        width = max(1, shutil.get_terminal_size().columns - 1)
        with contextlib.suppress(OSError, ValueError):
            self.stream.write("\r" + " " * width + "\r")
        return True


@contextlib.contextmanager
def maybe_bar(length: int, label: str, stream: TextIO, enabled: bool) -> Iterator[Bar | None]:
    """A ``Bar`` when ``wanted(stream, enabled)`` and there is work, else None."""
    if length <= 0 or not wanted(stream, enabled):
        yield None
        return
    with Bar(length, label, stream) as bar:
        yield bar


def counted(items: Iterable[bytes], bar: Bar | None) -> Iterator[bytes]:
    """``items``, advancing ``bar`` as each one is taken care of (when the next is asked for)."""
    for item in items:
        yield item
        if bar is not None:
            bar.advance()


async def count_due_work(config: Config) -> int:
    """Messages a ``--once`` run will handle: ``.eml`` files in the spools, plus queued entries
    due now. Only counts (the queue may be held by a running daemon: then its entries are not
    counted)."""
    total = 0
    for spool in config.spools:
        with contextlib.suppress(OSError):
            total += sum(1 for name in os.listdir(spool.path) if is_spool_name(name))
    if not config.queue.own_dir.is_dir():
        return total
    try:
        async with offline(config) as admin:
            return total + (await admin.store.counts()).due
    except MQDError:
        return total


class DeliveryProgress:
    """A plugin (``PluginHost(extra=(tracker,))``) that moves ``bar`` as messages finish their
    part of the run: delivered, failed, refused, deleted or deferred. A queued bounce adds one
    message to deliver."""

    def __init__(self, bar: Bar) -> None:
        self.bar = bar
        self._done: set[str] = set()
        self._bounced: set[str] = set()

    @hookimpl
    def mqd_track_event(self, event: Event) -> None:
        if isinstance(event, Bounced) and event.dsn_sent:
            if event.message_id not in self._bounced:
                self._bounced.add(event.message_id)
                self.bar.grow(1)
        elif event.kind in _DONE and event.message_id not in self._done:
            self._done.add(event.message_id)
            self.bar.advance()
