"""The web view's HTML: the page frame, its one stylesheet, the security headers, and the small
renderers (tables, badges, links) every page uses.

Every value that comes from a message, a config or a provider is escaped on its way into the
page (``e``); the one stylesheet is inline and allowed by its hash in the
Content-Security-Policy, which allows nothing else (no script, no image, no frame).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote

from aiohttp import web

from mqd.http import access
from mqd.tracking.answers import RecipientStatus
from mqd.tracking.vocabulary import Status

__all__ = [
    "CSP",
    "SECURITY_HEADERS",
    "badge",
    "e",
    "forbidden_page",
    "key_values",
    "login_form",
    "message_link",
    "page",
    "recipients_cell",
    "sender_text",
    "table",
    "when",
]

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

GOOD = {Status.DELIVERED, Status.DISPATCHED, Status.OPENED, Status.CLICKED}
BAD = {
    Status.BOUNCED,
    Status.DROPPED,
    Status.FAILED,
    Status.REJECTED,
    Status.COMPLAINED,
    Status.DELETED,
}
WAIT = {Status.DEFERRED, Status.UNSUBSCRIBED}
STATES = ("active", "waiting", "scheduled", "deferred", "held")


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
        if known in GOOD
        else "bad"
        if known in BAD
        else "wait"
        if known in WAIT
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


def recipients_cell(recipients: Sequence[RecipientStatus]) -> str:
    items = "".join(f"<li>{e(r.address)} {badge(r.status)}</li>" for r in recipients)
    return f'<ul class="plain">{items}</ul>'


def detail_text(detail: object) -> str:
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


_NAV = (
    ("/", "Overview"),
    ("/messages", "Messages"),
    ("/failed", "Failed"),
    ("/charts", "Charts"),  # mqd.http.charts
    ("/queue", "Queued"),  # mqd.http.actions
    ("/suppressions", "Suppressed"),  # mqd.http.suppressions
)


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
        body += login_form()
    return page("Not allowed", body, status=403)


def login_form() -> str:
    return (
        '<form class="search" method="post" action="/login">'
        '<label>Token <input type="password" name="token" autocomplete="current-password">'
        "</label><button>Sign in</button></form>"
    )
