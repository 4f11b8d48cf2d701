"""The charts: the event store's activity query (messages per time bucket by outcome, relay and
sender; the delivery latency), the SVG drawn from it, and the /charts page of a real daemon."""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from corehelpers import drop, make_message

from mqd.config.load import load_config
from mqd.daemon.root import Daemon
from mqd.http.charts import CHARTS_CSP, REFRESH, SCRIPT_HASH, Charts, render
from mqd.http.svg import Series, bars, nice_top
from mqd.message.reply import Reply
from mqd.plugins.host import PluginHost
from mqd.relays.memory import MemoryRelay
from mqd.testing import wait_until
from mqd.tracking.activity import LATENCY_BOUNDS, Activity, Window, joined, quantile
from mqd.tracking.records import Record
from mqd.tracking.sqlite import SQLiteStore
from mqd.tracking.vocabulary import Status

T0 = 1_800_000_000.0  # a whole hour: buckets start on it
SVG = "{http://www.w3.org/2000/svg}"


def traffic() -> list[Record]:
    """Four messages in the minutes from T0, one before them."""
    S = Status
    return [
        # a: two recipients dispatched through "main" 2 s after acceptance (bucket 0).
        Record("a", S.ACCEPTED, T0 + 5),
        Record(
            "a",
            S.QUEUED,
            T0 + 5.5,
            relay="main",
            sender="app@example.com",
            recipients=("x@example.net", "y@example.net"),
            account="shop",
        ),
        Record("a", S.DISPATCHED, T0 + 7, recipient="x@example.net", relay="main"),
        Record("a", S.DISPATCHED, T0 + 7, recipient="y@example.net", relay="main"),
        # b: deferred by "main" in bucket 1, dispatched through "backup" 65 s in (bucket 2).
        Record("b", S.ACCEPTED, T0 + 65),
        Record(
            "b",
            S.QUEUED,
            T0 + 65,
            relay="main",
            sender="news@example.com",
            recipients=("z@example.net",),
        ),
        Record("b", S.DEFERRED, T0 + 70, recipient="z@example.net", relay="main"),
        Record("b", S.DISPATCHED, T0 + 130, recipient="z@example.net", relay="backup"),
        # c: rejected at intake (bucket 0).
        Record("c", S.ACCEPTED, T0 + 9),
        Record("c", S.REJECTED, T0 + 10, sender="bad@example.org"),
        # d: bounced and failed in bucket 3: one failed message, not two.
        Record("d", S.ACCEPTED, T0 + 190),
        Record(
            "d",
            S.QUEUED,
            T0 + 190,
            relay="main",
            sender="app@example.com",
            recipients=("w@example.net",),
        ),
        Record("d", S.BOUNCED, T0 + 200, recipient="w@example.net", relay="main"),
        Record("d", S.FAILED, T0 + 200),
        # Before the window: not counted.
        Record("old", S.ACCEPTED, T0 - 100),
        Record("old", S.DISPATCHED, T0 - 99, recipient="q@example.net", relay="main"),
    ]


@pytest.fixture
def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "tracking.sqlite3")
    store.record(traffic())
    yield store  # type: ignore[misc]
    store.close()


def test_the_window_ends_with_the_bucket_holding_now() -> None:
    window = Window.last(T0 + 59.5, span=3600, step=60)
    assert (window.count, window.end, window.start) == (60, T0 + 60, T0 + 60 - 3600)
    assert Window.last(T0 + 30, span=86400, step=900).count == 96


def test_activity_counts_messages_by_bucket_outcome_relay_and_sender(store: SQLiteStore) -> None:
    activity = store.activity(Window(T0, 60, 5))
    assert activity.outcomes == {
        "delivered": [1, 0, 1, 0, 0],  # a's two recipients are one message
        "deferred": [0, 1, 0, 0, 0],
        "failed": [1, 0, 0, 1, 0],  # c rejected; d bounced and failed, once
    }
    assert activity.relays == {"main": [1, 0, 0, 0, 0], "backup": [0, 0, 1, 0, 0]}
    assert activity.relay_totals == {
        "main": {"delivered": 1, "deferred": 1, "failed": 1},
        "backup": {"delivered": 1},
    }
    assert activity.senders["app@example.com"] == [1, 0, 0, 0, 0]
    assert activity.senders["news@example.com"] == [0, 0, 1, 0, 0]
    assert activity.sender_totals["bad@example.org"] == {"failed": 1}
    assert activity.sender_totals["app@example.com"] == {"delivered": 1, "failed": 1}
    # Only a's queued event named its [[account]]: b and d have none, so no series.
    assert activity.accounts == {"shop": [1, 0, 0, 0, 0]}
    assert activity.account_totals == {"shop": {"delivered": 1}}


