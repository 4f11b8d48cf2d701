"""``/queue``: the messages in the queue now, and an operator's actions on them.

Anyone the view lets in sees the list. Acting (hold, release, retry, delete, bounce) takes an
operator: signed in at ``/operator/login`` with ``[http] operator_token`` (``mqd.http.operator``
keeps the session and its CSRF token). Each action is two posts to ``/queue``, both carrying the
session's CSRF token: the first shows what would be done and asks to confirm; the second, with
``confirm=yes``, does it (the same admin operations as ``mqd queue``) and says what was done.
Without an operator session no action button is shown and a post is refused (403), wherever
the browser is: being on this machine is enough to look, not to act.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from mqd.admin import fanout
from mqd.admin.service import AdminError
from mqd.http.access import token_matches
from mqd.http.html import badge, e, message_link, page, table
from mqd.http.operator import OperatorSession, Sessions
from mqd.http.present import moment, sender_html, subject_html
from mqd.http.site import Site

__all__ = ["ACTIONS", "OPEN_PATHS", "Actions"]

log = logging.getLogger("mqd.http.actions")

#: Paths an operator must reach before being let in (to sign in).
OPEN_PATHS = ("/operator/login",)
#: The most messages the list shows.
SHOWN = 500
#: action: (button, past tense, what it does)
ACTIONS = {
    "hold": ("Hold", "held", "kept in the queue and not delivered until released"),
    "release": (
        "Release",
        "released",
        "held no more: delivered when due (a scheduled one at its time)",
    ),
    "retry": (
        "Retry now",
        "retried",
        "due now: a deferred one without waiting for its next attempt, a scheduled one before "
        "its time (held ones stay held)",
    ),
    "delete": (
        "Delete",
        "deleted",
        "removed from the queue for good: not delivered, and no bounce to the sender",
    ),
    "bounce": (
        "Bounce",
        "bounced",
        "every recipient not delivered yet fails now: a bounce goes to the sender and the "
        "message to the failed folder",
    ),
}


class Actions:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.sessions = Sessions(self._token, site.admin.clock)

    def _token(self) -> str | None:
        token = self.site.config.http.operator_token
        return token.reveal() if token is not None else None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/queue", self.queue),
            web.post("/queue", self.act),
            web.get("/operator/login", self.login),
            web.post("/operator/login", self.login),
            web.post("/operator/logout", self.logout),
        ]

    def signed_in(self, request: web.BaseRequest) -> bool:
        """An operator's session: lets the browser read the view as well as act."""
        return self.sessions.of(request) is not None

    # -- the queue --------------------------------------------------------------------------------

    async def _rows(self) -> list[dict[str, Any]]:
        config = self.site.config
        if config.queue.workers > 1:
            return list(await fanout.request(config, "list"))
        return await self.site.admin.op_list()

    async def _do(self, action: str, ids: list[str]) -> dict[str, Any]:
        config = self.site.config
        if config.queue.workers > 1:
            return dict(await fanout.request(config, action, {"ids": ids}))
        return dict(await self.site.admin.handle(action, {"ids": ids}))

    async def queue(self, request: web.Request) -> web.Response:
        session = self.sessions.of(request)
        state = request.query.get("state") or None
        rows = [r for r in await self._rows() if state is None or r["state"] == state]
        body = "<h1>In the queue</h1>" + self._who(session)
        shown = rows[:SHOWN]
        note = f"{len(rows)} message(s)" + (
            f", the first {SHOWN} shown" if len(rows) > SHOWN else ""
        )
        body += f'<p class="muted">{e(note)}{e(f" ({state})" if state else "")}.</p>'
        listing = _queue_table(shown, choose=session is not None)
        if session is None:
            body += listing
        else:
            buttons = "".join(
                f'<button name="action" value="{name}">{e(spec[0])}</button> '
                for name, spec in ACTIONS.items()
            )
            body += (
                '<form method="post" action="/queue" class="actions">'
                f'<input type="hidden" name="csrf" value="{e(session.csrf)}">'
                f"<p>Tick messages, then: {buttons}</p>{listing}</form>"
            )
        return page("Queued", body, here="/queue")

    def _who(self, session: OperatorSession | None) -> str:
        if session is not None:
            return (
                '<form method="post" action="/operator/logout" class="search">'
                f'<input type="hidden" name="csrf" value="{e(session.csrf)}">'
                "<span>Signed in as operator.</span><button>Sign out</button></form>"
            )
        if self._token() is None:
            return (
                '<p class="note">Read only. To hold, release, retry, delete or bounce messages '
                "from here, set <span class=mono>[http] operator_token_file</span> in mqd's "
                "config and sign in as operator; or use <span class=mono>mqd queue</span>.</p>"
            )
        return (
            '<p class="note">Read only. <a href="/operator/login">Sign in as operator</a> to '
            "hold, release, retry, delete or bounce messages.</p>"
        )

    async def act(self, request: web.Request) -> web.Response:
        session = self.sessions.of(request)
        if session is None:
            log.info("refused a queue action from %s: no operator session", request.remote)
            return _refused(
                "Acting on the queue takes an operator: sign in at "
                "/operator/login with the [http] operator token."
            )
        form = await request.post()
        if not self.sessions.csrf_ok(session, form.get("csrf")):
            log.warning(
                "refused a queue action from %s: missing or wrong CSRF token", request.remote
            )
            return _refused(
                "The form's CSRF token is missing or wrong (an old page, or "
                "another site's form). Open the queue page again."
            )
        action = str(form.get("action", ""))
        ids = [str(v) for v in form.getall("id", []) if str(v).strip()]
        if action not in ACTIONS:
            return _problem(400, f"No such action {action!r}: one of {', '.join(ACTIONS)}.")
        if not ids:
            return _problem(400, "Tick one or more messages first.")
        if form.get("confirm") != "yes":
            return await self._confirm(session, action, ids)
        try:
            done = await self._do(action, ids)
        except AdminError as exc:
            return _problem(409, str(exc))
        changed = [str(i) for i in next(iter(done.values()), [])]
        log.warning(
            "web view: an operator at %s %s %s", request.remote, ACTIONS[action][1], changed
        )
        return self._done(action, ids, changed)

    async def _confirm(self, session: OperatorSession, action: str, ids: list[str]) -> web.Response:
        button, _, what = ACTIONS[action]
        wanted = set(ids)
        rows = [
            r
            for r in await self._rows()
            if r["id"] in wanted or any(r["id"].startswith(i) for i in wanted)
        ]
        hidden = "".join(f'<input type="hidden" name="id" value="{e(i)}">' for i in ids)
        body = (
            f"<h1>{e(button)} {len(ids)} message(s)?</h1>"
            f'<p class="note">{e(button)}: {e(what)}.</p>'
            + _queue_table(rows, choose=False)
            + '<form method="post" action="/queue" class="search">'
            f'<input type="hidden" name="csrf" value="{e(session.csrf)}">'
            f'<input type="hidden" name="action" value="{e(action)}">{hidden}'
            '<input type="hidden" name="confirm" value="yes">'
            f'<button name="go" value="1">Yes, {e(button.lower())}</button>'
            '<a href="/queue">No, back to the queue</a></form>'
        )
        return page("Confirm", body, here="/queue")

    def _done(self, action: str, ids: list[str], changed: list[str]) -> web.Response:
        button, past, what = ACTIONS[action]
        items = "".join(f"<li>{message_link(i)}</li>" for i in changed)
        body = f"<h1>{e(past.capitalize())}: {len(changed)} message(s)</h1>"
        body += f'<p class="muted">{e(past.capitalize())}: {e(what)}.</p>' if changed else ""
        body += f'<ul class="plain done">{items}</ul>' if changed else ""
        if len(changed) < len(ids):
            body += (
                f'<p class="note">{len(ids) - len(changed)} of those named were not {e(past)}: '
                "already so, or not in a state this applies to.</p>"
            )
        body += '<p><a href="/queue">Back to the queue</a></p>'
        return page(f"{button} done", body, here="/queue")

    # -- signing in and out ------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        token = self._token()
        if token is None:
            return page(
                "Operator sign-in",
                "<h1>Operator sign-in</h1><p>No operator token is configured: the view only "
                "shows. Set <span class=mono>[http] operator_token_file</span> (or "
                "<span class=mono>operator_token_env</span>) in mqd's config to act from here.</p>",
                status=403 if request.method == "POST" else 200,
            )
        if request.method != "POST":
            return page("Operator sign-in", "<h1>Operator sign-in</h1>" + _login_form())
        form = await request.post()
        given = form.get("token")
        if not isinstance(given, str) or not given or not token_matches(given, token):
            log.warning("operator sign-in with a wrong token from %s", request.remote)
            return page(
                "Operator sign-in",
                '<h1>Operator sign-in</h1><p class="note">That is not the operator token.</p>'
                + _login_form(),
                status=403,
            )
        response = web.Response(status=303, headers={"Location": "/queue"})
        self.sessions.issue(response, request)
        log.info("an operator signed in from %s", request.remote)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        session = self.sessions.of(request)
        form = await request.post()
        if session is None or not self.sessions.csrf_ok(session, form.get("csrf")):
            return _refused("Signing out takes the operator's session and its CSRF token.")
        response = web.Response(status=303, headers={"Location": "/queue"})
        self.sessions.revoke(session, response)
        return response


