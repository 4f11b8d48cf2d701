"""The web view's charts: ``/charts`` (last hour by minute, ``?window=day`` by quarter hour).

Messages per bucket by outcome, delivered per relay and per sender, and the delivery latency
(p50 and p95 per bucket, and the window's histogram), from the event store's history
(``mqd.tracking.activity``), drawn as inline SVG on the server (``mqd.http.svg``).

The page refreshes itself: a few lines of inline script (allowed by their hash in this page's
own Content-Security-Policy, which adds only that script and ``connect-src 'self'`` to the
view's) fetch ``/charts/live`` every ``?every=`` seconds (15 by default) and put the new charts
in place. Without script the page is the same, as of when it was loaded.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from mqd.http.html import CSP, e, page, table
from mqd.http.site import Site
from mqd.http.svg import Series, bars, lines
from mqd.tracking.activity import LATENCY_BOUNDS, OUTCOMES, Activity, Window, joined

if TYPE_CHECKING:
    from mqd.tracking.tracker import Tracker

__all__ = ["CHARTS_CSP", "Charts", "human_seconds"]

#: name: (span, bucket, what the window is called, what a bucket is called)
WINDOWS = {
    "hour": (3600.0, 60.0, "Last hour", "per minute"),
    "day": (86400.0, 900.0, "Last day", "per 15 minutes"),
}
OUTCOME_COLOURS = {"delivered": "#2e9d52", "deferred": "#e0a800", "failed": "#d6453d"}
PALETTE = ("#3b6fd8", "#8e5bd6", "#1aa3a3", "#e07b24", "#c2417a", "#6b8e23")
OTHERS_COLOUR = "#9aa1ad"
#: The most relays or senders drawn as their own series; the rest are summed as "others".
MOST = 6
#: The most rows of a table of totals.
ROWS = 20
DEFAULT_EVERY = 15
#: The newest buckets read again at every refresh: the current one, and the one before it for
#: events written a moment after it closed (the tracker writes every 0.1 s) or reported late by
#: a provider. Older buckets are read once per step of the window.
FRESH = 2
REFRESH = """(function () {
  var box = document.getElementById("charts");
  var every = 1000 * Number(box.getAttribute("data-every"));
  function tick() {
    fetch(box.getAttribute("data-src"), {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.text(); })
      .then(function (text) {
        box.innerHTML = text;
        box.setAttribute("data-refreshed", String(Date.now()));
        box.removeAttribute("data-stale");
      })
      .catch(function () { box.setAttribute("data-stale", "1"); })
      .then(function () { setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();"""
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(REFRESH.encode()).digest()).decode()
#: The view's policy, plus this page's one script and its fetches of /charts/live.
CHARTS_CSP = CSP.replace(
    "default-src 'none';", f"default-src 'none'; script-src '{SCRIPT_HASH}'; connect-src 'self';"
)


def human_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    if seconds < 3600:
        return f"{seconds / 60:.3g}m"
    return f"{seconds / 3600:.3g}h"


class Charts:
    def __init__(self, site: Site) -> None:
        self.site = site
        #: By bucket size: the activity of a window's older buckets, and what it was read for.
        self._older: dict[float, tuple[tuple[Window, int], Activity]] = {}

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/charts", self.page), web.get("/charts/live", self.live)]

    @staticmethod
    def _window_name(request: web.Request) -> str:
        name = request.query.get("window", "hour")
        if name not in WINDOWS:
            raise web.HTTPBadRequest(text=f"window must be one of {', '.join(WINDOWS)}")
        return name

    async def page(self, request: web.Request) -> web.Response:
        name = self._window_name(request)
        try:
            every = int(request.query.get("every", DEFAULT_EVERY))
        except ValueError:
            every = DEFAULT_EVERY
        every = min(3600, max(1, every))
        switch = " · ".join(
            f'<a href="/charts?window={key}">{e(spec[2])}</a>'
            if key != name
            else f"<strong>{e(spec[2])}</strong>"
            for key, spec in WINDOWS.items()
        )
        body = (
            "<h1>Charts</h1>"
            f'<p>{switch} <span class="muted">· refreshed every {every}s</span></p>'
            f'<div id="charts" data-src="/charts/live?window={name}" data-every="{every}">'
            f"{await self._charts(name)}</div><script>{REFRESH}</script>"
        )
        response = page("Charts", body, here="/charts", status=200)
        response.headers["Content-Security-Policy"] = CHARTS_CSP
        return response

    async def live(self, request: web.Request) -> web.Response:
        """The charts alone, as an HTML fragment: what the page's script puts in place."""
        text = await self._charts(self._window_name(request))
        return web.Response(text=text, content_type="text/html", charset="utf-8")

    async def _charts(self, name: str) -> str:
        tracker = self.site.tracker
        if tracker is None:
            return (
                '<p class="note">Tracking is off (<span class=mono>[tracking] enabled = false'
                "</span>): there is no history to draw.</p>"
            )
        span, step, called, per = WINDOWS[name]
        now = self.site.admin.clock.time()
        activity = await self.activity(tracker, Window.last(now, span=span, step=step))
        return render(activity, name=name, called=called, per=per, now=now)

    async def activity(self, tracker: Tracker, window: Window) -> Activity:
        """The activity of ``window``: its older buckets read once (until the window moves on
        by a bucket, or the event store is replaced), the newest ``FRESH`` at every call."""

        async def read(part: Window) -> Activity:
            return await tracker.call(tracker.keeper.read, lambda store: store.activity(part))

        fresh = min(FRESH, window.count)
        older = Window(window.start, window.step, window.count - fresh)
        newest = Window(older.end, window.step, fresh)
        if older.count == 0:
            return await read(newest)
        key = (older, tracker.generation)
        cached = self._older.get(window.step)
        if cached is None or cached[0] != key:
            cached = (key, await read(older))
            self._older[window.step] = cached
        return joined(cached[1], await read(newest))


def _labels(window: Window) -> tuple[list[str], list[str]]:
    """Each bucket's axis label and its hover name (local time, as the other pages show)."""
    starts = [window.bucket_start(i) for i in range(window.count)]
    labels = [time.strftime("%H:%M", time.localtime(t)) for t in starts]
    tips = [
        time.strftime("%Y-%m-%d %H:%M", time.localtime(t))
        + " to "
        + time.strftime("%H:%M", time.localtime(t + window.step))
        for t in starts
    ]
    return labels, tips


def _top(
    per_key: dict[str, list[int]], totals: dict[str, dict[str, int]], name_of: dict[str, str]
) -> list[Series]:
    """The busiest ``MOST`` keys as series, the rest summed as "others"."""
    ranked = sorted(per_key, key=lambda k: (-sum(per_key[k]), k))  # as drawn: by delivered
    chosen, rest = ranked[:MOST], ranked[MOST:]
    series = [
        Series(name_of.get(k, k), PALETTE[i % len(PALETTE)], per_key[k])
        for i, k in enumerate(chosen)
    ]
    if rest:
        summed = [sum(per_key[k][i] for k in rest) for i in range(len(per_key[rest[0]]))]
        series.append(Series(f"{len(rest)} others", OTHERS_COLOUR, summed))
    return series


def _totals_table(what: str, totals: dict[str, dict[str, int]], name_of: dict[str, str]) -> str:
    """Each key's messages by outcome, the busiest first (the first ``ROWS``)."""
    ranked = sorted(totals, key=lambda k: (-sum(totals[k].values()), k))
    rows = [
        [e(name_of.get(k, k))]
        + [f'<span class="num">{totals[k].get(o, 0)}</span>' for o in OUTCOMES]
        for k in ranked[:ROWS]
    ]
    text = table((what, *OUTCOMES), rows, empty=f"No {what.lower()} handled mail in this window.")
    if len(ranked) > ROWS:
        text += f'<p class="muted">and {len(ranked) - ROWS} more.</p>'
    return text


def render(activity: Activity, *, name: str, called: str, per: str, now: float) -> str:
    """The charts of ``activity`` as HTML: a heading, an SVG and a line of totals each."""
    called = called.lower()
    window = activity.window
    labels, tips = _labels(window)
    outcomes = [Series(o, OUTCOME_COLOURS[o], activity.outcomes[o]) for o in OUTCOMES]
    totals = ", ".join(f"{s.name} {s.total:g}" for s in outcomes)
    parts = [
        f'<p class="muted" id="charts-at" data-window="{e(name)}">As of '
        f"{e(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now)))}: {e(called)}, "
        f"{e(per)}.</p>",
        f"<h2>Messages {e(per)} by outcome</h2>",
        bars(
            "outcomes",
            title=f"Messages {per} by outcome, {called}",
            desc=f"Stacked bars; in all: {totals}.",
            labels=labels,
            tips=tips,
            series=outcomes,
            empty="No mail in this window",
        ),
    ]
    relay_series = _top(activity.relays, activity.relay_totals, {})
    parts += [
        f"<h2>Delivered {e(per)}, per relay</h2>",
        bars(
            "relays",
            title=f"Messages delivered {per} per relay, {called}",
            desc="Stacked bars, one colour per relay.",
            labels=labels,
            tips=tips,
            series=relay_series,
            empty="No relay delivered anything in this window",
        ),
        _totals_table("Relay", activity.relay_totals, {}),
    ]
    senders = {k: "<> (bounces)" for k in activity.senders if k == ""}
    parts += [
        f"<h2>Delivered {e(per)}, per sender</h2>",
        bars(
            "senders",
            title=f"Messages delivered {per} per envelope sender, {called}",
            desc=f"Stacked bars, the {MOST} busiest senders and the others.",
            labels=labels,
            tips=tips,
            series=_top(activity.senders, activity.sender_totals, senders),
            empty="Nothing delivered in this window",
        ),
        _totals_table("Sender", activity.sender_totals, senders),
    ]
    if activity.accounts:  # only where [[account]] tables group the senders
        parts += [
            f"<h2>Delivered {e(per)}, per account</h2>",
            bars(
                "accounts",
                title=f"Messages delivered {per} per account, {called}",
                desc=f"Stacked bars, the {MOST} busiest accounts and the others.",
                labels=labels,
                tips=tips,
                series=_top(activity.accounts, activity.account_totals, {}),
                empty="No account's mail was delivered in this window",
            ),
            _totals_table("Account", activity.account_totals, {}),
        ]
    parts += _latency(activity, labels, tips, called)
    return "".join(parts)


def _latency(
    activity: Activity, labels: Sequence[str], tips: Sequence[str], called: str
) -> list[str]:
    p50 = activity.latency_quantiles(0.5)
    p95 = activity.latency_quantiles(0.95)
    histogram = activity.latency_histogram()
    bounds = [human_seconds(b) for b in LATENCY_BOUNDS]
    bin_labels = [f"<{bounds[0]}", *(f"<{b}" for b in bounds[1:]), f"≥{bounds[-1]}"]
    return [
        "<h2>Delivery latency: accepted to dispatched</h2>",
        lines(
            "latency",
            title=f"Delivery latency p50 and p95, {called}",
            desc="From claiming a message to a relay taking it, per recipient: the median and "
            "the 95th percentile of each bucket.",
            labels=labels,
            tips=tips,
            series=[Series("p50", "#3b6fd8", p50), Series("p95", "#d6453d", p95)],
            unit=human_seconds,
            empty="Nothing dispatched in this window",
        ),
        bars(
            "latency-histogram",
            title=f"Delivery latency histogram, {called}",
            desc="Recipients dispatched, by how long after acceptance.",
            labels=bin_labels,
            tips=[f"latency {label}" for label in bin_labels],
            series=[Series("recipients", "#3b6fd8", histogram)],
            empty="Nothing dispatched in this window",
        ),
    ]
