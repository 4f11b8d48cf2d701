"""A message's content on its page: its headers, its text, its HTML in a sandboxed frame, and
its attachments, wherever the message is kept: in the queue, in the failed folder, or, once the
outbox relay has written it, in the outbox folder (which makes the view a local mail catcher).

``/messages/{id}/html`` serves the HTML part alone, for the frame, under a policy that loads
nothing (no script, no remote image, stylesheet or font: only ``data:`` images and inline
styles) and sandboxes it; the message's own images (``cid:`` references) are put in as
``data:`` URLs. ``/messages/{id}/parts/{n}`` serves an attachment, ``/messages/{id}/raw`` the
whole message, as a download (``Content-Disposition: attachment``,
``application/octet-stream``, never sniffed).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from mqd.admin.render import human_size
from mqd.http.html import CSP, e, table
from mqd.http.site import Site
from mqd.message.content import Content, attachment_bytes, inline_images, read_content
from mqd.queue.failed import FailedError
from mqd.queue.store import UnknownEntry
from mqd.relays.outbox import OutboxRelay

__all__ = ["FRAME_CSP", "STYLE", "Contents", "Found", "page_headers"]

#: What the message page adds to the view's stylesheet (allowed by its own hash).
CSS = """
iframe.mail{width:100%;height:32em;border:1px solid #dde1e7;background:#fff}
pre.mail{white-space:pre-wrap;word-break:break-word;background:#fff;border:1px solid #dde1e7;
padding:.6em .8em;max-height:40em;overflow:auto;margin:0 0 1em}
details.headers summary{cursor:pointer;margin:.3em 0}
p.subject{font-size:1.15em;font-weight:600;margin:-.3em 0 .8em}
"""
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode()
STYLE = f"<style>{CSS}</style>"
#: The message page: the view's policy, this stylesheet, and frames of this site only.
PAGE_CSP = CSP.replace("style-src ", f"style-src '{STYLE_HASH}' ", 1) + "; frame-src 'self'"
#: The HTML part in its frame: nothing loads (no script, nothing remote), sandboxed.
FRAME_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'self'; sandbox"
)
#: A queue id (or an outbox file's name): what may be looked up as a file.
_FILE_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,99}")


@dataclass(frozen=True)
class Found:
    """A message's bytes and where they were found."""

    data: bytes
    #: "the queue", "the failed folder", "the outbox folder of relay x".
    where: str
    #: The file, when a person can look at it.
    path: str | None


def page_headers(response: web.Response) -> web.Response:
    """The message page's policy: it holds the frame and this module's stylesheet."""
    response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


class Contents:
    def __init__(self, site: Site) -> None:
        self.site = site

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/messages/{key}/html", self.html),
            web.get("/messages/{key}/raw", self.raw),
            web.get("/messages/{key}/parts/{index:[0-9]{1,4}}", self.part),
        ]

    async def find(self, queue_id: str) -> Found | None:
        """The bytes of ``queue_id``: from the queue, the failed folder or an outbox folder."""
        store = self.site.admin.store
        try:
            listed = await store.get(queue_id)
        except UnknownEntry:
            pass
        else:
            try:
                data = await store.body(listed.entry)
            except OSError:
                pass
            else:
                return Found(data, "the queue", store.where(listed.entry))
        try:
            failed = await store.failed.find([queue_id])
            if failed and failed[0].id == queue_id:
                data = await store.failed.read(failed[0])
                return Found(data, "the failed folder", failed[0].location)
        except FailedError:
            pass
        if not _FILE_ID.fullmatch(queue_id):
            return None
        for name, relay in self.site.relays.items():
            if isinstance(relay, OutboxRelay):
                path = relay.folder / f"{queue_id}.eml"
                data_or_none = await asyncio.to_thread(_read, path)
                if data_or_none is not None:
                    return Found(data_or_none, f"the outbox folder of relay {name}", str(path))
        return None

    async def section(self, queue_id: str, found: Found | None) -> str:
        """The message page's part about the content (``found``: its bytes, from ``find``)."""
        if found is None:
            return (
                "<h2>Content</h2><p class=muted>The message itself is no longer kept: it is not "
                "in the queue, the failed folder or an outbox folder.</p>"
            )
        content = await asyncio.to_thread(read_content, found.data)
        return render(queue_id, found, content)

    # -- /messages/{key}/html and /parts/{n} ------------------------------------------------------

    async def _content(self, request: web.Request) -> tuple[Found, Content]:
        found = await self.find(request.match_info["key"])
        if found is None:
            raise web.HTTPNotFound(text="no such message is kept")
        return found, await asyncio.to_thread(read_content, found.data)

    async def html(self, request: web.Request) -> web.Response:
        found, content = await self._content(request)
        if content.html is None:
            raise web.HTTPNotFound(text="the message has no HTML part")
        html = await asyncio.to_thread(inline_images, content.html, found.data, content)
        response = web.Response(text=html, content_type="text/html", charset="utf-8")
        response.headers["Content-Security-Policy"] = FRAME_CSP
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
        return response

    async def raw(self, request: web.Request) -> web.Response:
        """The whole message as kept, as a download (``<queue id>.eml``)."""
        key = request.match_info["key"]
        found = await self.find(key)
        if found is None:
            raise web.HTTPNotFound(text="no such message is kept")
        response = web.Response(body=found.data, content_type="application/octet-stream")
        response.headers["Content-Disposition"] = f'attachment; filename="{_ascii_name(key)}.eml"'
        response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return response

    async def part(self, request: web.Request) -> web.Response:
        found, content = await self._content(request)
        index = int(request.match_info["index"])
        attachment = next((a for a in content.attachments if a.index == index), None)
        data = attachment_bytes(found.data, index) if attachment is not None else None
        if attachment is None or data is None:
            raise web.HTTPNotFound(text="the message has no such attachment")
        name = attachment.filename or f"part-{index}"
        response = web.Response(body=data, content_type="application/octet-stream")
        response.headers["Content-Disposition"] = (
            f"attachment; filename=\"{_ascii_name(name)}\"; filename*=UTF-8''{quote(name)}"
        )
        response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return response


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _ascii_name(name: str) -> str:
    """A file name safe in a quoted header value: ASCII, no quote, backslash or control."""
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)


