"""Logging on stderr: readable lines, or one JSON object per line (``--log-format json``).

Delivery lines carry structured fields (``extra={"mqd": {...}}``) that the JSON format emits
as keys, so a log pipeline can filter by id, sender, recipient, relay or outcome.

When stderr is systemd's journal (``$JOURNAL_STREAM`` names it), text lines carry the syslog
priority as a ``<N>`` prefix (sd-daemon(3)), so ``journalctl -p err`` finds the errors, and no
timestamp (the journal stamps every line itself).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

__all__ = [
    "JSONFormatter",
    "JournalFormatter",
    "TextFormatter",
    "one_line",
    "setup_logging",
    "to_journal",
]

LOG_FORMATS = ("text", "json")


class JSONFormatter(logging.Formatter):
    def __init__(self, worker: int = 1) -> None:
        super().__init__()
        #: Which of queue.workers' processes logs (a "worker" key only when not the first).
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker != 1:
            data["worker"] = self.worker
        fields = getattr(record, "mqd", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def one_line(message: str) -> str:
    """``message`` with its line breaks and control characters escaped (``\\n``, ``\\x00``):
    what a producer gave (an AMQP message_id, an SMTP address) cannot forge a log line."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in message)


class TextFormatter(logging.Formatter):
    """``2026-12-02 19:50:25,481 INFO    mqd.delivery: ...``; the date and time are formatted
    once a second, not for every line (two lines per message at info level). The workers of
    queue.workers after the first add ``[worker 2]`` (and so on) before the logger's name."""

    def __init__(self, worker: int = 1) -> None:
        tag = f"[worker {worker}] " if worker != 1 else ""
        super().__init__(f"%(asctime)s %(levelname)-7s {tag}%(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)  # a traceback still follows on its lines
        return super().formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


class JournalFormatter(logging.Formatter):
    """``<6>mqd.delivery: ...``: the priority for the journal, every line of a record (a
    traceback's too) prefixed, no timestamp."""

    #: Python's levels as syslog priorities (sd-daemon(3)'s SD_ERR and friends).
    PRIORITIES = (
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
    )

    def __init__(self, worker: int = 1) -> None:
        tag = f"[worker {worker}] " if worker != 1 else ""
        super().__init__(f"{tag}%(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in self.PRIORITIES if record.levelno >= level), 7)
        prefix = f"<{priority}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def to_journal(stream: Any = None) -> bool:
    """Whether ``stream`` (default: stderr) is systemd's journal: ``$JOURNAL_STREAM`` holds the
    device and inode of the stream systemd connected, which an inherited redirection no longer
    matches."""
    wanted = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = wanted.partition(":")
    if not device or not inode:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def setup_logging(level: str = "info", fmt: str = "text", *, worker: int = 1) -> None:
    """Send mqd's logs to stderr at ``level`` in ``fmt`` ("text" or "json"), marked as
    ``worker``'s when not the first of queue.workers."""
    # Neither format shows the thread, the process or the source line: not looking them up
    # for every record makes a line a third cheaper (the logging docs' "Optimization").
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = JSONFormatter(worker)
    elif to_journal():
        formatter = JournalFormatter(worker)
    else:
        formatter = TextFormatter(worker)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtplib and asyncio are chatty at debug level; keep them at warning unless asked.
    if level.lower() != "debug":
        logging.getLogger("asyncio").setLevel(logging.WARNING)
