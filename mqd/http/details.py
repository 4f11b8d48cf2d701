"""The web view's pages about one message (``/messages/{id}``: its timeline, its place in the
queue or the failed folder) and about what went wrong (``/failed``)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from aiohttp import web

from mqd.http.api import BadQuery, parse_limit
from mqd.http.content import STYLE, Contents, page_headers
from mqd.http.html import BAD, badge, e, key_values, message_link, page, table
from mqd.http.present import (
    detail_html,
    moment,
    sender_html,
    subject_html,
)
from mqd.http.site import Site
from mqd.queue.failed import FailedError, FailedMessage
from mqd.queue.store import Listed, UnknownEntry
from mqd.tracking.answers import RecipientStatus

__all__ = ["Details"]

#: The most messages of the failed folder one page lists.
FAILED_FOLDER_LIMIT = 200


class Details:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.contents = Contents(site)

    # -- /messages/{key} --------------------------------------------------------------------------

    async def message(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        tracker = self.site.tracker
        history = await tracker.message(key) if tracker is not None else None
        queue_id = history.id if history is not None else key
        store = self.site.admin.store
        try:
            listed: Listed | None = await store.get(queue_id)
        except UnknownEntry:
            listed = None
        failed = await self._failed_record(queue_id)
        kept = await self.contents.find(queue_id)
        if history is None and listed is None and failed is None and kept is None:
            why = (
                "It is not in the event store, the queue, the failed folder or an outbox folder."
                if tracker is not None
                else "It is not in the queue, the failed folder or an outbox folder (and "
                "tracking is off)."
            )
            return page(
                "Unknown message",
                f"<h1>No message {e(key)}</h1><p>{e(why)}</p>"
                '<p><a href="/messages">Search the messages</a></p>',
                here="/messages",
                status=404,
            )
        now = time.time()
        subject = (
            (history.subject if history is not None else None)
            or (listed.entry.subject if listed is not None else None)
            or (failed.subject if failed is not None else None)
        )
        parts = [
            STYLE,
            f'<h1>Message <span class="mono">{e(queue_id)}</span></h1>',
            f'<p class="subject">{subject_html(subject)}</p>',
        ]
        if history is not None:
            parts.append(
                key_values(
                    [
                        ("Status", badge(history.status)),
                        ("From", sender_html(history.sender, history.not_a_message)),
                        (
                            "Message-ID",
                            f'<span class="mono">{e(history.message_id or "none")}</span>',
                        ),
                        ("Accepted", moment(history.created_at, now)),
                        ("Last change", moment(history.updated_at, now)),
                    ]
                )
            )
        if listed is not None:
            parts.append(self._queue_facts(listed, now))
        if failed is not None:
            parts.append("<h2>In the failed folder</h2>")
            parts.append(self._failed_facts(failed))
        if history is not None:
            parts.append("<h2>Recipients</h2>")
            parts.append(
                table(
                    ("Address", "Status", "Since", "Relay", "Provider id", "Reply"),
                    (
                        [
                            e(r.address),
                            badge(r.status),
                            moment(r.updated_at, now),
                            e(r.relay),
                            f'<span class="mono">{e(r.provider_id)}</span>',
                            e(r.reply),
                        ]
                        for r in history.recipients
                    ),
                    empty="No recipient recorded.",
                )
            )
            parts.append("<h2>Timeline</h2>")
            parts.append(
                table(
                    ("Time", "Status", "Recipient", "Source", "Relay", "Reply", "Detail"),
                    (
                        [
                            moment(ev.at, now),
                            badge(ev.status),
                            e(ev.recipient or ""),
                            e(ev.source),
                            e(ev.relay or ""),
                            e(ev.reply or ""),
                            detail_html(ev.detail, now),
                        ]
                        for ev in history.events
                    ),
                    empty="No event recorded.",
                )
            )
        elif tracker is None:
            parts.append('<p class="note">Tracking is off: there is no timeline.</p>')
        parts.append(await self.contents.section(queue_id, kept))
        return page_headers(page(f"Message {queue_id}", "".join(parts), here="/messages"))

    @staticmethod
    def _queue_facts(listed: Listed, now: float) -> str:
        """Where the message stands in the queue, and each recipient's own last reply."""
        entry, state = listed.entry, listed.state.value
        due = entry.next_attempt_at
        if state in ("held", "active"):
            next_attempt = e(state)
        else:
            next_attempt = "now" if due <= now else moment(due, now)
        facts = key_values(
            [
                ("State", e(state)),
                ("From", sender_html(entry.sender)),
                ("Attempts", e(entry.attempts)),
                ("Last attempt", moment(entry.last_attempt_at, now) or "none yet"),
                ("Next attempt", next_attempt),
                ("Relays", e(", ".join(entry.relays))),
            ]
        )
        rows = [
            [e(r.address), badge(r.status.value), e(r.relay or ""), e(r.reply or "")]
            for r in entry.recipients
        ]
        recipients = table(
            ("Recipient", "Status", "Relay", "Last reply"), rows, empty="No recipient."
        )
        return f"<h2>In the queue</h2>{facts}<h3>Its recipients</h3>{recipients}"

    async def _failed_record(self, message_id: str) -> FailedMessage | None:
        try:
            found = await self.site.admin.store.failed.find([message_id])
        except FailedError:
            return None
        return found[0] if found and found[0].id == message_id else None

    @staticmethod
    def _failed_facts(message: FailedMessage) -> str:
        recipients = "".join(
            f"<li>{e(r.address)} {e(r.status)}" + (f": {e(r.reply)}" if r.reply else "") + "</li>"
            for r in message.recipients
        )
        return key_values(
            [
                ("Failed at", moment(message.failed_at)),
                ("Stage", e(message.stage)),
                ("Reason", e(message.reason)),
                ("Recipients", f'<ul class="plain">{recipients}</ul>'),
                ("Retry", f'<span class="mono">mqd failed retry {e(message.id)}</span>'),
            ]
        )

    # -- /failed ----------------------------------------------------------------------------------

    async def failed(self, request: web.Request) -> web.Response:
        try:
            limit = parse_limit(request.query, 100)
        except BadQuery as exc:
            return page("Failed", f'<p class="note">{e(exc)}</p>', here="/failed", status=400)
        tracker = self.site.tracker
        now = time.time()
        folder = await self.site.admin.store.failed.messages()
        reasons = {m.id: m.reason for m in folder}
        parts = ["<h1>Failed messages</h1>"]
        parts.append("<h2>Recorded failures</h2>")
        if tracker is None:
            parts.append(
                '<p class="note">Tracking is off ([tracking] enabled = false): only the failed '
                "folder is shown.</p>"
            )
        else:
            found = await tracker.failures(limit=limit)
            rows = [
                [
                    moment(m.updated_at, now),
                    message_link(m.id),
                    badge(m.status),
                    subject_html(m.subject),
                    sender_html(m.sender, m.not_a_message),
                    self._reasons(m.recipients, reasons.get(m.id)),
                ]
                for m in found
            ]
            parts.append(
                table(
                    ("Last change", "Queue id", "Status", "Subject", "From", "Why"),
                    rows,
                    empty="Nothing has failed.",
                )
            )
        newest = list(reversed(folder))[:FAILED_FOLDER_LIMIT]
        parts.append(f"<h2>In the failed folder ({len(folder)})</h2>")
        parts.append(
            '<p class="muted"><span class=mono>mqd failed retry ID</span> sends one again, '
            "<span class=mono>mqd failed delete ID</span> removes it.</p>"
        )
        rows = [
            [
                moment(m.failed_at, now),
                message_link(m.id),
                e(m.stage),
                subject_html(m.subject),
                sender_html(m.sender, m.reason if _not_a_message(m) else None),
                e(m.reason),
                '<ul class="plain">'
                + "".join(
                    f"<li>{e(r.address)} {e(r.status)}"
                    + (f": {e(r.reply)}" if r.reply else "")
                    + "</li>"
                    for r in m.recipients
                )
                + "</ul>",
            ]
            for m in newest
        ]
        parts.append(
            table(
                ("Failed at", "Id", "Stage", "Subject", "From", "Reason", "Recipients"),
                rows,
                empty="The failed folder is empty.",
            )
        )
        if len(folder) > len(newest):
            parts.append(
                f'<p class="muted">The newest {len(newest)} are shown: '
                "<span class=mono>mqd failed list</span> lists them all.</p>"
            )
        return page("Failed", "".join(parts), here="/failed")

    @staticmethod
    def _reasons(recipients: Sequence[RecipientStatus], folder_reason: str | None) -> str:
        """The bad recipients with their replies; the failed folder's reason for a message
        refused as a whole (it has no recipient status to show)."""
        items = "".join(
            f"<li>{e(r.address)} {badge(r.status)}"
            + (f" {e(r.reply)}" if r.reply else "")
            + "</li>"
            for r in recipients
            if r.status in BAD
        )
        if folder_reason and not items:
            items = f"<li>{e(folder_reason)}</li>"
        return f'<ul class="plain">{items}</ul>'


def _not_a_message(message: FailedMessage) -> bool:
    """Refused at intake before a sender was read: a file that is not a message."""
    return message.stage in ("intake", "recovery") and message.sender is None