def render(queue_id: str, found: Found, content: Content) -> str:
    base = f"/messages/{quote(queue_id, safe='')}"
    where = e(found.where) + (f' <span class="mono">{e(found.path)}</span>' if found.path else "")
    parts = [
        "<h2>Content</h2>",
        f'<p class="muted">Read from {where}. <a href="{e(base)}/raw" download>Download it'
        " (.eml)</a></p>",
    ]
    if content.problem is not None:
        parts.append(
            f'<p class="note"><span class="st st-bad">not a message</span> {e(content.problem)}</p>'
        )
    if content.headers:
        rows = [[e(k), f'<span class="mono">{e(v)}</span>'] for k, v in content.headers]
        parts.append(
            f'<details class="headers" open><summary>Headers ({len(rows)})</summary>'
            + table(("Name", "Value"), rows, empty="No header.")
            + "</details>"
        )
    if content.html is not None:
        parts.append(
            "<h3>HTML</h3>"
            f'<iframe class="mail" sandbox src="{e(base)}/html" title="The HTML part"></iframe>'
            '<p class="muted">Shown in a sandbox: no script runs, nothing is loaded from '
            "elsewhere (remote images stay blank; the message's own images show).</p>"
        )
    if content.text is not None:
        label = "Text" if content.problem is None else "The file"
        parts.append(f'<h3>{label}</h3><pre class="mail">{e(content.text)}</pre>')
    if content.html is None and content.text is None and content.problem is None:
        parts.append('<p class="muted">No text or HTML part.</p>')
    rows = [
        [
            f'<a href="{e(base)}/parts/{a.index}" download>'
            f"{e(a.filename or f'part {a.index}')}</a>",
            f'<span class="mono">{e(a.content_type)}</span>',
            f'<span class="num">{e(human_size(a.size))}</span>',
            e(f"inline, cid:{a.content_id}" if a.content_id else ""),
        ]
        for a in content.attachments
    ]
    parts.append("<h3>Attachments</h3>")
    parts.append(table(("Name", "Type", "Size", "Note"), rows, empty="No attachment."))
    return "".join(parts)