def _login_form() -> str:
    return (
        '<form class="search" method="post" action="/operator/login">'
        '<label>Operator token <input type="password" name="token" '
        'autocomplete="current-password"></label><button>Sign in</button></form>'
    )


def _refused(why: str) -> web.Response:
    return page("Not allowed", f"<h1>Not allowed</h1><p>{e(why)}</p>", status=403)


def _problem(status: int, text: str) -> web.Response:
    body = f'<h1>Nothing done</h1><p class="note">{e(text)}</p><p><a href="/queue">Back</a></p>'
    return page("Nothing done", body, status=status)


def _queue_table(rows: list[dict[str, Any]], *, choose: bool) -> str:
    cells = []
    now = time.time()
    for row in rows:
        # Each recipient with its own last reply (the message's last_reply may be another's).
        recipients = "".join(
            f"<li>{e(r['address'])} {badge(r['status'])}"
            + (f' <span class="muted">{e(r["reply"])}</span>' if r.get("reply") else "")
            + "</li>"
            for r in row["recipients"]
        )
        first = (
            [
                f'<input type="checkbox" name="id" value="{e(row["id"])}" '
                f'aria-label="{e(row["id"])}">'
            ]
            if choose
            else []
        )
        cells.append(
            [
                *first,
                message_link(row["id"]),
                badge(row["state"]),
                moment(row["created_at"], now),
                subject_html(row.get("subject")),
                sender_html(row["sender"]),
                f'<ul class="plain">{recipients}</ul>',
                f'<span class="num">{e(row["attempts"])}</span>',
                e(row["state"])
                if row["state"] in ("held", "active")
                else moment(row["next_attempt_at"], now),
            ]
        )
    heads = (
        "Queued",
        "State",
        "Accepted",
        "Subject",
        "From",
        "Recipients and last replies",
        "Attempts",
        "Next",
    )
    return table((("",) if choose else ()) + heads, cells, empty="The queue is empty.")
