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

__all__ = ["JSONFormatter", "setup_logging"]

LOG_FORMATS = ("text", "json")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "mqd", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send mqd's logs to stderr at ``level`` in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtplib and asyncio are chatty at debug level; keep them at warning unless asked.
    if level.lower() != "debug":
        logging.getLogger("asyncio").setLevel(logging.WARNING)
