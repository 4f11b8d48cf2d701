"""The web view: server-rendered HTML pages for an administrator, no JavaScript.

``/`` the queue overview, ``/messages`` recent messages and a search, ``/messages/{id}`` one
message's timeline and ``/failed`` what went wrong (``mqd.http.details``), ``/login`` signs a
browser in with the token. The HTML and its safety live in ``mqd.http.html``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from mqd.admin.fanout import daemon_status
from mqd.admin.render import human_age, human_size
from mqd.http import access
from mqd.http.api import BadQuery, parse_limit, parse_status
from mqd.http.details import Details
from mqd.http.html import (
    STATES,
    badge,
    e,
    forbidden_page,
    key_values,
    login_form,
    message_link,
    page,
    table,
)
from mqd.http.present import moment, recipients_html, relay_health, sender_html, subject_html
from mqd.http.site import Site
from mqd.tracking.answers import MessageSummary
from mqd.tracking.vocabulary import Status

__all__ = ["View"]


class View:
    def __init__(self, site: Site) -> None:
        self.site = site

    def routes(self) -> list[web.RouteDef]:
        details = Details(self.site)
        return [
            web.get("/", self.overview),
            web.get("/messages", self.messages),
            web.get("/messages/{key}", details.message),
            *details.contents.routes(),
            web.get("/failed", details.failed),
            web.get("/login", self.login),
            web.post("/login", self.login),
            web.get("/logout", self.logout),
        ]

    @property
    def _token(self) -> str | None:
        token = self.site.config.http.token
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
        status = await daemon_status(self.site.admin)
        counts = status["by_state"]
        oldest = status["oldest_age"]
        failed = int(status["failed"])
        facts = [
            ("Messages queued", f"{status['messages']} ({e(human_size(int(status['bytes'])))})"),
            *((f"… {state}", e(counts.get(state, 0))) for state in STATES),
            ("Oldest", e(human_age(oldest)) if oldest is not None else "—"),
            (
                "Failed",
                f'<a href="/failed">{failed}</a>'
                + (" <span class='st st-bad'>needs a look</span>" if failed else ""),
            ),
            (
                "Suppressed",
                f'<a href="/suppressions">{int(status.get("suppressed") or 0)}</a> address(es)',
            ),
            ("History", "on" if self.site.tracker is not None else "off ([tracking])"),
            ("Version", e(status["version"])),
            ("Up for", e(human_age(status["uptime"] or 0))),
            ("Config", f'<span class="mono">{e(status["config"] or "embedded defaults")}</span>'),
            ("Queue directory", f'<span class="mono">{e(status["queue_dir"])}</span>'),
        ]
        rows = []
        now = time.time()
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
            rows.append(
                [
                    e(name),
                    e(relay["plugin"]),
                    relay_health(relay),
                    f'<span class="num">{e(relay["queued"])}</span>',
                    e(
                        f"{relay.get('recent_failures', 0)} of {relay.get('recent_attempts', 0)}"
                        " failed"
                        if relay.get("recent_attempts")
                        else "none"
                    ),
                    moment(relay.get("last_success_at"), now) or "—",
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
                    "Last hour",
                    "Last delivered",
                    "Last error",
                    "Quota",
                ),
                rows,
                empty="No relay configured.",
            )
        )
        accounts = status.get("accounts") or {}
        if accounts:
            body += "<h2>Accounts</h2>" + table(
                ("Account", "Use against its limits", "Over a limit"),
                [[e(name), e(_account_use(use)), e(_over(use))] for name, use in accounts.items()],
                empty="",
            )
        return page("Queue", body, here="/")

    # -- /messages --------------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.Response:
        tracker = self.site.tracker
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
        found: Sequence[MessageSummary]
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
            + self.summary_table(found, empty=empty)
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
    def summary_table(found: Sequence[MessageSummary], *, empty: str) -> str:
        now = time.time()
        rows = [
            [
                moment(m.created_at, now),
                message_link(m.id),
                badge(m.status),
                subject_html(m.subject),
                sender_html(m.sender, m.not_a_message),
                recipients_html(m.recipients),
            ]
            for m in found
        ]
        return table(
            ("Accepted", "Queue id", "Status", "Subject", "From", "Recipients and last replies"),
            rows,
            empty=empty,
        )

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
            return page("Sign in", "<h1>Sign in</h1>" + login_form())
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


def _account_use(use: dict[str, Any]) -> str:
    """``40/100 a minute, 900/20000 a day`` for one [[account]]."""
    limits, sent = use.get("limits") or {}, use.get("sent") or {}
    return ", ".join(f"{sent.get(w, 0)}/{limit} a {w}" for w, limit in limits.items()) or "-"


def _over(use: dict[str, Any]) -> str:
    if use.get("over_limit") == "refuse":
        return f"refuses ({use.get('refused', 0)} refused)"
    return f"waits ({use.get('held', 0)} held back)"