def test_activity_keeps_the_delivery_latency_per_bucket(store: SQLiteStore) -> None:
    activity = store.activity(Window(T0, 60, 5))
    assert activity.latency[0][LATENCY_BOUNDS.index(5)] == 2  # a: 2 recipients, 2 s: [2, 5)
    assert activity.latency[2][LATENCY_BOUNDS.index(120)] == 1  # b: 65 s, in [60, 120)
    assert sum(map(sum, activity.latency)) == 3
    p50 = activity.latency_quantiles(0.5)
    assert p50[1] is None and p50[3] is None
    assert p50[0] is not None and 2 <= p50[0] <= 5
    assert p50[2] is not None and 60 <= p50[2] <= 120


def test_adjacent_windows_join_into_the_whole(store: SQLiteStore) -> None:
    whole = store.activity(Window(T0, 60, 5))
    for cut in (1, 2, 4):
        parts = (
            store.activity(Window(T0, 60, cut)),
            store.activity(Window(T0 + 60 * cut, 60, 5 - cut)),
        )
        assert joined(*parts) == whole, cut
    with pytest.raises(ValueError, match="not adjacent"):
        joined(store.activity(Window(T0, 60, 1)), store.activity(Window(T0 + 120, 60, 1)))


class CountingTracker:
    """What Charts asks of a tracker, over ``store``, noting each window read."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.keeper = self
        self.generation = 0
        self.read_windows: list[Window] = []

    def read(self, op: Callable[[SQLiteStore], Any]) -> Any:
        return op(self)  # type: ignore[arg-type]

    def activity(self, window: Window) -> Activity:
        self.read_windows.append(window)
        return self.store.activity(window)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


async def test_the_charts_read_older_buckets_once_per_step(store: SQLiteStore) -> None:
    tracker = CountingTracker(store)
    charts = Charts(None)  # type: ignore[arg-type]
    window = Window(T0, 60, 5)
    for _ in range(3):
        assert await charts.activity(tracker, window) == store.activity(window)  # type: ignore[arg-type]
    older, newest = Window(T0, 60, 3), Window(T0 + 180, 60, 2)
    assert tracker.read_windows == [older, newest, newest, newest]
    tracker.read_windows.clear()
    moved = Window(T0 + 60, 60, 5)  # a minute on: the older buckets are read again
    assert await charts.activity(tracker, moved) == store.activity(moved)  # type: ignore[arg-type]
    assert tracker.read_windows == [Window(T0 + 60, 60, 3), Window(T0 + 240, 60, 2)]
    tracker.read_windows.clear()
    tracker.generation += 1  # another store (the damaged one set aside): read afresh
    await charts.activity(tracker, moved)  # type: ignore[arg-type]
    assert len(tracker.read_windows) == 2


def test_quantiles_interpolate_within_a_bin() -> None:
    bins = [0] * (len(LATENCY_BOUNDS) + 1)
    assert quantile(bins, 0.5) is None
    bins[LATENCY_BOUNDS.index(10)] = 10  # ten in [5, 10)
    assert quantile(bins, 0.5) == pytest.approx(7.5)
    assert quantile(bins, 1.0) == pytest.approx(10)
    bins[-1] = 90  # ninety beyond the last bound: p95 says "at least" that
    assert quantile(bins, 0.95) == LATENCY_BOUNDS[-1]


def parse(svg: str) -> ET.Element:
    """The SVG as XML: it must be well-formed (escaped) to parse."""
    return ET.fromstring(svg)


def test_an_svg_chart_has_its_title_axes_legend_and_series() -> None:
    svg = parse(
        bars(
            "demo",
            title="Demo <chart>",
            desc="Stacked & escaped",
            labels=["10:00", "10:01", "10:02"],
            tips=["a", "b", "c"],
            series=[Series("ok", "#00aa00", [1, 2, 0]), Series("bad", "#aa0000", [0, 3, 1])],
        )
    )
    assert svg.get("role") == "img" and svg.get("data-series") == "ok bad"
    assert svg.find(f"{SVG}title").text == "Demo <chart>"  # type: ignore[union-attr]
    groups = {g.get("data-series"): g for g in svg.iter(f"{SVG}g") if g.get("data-series")}
    assert groups["ok"].get("data-total") == "3" and groups["bad"].get("data-total") == "4"
    assert len(groups["bad"].findall(f"{SVG}rect")) == 2  # no bar for a zero
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert "10:00" in texts and "ok (3)" in texts and "bad (4)" in texts
    assert "6" in texts  # the y axis reaches past the tallest stack (2 + 3), in round steps
    assert nice_top(5) == (6, 2) and nice_top(0) == (1, 1) and nice_top(100) == (100, 25)


def test_hostile_names_are_escaped_in_the_svg() -> None:
    hostile = '<script>alert("r")</script>'
    window = Window(T0, 60, 3)
    activity = Activity.empty(window)
    activity.relays[hostile] = [1, 0, 0]
    activity.relay_totals[hostile] = {"delivered": 1}
    activity.senders['"><svg onload=alert(1)>'] = [1, 0, 0]
    activity.sender_totals['"><svg onload=alert(1)>'] = {"delivered": 1}
    text = render(activity, name="hour", called="Last hour", per="per minute", now=T0)
    assert "<script>" not in text and "<svg onload" not in text
    for svg in re.findall(r"<svg .*?</svg>", text, re.S):
        parse(svg)
    assert "&lt;script&gt;" in text


def test_the_refresh_script_is_allowed_by_its_hash_alone() -> None:
    assert f"script-src '{SCRIPT_HASH}'" in CHARTS_CSP and "connect-src 'self'" in CHARTS_CSP
    assert "unsafe-inline" not in CHARTS_CSP and "default-src 'none'" in CHARTS_CSP
    assert "fetch(" in REFRESH


# -- the page of a real daemon ---------------------------------------------------------------------

CONFIG = """
[queue]
dir = "{queue}"
bounce_sender = "mailer-daemon@mqd.test"
scan_interval = "1s"
retry = {{ initial = "1h", max = "2h" }}

