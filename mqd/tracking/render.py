"""Plain-text timelines for ``mqd history`` and ``mqd events``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

__all__ = ["event_line", "history_lines"]


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def event_line(event: Mapping[str, Any], *, with_message: bool = False) -> str:
    """``2026-11-23 10:00:01.234  dispatched   bob@example.org  via smtp: 250 2.0.0 OK``."""
    parts = [_when(float(event["at"]))]
    if with_message:
        parts.append(str(event["message"]))
    parts.append(f"{event['status']:<12}")
    parts.append(event.get("recipient") or "(message)")
    tail = []
    if event.get("source") and event["source"] != "mqd":
        tail.append(f"from {event['source']}")
    if event.get("relay"):
        tail.append(f"via {event['relay']}")
    if event.get("provider_id"):
        tail.append(f"id {event['provider_id']}")
    detail = event.get("detail") or {}
    if detail.get("url"):
        tail.append(str(detail["url"]))
    line = "  ".join(parts)
    if tail:
        line += "  " + ", ".join(tail)
    if event.get("reply"):
        line += f": {event['reply']}"
    return line


def history_lines(history: Mapping[str, Any]) -> list[str]:
    """A message's header (id, Message-ID, sender, recipients' statuses), then its timeline."""
    lines = [f"{history['id']}  {history['status']}"]
    if history.get("message_id"):
        lines.append(f"  message-id: {history['message_id']}")
    lines.append(f"  from: <{history.get('sender') or ''}>")
    for rcpt in history.get("recipients", []):
        lines.append(f"  to: <{rcpt['address']}>  {rcpt['status']}")
    lines.append("")
    lines += ["  " + event_line(event) for event in history.get("events", [])]
    return lines
