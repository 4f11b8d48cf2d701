"""The web view: server-rendered HTML pages for an administrator, no JavaScript.

``/`` the queue overview, ``/messages`` recent messages and a search, ``/messages/{id}`` one
message's timeline, ``/failed`` what went wrong (the event store and the failed folder),
``/login`` signs a browser in with the token. Every value that comes from a message, a config or
a provider is escaped on its way into the page; the one stylesheet is inline and allowed by its
hash in the Content-Security-Policy, which allows nothing else (no script, no image, no frame).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from aiohttp import web

from mqd.admin.failed import FailedError, FailedMessage, failed_dir, find, list_failed
from mqd.admin.fanout import daemon_status
from mqd.admin.render import human_age, human_size
from mqd.admin.service import entry_state
from mqd.http import access
from mqd.http.api import BadQuery, parse_limit, parse_status
from mqd.tracking.vocabulary import Status

if TYPE_CHECKING:
    from mqd.daemon.root import Daemon
    from mqd.tracking.tracker import Tracker

__all__ = ["CSP", "SECURITY_HEADERS", "View"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1.4em;
align-items:baseline}
header a{color:#cfd6e4;text-decoration:none}header a.here{color:#fff;font-weight:600}
header .brand{font-weight:700;color:#fff}
main{padding:1em 1.2em;max-width:1200px}
h1{font-size:1.35em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.4em 0 .5em}
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:1em}
th,td{border:1px solid #dde1e7;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}
table.kv{width:auto}table.kv th{width:11em}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em;word-break:break-all}
.st{display:inline-block;padding:0 .45em;border-radius:.6em;font-size:.9em;background:#e4e7ec}
.st-good{background:#d5f2dc;color:#145c28}.st-bad{background:#fbd9d6;color:#8a1c12}
.st-wait{background:#fff0c7;color:#6b4d00}.st-info{background:#dce8fb;color:#173f80}
.note{background:#fff8e1;border:1px solid #f0dc9c;padding:.5em .8em;margin:.6em 0}
.muted{color:#69707d}
form.search{display:flex;gap:.6em;flex-wrap:wrap;align-items:end;margin:0 0 1em}
form label{display:flex;flex-direction:column;font-size:.9em}
input,select,button{font:inherit;padding:.25em .4em}input[name=q]{min-width:24em}
ul.plain{list-style:none;margin:0;padding:0}
"""
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode()
#: Nothing but the inline stylesheet above; forms post only back here; no framing.
CSP = (
    f"default-src 'none'; style-src '{STYLE_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_GOOD = {Status.DELIVERED, Status.DISPATCHED, Status.OPENED, Status.CLICKED}
_BAD = {
    Status.BOUNCED,
    Status.DROPPED,
    Status.FAILED,
    Status.REJECTED,
    Status.COMPLAINED,
    Status.DELETED,
}
_WAIT = {Status.DEFERRED, Status.UNSUBSCRIBED}
_STATES = ("active", "waiting", "deferred", "held")
#: The most messages of the failed folder one page lists.
FAILED_FOLDER_LIMIT = 200


# -- rendering helpers ----------------------------------------------------------------------------


def e(value: object) -> str:
    """``value`` escaped for HTML text and attribute values; None is empty."""
    return "" if value is None else html.escape(str(value), quote=True)


def when(timestamp: object) -> str:
    if not isinstance(timestamp, int | float) or timestamp <= 0:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def badge(status: object) -> str:
    try:
        known: Status | None = Status(str(status))
    except ValueError:
        known = None
    kind = (
        "good"
        if known in _GOOD
        else "bad"
        if known in _BAD
        else "wait"
        if known in _WAIT
        else "info"
        if known is not None
        else "other"
    )
    return f'<span class="st st-{kind}">{e(status)}</span>'


def message_link(message_id: str) -> str:
    return f'<a class="mono" href="/messages/{e(quote(message_id, safe=""))}">{e(message_id)}</a>'


def sender_text(sender: object) -> str:
    return "&lt;&gt; (a bounce)" if sender == "" else e(sender)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str) -> str:
    """A table of already-rendered cells (escape values before passing them)."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_values(pairs: Iterable[tuple[str, str]]) -> str:
    """A two-column table: plain-text keys, already-rendered values."""
    rows = "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def _recipients_cell(recipients: Sequence[Mapping[str, Any]]) -> str:
    items = "".join(f"<li>{e(r.get('address'))} {badge(r.get('status'))}</li>" for r in recipients)
    return f'<ul class="plain">{items}</ul>'


def _detail_text(detail: object) -> str:
    if not isinstance(detail, Mapping):
        return ""
    parts = []
    for key, value in detail.items():
        if value in (None, "", [], {}):
            continue
        if isinstance(value, list | tuple):
            value = " ".join(str(item) for item in value)
        elif isinstance(value, Mapping):
            value = json.dumps(value, sort_keys=True)
        parts.append(f"{key}={value}")
    return e(", ".join(parts))


_NAV = (("/", "Overview"), ("/messages", "Messages"), ("/failed", "Failed"))


def page(title: str, body: str, *, here: str = "", status: int = 200) -> web.Response:
    nav = "".join(
        f'<a href="{href}"{" class=here" if href == here else ""}>{label}</a>'
        for href, label in _NAV
    )
    text = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · mqd</title><style>{CSS}</style></head><body>"
        f'<header><span class="brand">mqd</span>{nav}</header>'
        f"<main>{body}</main></body></html>\n"
    )
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def forbidden_page(token_configured: bool, *, wrong_token: bool = False) -> web.Response:
    body = "<h1>Not allowed</h1>"
    if wrong_token:
        body += '<p class="note">That token is not the one in mqd\'s config.</p>'
    body += f"<p>{e(access.refusal(token_configured))}.</p>"
    if token_configured:
        body += _login_form()
    return page("Not allowed", body, status=403)


def _login_form() -> str:
    return (
        '<form class="search" method="post" action="/login">'
        '<label>Token <input type="password" name="token" autocomplete="current-password">'
        "</label><button>Sign in</button></form>"
    )


# -- the pages ------------------------------------------------------------------------------------


class View:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.overview),
            web.get("/messages", self.messages),
            web.get("/messages/{key}", self.message),
            web.get("/failed", self.failed),
            web.get("/login", self.login),
            web.post("/login", self.login),
            web.get("/logout", self.logout),
        ]

    @property
    def _token(self) -> str | None:
        token = self.daemon.config.http.token
        return token.reveal() if token is not None else None

    def _tracking_off(self, here: str) -> web.Response:
        return page(
            "Tracking is off",
            "<h1>Tracking is off</h1><p class=note>mqd keeps no message history: "
            "<span class=mono>[tracking] enabled = false</span> in its config. Remove that line "
            "(tracking is on by default) and restart mqd. The queue overview and the failed "
            "folder still show.</p>",
            here=here,
            status=503,
        )

    # -- / ----------------------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        status = await daemon_status(self.daemon)
        counts = status["by_state"]
        oldest = status["oldest_age"]
        failed = int(status["failed"])
        facts = [
            ("Messages queued", f"{status['messages']} ({e(human_size(int(status['bytes'])))})"),
            *((f"… {state}", e(counts.get(state, 0))) for state in _STATES),
            ("Oldest", e(human_age(oldest)) if oldest is not None else "—"),
            (
                "Failed",
                f'<a href="/failed">{failed}</a>'
                + (" <span class='st st-bad'>needs a look</span>" if failed else ""),
            ),
            ("History", "on" if self.daemon.tracker is not None else "off ([tracking])"),
            ("Version", e(status["version"])),
            ("Up for", e(human_age(status["uptime"] or 0))),
            ("Config", f'<span class="mono">{e(status["config"] or "embedded defaults")}</span>'),
            ("Queue directory", f'<span class="mono">{e(status["queue_dir"])}</span>'),
        ]
        rows = []
        for name, relay in status["relays"].items():
            quota = relay.get("quota") or {}
            quota_text = ", ".join(
                f"{quota[sent]}/{quota[limit]} per {window}"
                for sent, limit, window in (
                    ("sent_last_hour", "max_per_hour", "hour"),
                    ("sent_last_day", "max_per_day", "day"),
                )
                if quota.get(limit)
            )
            health = relay["health"]
            rows.append(
                [
                    e(name),
                    e(relay["plugin"]),
                    f'<span class="st st-{"good" if health == "closed" else "bad"}">'
                    f"{e('healthy' if health == 'closed' else health)}</span>",
                    f'<span class="num">{e(relay["queued"])}</span>',
                    e(relay.get("errors", 0)),
                    e(relay.get("failures_in_a_row", 0)),
                    e(relay.get("last_error") or ""),
                    e(quota_text),
                ]
            )
        body = (
            "<h1>Queue</h1>"
            + key_values(facts)
            + "<h2>Relays</h2>"
            + table(
                (
                    "Relay",
                    "Plugin",
                    "Health",
                    "Queued",
                    "Errors",
                    "In a row",
                    "Last error",
                    "Quota",
                ),
                rows,
                empty="No relay configured.",
            )
        )
        return page("Queue", body, here="/")

    # -- /messages --------------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.Response:
        tracker = self.daemon.tracker
        if tracker is None:
            return self._tracking_off("/messages")
        query = request.query.get("q", "").strip()
        try:
            limit = parse_limit(request.query, 50)
            status = parse_status(request.query)
        except BadQuery as exc:
            return page(
                "Messages",
                self._search_form(query, None) + f'<p class="note">{e(exc)}</p>',
                here="/messages",
                status=400,
            )
        if query:
            found = await tracker.history(query, limit=limit)
            heading = f"Messages for {e(query)}"
            empty = "No message matches: try a whole address, a Message-ID or a queue id."
        else:
            found = await tracker.recent(limit=limit, status=status)
            heading = f"Recent {e(status)} messages" if status else "Recent messages"
            empty = "No message recorded yet."
        body = (
            "<h1>Messages</h1>"
            + self._search_form(query, status)
            + f"<h2>{heading}</h2>"
            + self._summary_table(found, empty=empty)
        )
        if len(found) == limit:
            more = urlencode({k: v for k, v in request.query.items() if k != "limit"})
            more = f"{more}&" if more else ""
            if limit < 500:
                body += (
                    f'<p><a href="/messages?{e(more)}limit={min(500, limit * 4)}">Show more</a></p>'
                )
        return page("Messages", body, here="/messages")

    @staticmethod
    def _search_form(query: str, status: str | None) -> str:
        options = '<option value="">any</option>' + "".join(
            f'<option value="{s.value}"{" selected" if s.value == status else ""}>{s.value}'
            "</option>"
            for s in Status
        )
        return (
            '<form class="search" method="get" action="/messages">'
            '<label>Address, Message-ID or queue id<input name="q" '
            f'value="{e(query)}" placeholder="alice@example.net"></label>'
            f'<label>Status<select name="status">{options}</select></label>'
            "<button>Show</button></form>"
        )

    @staticmethod
    def _summary_table(found: Sequence[Mapping[str, Any]], *, empty: str) -> str:
        rows = [
            [
                e(when(m.get("created_at"))),
                message_link(str(m.get("id"))),
                badge(m.get("status")),
                sender_text(m.get("sender")),
                _recipients_cell(m.get("recipients") or ()),
            ]
            for m in found
        ]
        return table(("Accepted", "Queue id", "Status", "From", "Recipients"), rows, empty=empty)

    # -- /messages/{key} --------------------------------------------------------------------------

    async def message(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        tracker: Tracker | None = self.daemon.tracker
        history = await tracker.message(key) if tracker is not None else None
        queue_id = str(history["id"]) if history is not None else key
        if queue_id in self.daemon.backlog:  # queued, not read yet: read it now to show it
            await self.daemon.take_from_backlog([queue_id])
        entry = self.daemon.entries.get(queue_id)
        failed = await asyncio.to_thread(self._failed_record, queue_id)
        if history is None and entry is None and failed is None:
            why = (
                "It is not in the event store, the queue or the failed folder."
                if tracker is not None
                else "It is not in the queue or the failed folder (and tracking is off)."
            )
            return page(
                "Unknown message",
                f"<h1>No message {e(key)}</h1><p>{e(why)}</p>"
                '<p><a href="/messages">Search the messages</a></p>',
                here="/messages",
                status=404,
            )
        parts = [f'<h1>Message <span class="mono">{e(queue_id)}</span></h1>']
        if history is not None:
            parts.append(
                key_values(
                    [
                        ("Status", badge(history.get("status"))),
                        ("From", sender_text(history.get("sender"))),
                        (
                            "Message-ID",
                            f'<span class="mono">{e(history.get("message_id") or "none")}</span>',
                        ),
                        ("Accepted", e(when(history.get("created_at")))),
                        ("Last change", e(when(history.get("updated_at")))),
                    ]
                )
            )
        if entry is not None:
            state = entry_state(entry, self.daemon.in_flight)
            now = time.time()
            due = entry.next_attempt_at
            parts.append("<h2>In the queue</h2>")
            parts.append(
                key_values(
                    [
                        ("State", e(state)),
                        ("From", sender_text(entry.sender)),
                        ("Attempts", e(entry.attempts)),
                        (
                            "Next attempt",
                            e("now" if due <= now else f"in {human_age(due - now)}")
                            if state not in ("held", "active")
                            else e(state),
                        ),
                        ("Last reply", e(entry.last_reply or "")),
                        ("Relays", e(", ".join(entry.relays))),
                    ]
                )
            )
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
                            e(r.get("address")),
                            badge(r.get("status")),
                            e(when(r.get("updated_at"))),
                            e(r.get("relay")),
                            f'<span class="mono">{e(r.get("provider_id"))}</span>',
                            e(r.get("reply")),
                        ]
                        for r in history.get("recipients") or ()
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
                            e(when(ev.get("at"))),
                            badge(ev.get("status")),
                            e(ev.get("recipient") or ""),
                            e(ev.get("source")),
                            e(ev.get("relay") or ""),
                            e(ev.get("reply") or ""),
                            _detail_text(ev.get("detail")),
                        ]
                        for ev in history.get("events") or ()
                    ),
                    empty="No event recorded.",
                )
            )
        elif tracker is None:
            parts.append('<p class="note">Tracking is off: there is no timeline.</p>')
        return page(f"Message {queue_id}", "".join(parts), here="/messages")

    def _failed_record(self, message_id: str) -> FailedMessage | None:
        try:
            found = find(failed_dir(self.daemon.config), [message_id])
        except FailedError:
            return None
        return found[0] if found and found[0].id == message_id else None

    @staticmethod
    def _failed_facts(message: FailedMessage) -> str:
        recipients = "".join(
            f"<li>{e(r['address'])} {e(r['status'])}"
            + (f": {e(r['reply'])}" if r.get("reply") else "")
            + "</li>"
            for r in message.recipients
        )
        return key_values(
            [
                ("Failed at", e(when(message.failed_at))),
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
        tracker = self.daemon.tracker
        directory = failed_dir(self.daemon.config)
        folder = await asyncio.to_thread(list_failed, directory)
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
                    e(when(m.get("updated_at"))),
                    message_link(str(m.get("id"))),
                    badge(m.get("status")),
                    sender_text(m.get("sender")),
                    self._reasons(m.get("recipients") or (), reasons.get(str(m.get("id")))),
                ]
                for m in found
            ]
            parts.append(
                table(
                    ("Last change", "Queue id", "Status", "From", "Why"),
                    rows,
                    empty="Nothing has failed.",
                )
            )
        newest = list(reversed(folder))[:FAILED_FOLDER_LIMIT]
        parts.append(f"<h2>In the failed folder ({len(folder)})</h2>")
        parts.append(
            f'<p class="muted">Files in <span class="mono">{e(directory)}</span>: '
            "<span class=mono>mqd failed retry ID</span> sends one again, "
            "<span class=mono>mqd failed delete ID</span> removes it.</p>"
        )
        rows = [
            [
                e(when(m.failed_at)),
                message_link(m.id),
                e(m.stage),
                sender_text(m.sender) if m.sender is not None else "",
                e(m.reason),
                '<ul class="plain">'
                + "".join(
                    f"<li>{e(r['address'])} {e(r['status'])}"
                    + (f": {e(r['reply'])}" if r.get("reply") else "")
                    + "</li>"
                    for r in m.recipients
                )
                + "</ul>",
            ]
            for m in newest
        ]
        parts.append(
            table(
                ("Failed at", "Id", "Stage", "From", "Reason", "Recipients"),
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
    def _reasons(recipients: Sequence[Mapping[str, Any]], folder_reason: str | None) -> str:
        """The bad recipients with their replies; the failed folder's reason for a message
        refused as a whole (it has no recipient status to show)."""
        bad = {s.value for s in _BAD}
        items = "".join(
            f"<li>{e(r.get('address'))} {badge(r.get('status'))}"
            + (f" {e(r.get('reply'))}" if r.get("reply") else "")
            + "</li>"
            for r in recipients
            if r.get("status") in bad
        )
        if folder_reason and not items:
            items = f"<li>{e(folder_reason)}</li>"
        return f'<ul class="plain">{items}</ul>'

    # -- /login -----------------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        token = self._token
        if request.method == "POST":
            form = await request.post()
            given = form.get("token")
            given = given if isinstance(given, str) else None
        else:
            given = request.query.get("token")
        if token is None:
            return page(
                "Sign in",
                "<h1>Sign in</h1><p>No token is configured: the web view answers only browsers "
                "on this machine. Set <span class=mono>[http] token_file</span> (or "
                "<span class=mono>token_env</span>) in mqd's config to let others in.</p>",
                status=403 if given else 200,
            )
        if not given:
            return page("Sign in", "<h1>Sign in</h1>" + _login_form())
        if not access.token_matches(given, token):
            return forbidden_page(True, wrong_token=True)
        response = _redirect("/")
        response.set_cookie(
            access.SESSION_COOKIE,
            access.session_value(token),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=_https(request),
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        response = _redirect("/login")
        response.del_cookie(access.SESSION_COOKIE, path="/")
        return response


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _https(request: web.Request) -> bool:
    """Served over TLS, here or at a proxy: then the cookie is sent over TLS only (a proxy's
    ``X-Forwarded-Proto`` is believed for this, since it can only make the cookie stricter)."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"
