"""Logging on stderr: readable lines, or one JSON object per line (``--log-format json``).

Delivery lines carry structured fields (``extra={"mqd": {...}}``) that the JSON format emits
as keys, so a log pipeline can filter by id, sender, recipient, relay or outcome.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["JSONFormatter", "TextFormatter", "setup_logging"]

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


class TextFormatter(logging.Formatter):
    """``2026-12-02 19:50:25,481 INFO    mqd.delivery: ...``; the date and time are formatted
    once a second, not for every line (two lines per message at info level). The workers of
    queue.workers after the first add ``[worker 2]`` (and so on) before the logger's name."""

    def __init__(self, worker: int = 1) -> None:
        tag = f"[worker {worker}] " if worker != 1 else ""
        super().__init__(f"%(asctime)s %(levelname)-7s {tag}%(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


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
    handler.setFormatter(JSONFormatter(worker) if fmt == "json" else TextFormatter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtplib and asyncio are chatty at debug level; keep them at warning unless asked.
    if level.lower() != "debug":
        logging.getLogger("asyncio").setLevel(logging.WARNING)
