"""Plain-text timelines for ``mqd history`` and ``mqd events``."""

from __future__ import annotations

import time

from mqd.tracking.answers import MessageHistory, TimelineEvent

__all__ = ["event_line", "history_lines"]


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def event_line(event: TimelineEvent, *, with_message: bool = False) -> str:
    """``2026-11-23 10:00:01.234  dispatched   bob@example.org  via smtp: 250 2.0.0 OK``."""
    parts = [_when(event.at)]
    if with_message:
        parts.append(event.message)
    parts.append(f"{event.status.value:<12}")
    parts.append(event.recipient or "(message)")
    tail = []
    if event.source and event.source != "mqd":
        tail.append(f"from {event.source}")
    if event.relay:
        tail.append(f"via {event.relay}")
    if event.provider_id:
        tail.append(f"id {event.provider_id}")
    if event.detail.get("url"):
        tail.append(str(event.detail["url"]))
    line = "  ".join(parts)
    if tail:
        line += "  " + ", ".join(tail)
    if event.reply:
        line += f": {event.reply}"
    return line


def history_lines(history: MessageHistory) -> list[str]:
    """A message's header (id, Message-ID, sender, recipients' statuses), then its timeline."""
    lines = [f"{history.id}  {history.status.value}"]
    if history.message_id:
        lines.append(f"  message-id: {history.message_id}")
    if history.subject:
        lines.append(f"  subject: {history.subject}")
    if history.not_a_message:
        lines.append(f"  not a message: {history.not_a_message}")
    else:
        lines.append(f"  from: <{history.sender}>")
    for rcpt in history.recipients:
        lines.append(f"  to: <{rcpt.address}>  {rcpt.status.value}")
    lines.append("")
    lines += ["  " + event_line(event) for event in history.events]
    return lines