[http]
enabled = true
port = 0

[[spool]]
path = "{spool}"
relay = "main"
allowed_senders = ["*@example.com"]

[relays.main]
plugin = "memory"
"""


@pytest.fixture
async def daemon(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path
) -> AsyncIterator[Daemon]:
    config = load_config(write_config(CONFIG.format(queue=queue_dir, spool=spool)))
    daemon = Daemon(config, host=PluginHost(entry_points=False), shutdown_timeout=5)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)


async def test_the_charts_page_draws_the_traffic_of_the_last_hour(daemon: Daemon) -> None:
    MemoryRelay.instances["main"].replies["later@example.net"] = Reply(451, "try later", "4.3.0")
    spool = daemon.config.spools[0].path
    for _ in range(3):
        drop(spool, make_message(to=("alice@example.net",)))
    drop(spool, make_message(to=("later@example.net",)))
    assert daemon.http is not None and daemon.tracker is not None
    async with aiohttp.ClientSession(base_url=daemon.http.url) as session:

        async def live() -> str:
            async with session.get("/charts/live", params={"window": "hour"}) as response:
                assert response.status == 200
                return await response.text()

        async def counted() -> bool:
            text = await live()
            return 'data-series="delivered" data-total="3"' in text and (
                'data-series="deferred" data-total="1"' in text
            )

        await wait_until(counted, "3 delivered and 1 deferred on /charts/live")
        async with session.get("/charts") as response:
            assert response.status == 200
            assert response.headers["Content-Security-Policy"] == CHARTS_CSP
            page = await response.text()
        assert '<a href="/charts" class=here>Charts</a>' in page
        assert 'data-src="/charts/live?window=hour"' in page
        assert 'data-series="main" data-total="3"' in page  # per relay
        assert 'data-series="app@example.com" data-total="3"' in page  # per sender
        assert 'data-chart="latency"' in page and "<title" in page
        async with session.get("/charts", params={"window": "day"}) as response:
            assert response.status == 200
            assert "per 15 minutes" in await response.text()
        async with session.get("/charts", params={"window": "week"}) as response:
            assert response.status == 400


def test_a_long_legend_wraps_and_makes_the_chart_taller() -> None:
    names = [f"sender-with-a-long-name-{i}@example.com" for i in range(7)]
    svg = parse(
        bars(
            "wide",
            title="Wide",
            desc="Many series",
            labels=["a", "b"],
            tips=["a", "b"],
            series=[Series(name, "#123456", [1, 1]) for name in names],
        )
    )
    width, height = map(float, svg.get("viewBox", "").split()[2:])
    assert width == 760 and height > 240
    legend = next(g for g in svg.iter(f"{SVG}g") if g.get("class") == "legend")
    xs = [float(t.get("x", 0)) for t in legend.iter(f"{SVG}text")]
    assert (
        len(xs) == 7
        and max(xs) < width
        and len(set(t.get("y") for t in legend.iter(f"{SVG}text"))) > 1
    )
