"""``mqd failed list``: the failed folder as text, a line per message and what went wrong."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from mqd.admin.render import _address, _recipient_line, human_age
from mqd.queue.failed import FailedMessage

__all__ = ["render_failed"]


def render_failed(messages: Sequence[FailedMessage], now: float) -> list[str]:
    """The failed folder: a line per message, its failed recipients and why."""
    if not messages:
        return ["no failed messages"]
    table = [
        (
            m.id,
            f"{human_age(now - m.failed_at)} ago" if m.failed_at else "?",
            m.stage,
            _address(m.sender) if m.sender is not None else "-",
        )
        for m in messages
    ]
    header = ("ID", "FAILED", "STAGE", "SENDER")
    widths = [max(len(cells[i]) for cells in (header, *table)) for i in range(len(header) - 1)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join([*(c.ljust(w) for c, w in zip(cells, widths, strict=False)), cells[-1]])

    lines = [line(header)]
    for message, cells in zip(messages, table, strict=True):
        lines.append(line(cells))
        if message.subject:
            lines.append(f"    subject: {message.subject}")
        elif message.stage in ("intake", "recovery") and message.sender is None:
            lines.append("    not a message (it could not be read as one)")
        recipients = message.recipients
        if message.stage == "delivery":
            for r in recipients:
                if r.status == "failed":
                    lines.append(f"    {_recipient_line(asdict(r))}")
            delivered = [r.address for r in recipients if r.status == "delivered"]
            if delivered:
                lines.append(f"    delivered (not sent again): {', '.join(delivered)}")
            if message.is_bounce:
                lines.append("    a bounce: not retried ('mqd failed delete' when read)")
        else:
            if recipients:
                lines.append("    to " + ", ".join(_address(r.address) for r in recipients))
            lines.append(f"    {message.reason}")
        if message.location is None:
            lines.append("    (the message file is missing)")
    count = len(messages)
    lines += ["", f"{count} failed message{'s' if count != 1 else ''}"]
    return lines
