"""The charts and the operator's actions in a real browser: Debian's Chromium, driven by
Playwright, against a real daemon (as tests/test_webview_browser.py, whose set-up this shares).

It proves what HTTP alone cannot: that the charts' SVG renders and the page's own script
refreshes it under its Content-Security-Policy, and that an operator clicks through sign-in,
ticking a message, Hold, the confirmation, and sees it held. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from corehelpers import drop, make_message
from test_webview_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, need_chromium

from mqd.config.load import load_config
from mqd.daemon.root import Daemon
from mqd.message.reply import Reply
from mqd.plugins.host import PluginHost
from mqd.relays.memory import MemoryRelay
from mqd.testing import wait_until

TOKEN = "browser-read-token-77a0"
OPERATOR = "browser-operator-token-3e5d"
LATER = "later@example.net"

CONFIG = """
[queue]
dir = "{queue}"
bounce_sender = "mailer-daemon@mqd.test"
scan_interval = "1s"
retry = {{ initial = "1h", max = "2h" }}

[http]
enabled = true
port = 0
token = "{token}"
operator_token = "{operator}"

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
    need_chromium()
    text = CONFIG.format(queue=queue_dir, spool=spool, token=TOKEN, operator=OPERATOR)
    daemon = Daemon(
        load_config(write_config(text)), host=PluginHost(entry_points=False), shutdown_timeout=5
    )
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        MemoryRelay.instances["main"].replies[LATER] = Reply(451, "try again later", "4.3.0")
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)


async def delivered(daemon: Daemon, count: int) -> None:
    """Wait until the relay has taken ``count`` messages in all."""
    relay = MemoryRelay.instances["main"]
    await wait_until(lambda: len(relay.sent) >= count, f"the relay to take {count} messages")


async def deferred_entry(daemon: Daemon) -> str:
    drop(daemon.config.spools[0].path, make_message(to=(LATER,)))

    async def first_deferred() -> str | None:
        rows = await daemon.admin.op_list(state="deferred")
        return str(rows[0]["id"]) if rows else None

    entry_id = await wait_until(first_deferred, "the message to be deferred")
    assert entry_id is not None
    return entry_id


async def test_the_charts_render_and_refresh_themselves(
    daemon: Daemon, request: pytest.FixtureRequest
) -> None:
    from playwright.async_api import ConsoleMessage, async_playwright

    spool = daemon.config.spools[0].path
    for _ in range(2):
        drop(spool, make_message(to=("alice@example.net",)))
    await delivered(daemon, 2)
    await deferred_entry(daemon)
    assert daemon.http is not None
    base = daemon.http.url
    ARTIFACTS.mkdir(exist_ok=True)
    console: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 900})

            def keep(message: ConsoleMessage) -> None:
                console.append(f"{message.type}: {message.text}")

            page.on("console", keep)

            async def shot(name: str) -> Path:
                path = ARTIFACTS / f"{request.node.name}-{name}.png"
                await page.screenshot(path=str(path), full_page=True)
                return path

            # Reached from the overview's navigation.
            await page.goto(base)
            await page.click("header >> text=Charts")
            await page.wait_for_url(f"{base}charts")
            response = await page.goto(f"{base}charts?every=1")
            assert response is not None and response.status == 200
            path = await shot("1-charts")
            outcomes = page.locator("svg[data-chart=outcomes]")
            box = await outcomes.bounding_box()
            assert box is not None and box["width"] > 600 and box["height"] > 150, f"{path}"
            assert await outcomes.get_attribute("data-series") == "delivered deferred failed"
            total = "svg[data-chart=outcomes] g[data-series=delivered]"
            assert await page.get_attribute(total, "data-total") == "2", f"see {path}"
            bars = page.locator("svg[data-chart=outcomes] g[data-series=delivered] rect")
            assert await bars.count() >= 1, f"see {path}"
            relay = "svg[data-chart=relays] g[data-series=main]"
            assert await page.get_attribute(relay, "data-total") == "2", f"see {path}"
            title = await page.inner_html("svg[data-chart=latency] > title")
            assert "latency" in title.lower()

            # More mail flows; the page's script brings the charts up to date by itself.
            for _ in range(2):
                drop(spool, make_message(to=("bob@example.net",)))
            await delivered(daemon, 4)
            await page.wait_for_function(
                """() => document.querySelector(
                    'svg[data-chart=outcomes] g[data-series=delivered]'
                ).getAttribute('data-total') === '4'""",
                timeout=15000,
            )
            assert await page.get_attribute("#charts", "data-refreshed"), "not refreshed"
            path = await shot("2-refreshed")
            violations = [line for line in console if "Content Security Policy" in line]
            assert not violations, f"{violations}; see {path}"
        finally:
            await browser.close()


async def test_an_operator_signs_in_holds_a_message_and_confirms(
    daemon: Daemon, request: pytest.FixtureRequest
) -> None:
    from playwright.async_api import ConsoleMessage, async_playwright

    entry = await deferred_entry(daemon)
    assert daemon.http is not None
    base = daemon.http.url
    ARTIFACTS.mkdir(exist_ok=True)
    console: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()

            def keep(message: ConsoleMessage) -> None:
                console.append(f"{message.type}: {message.text}")

            page.on("console", keep)

            async def shot(name: str) -> Path:
                path = ARTIFACTS / f"{request.node.name}-{name}.png"
                await page.screenshot(path=str(path), full_page=True)
                return path

            # On this machine the queue shows, read only: no box to tick, no button.
            await page.goto(base)
            await page.click("header >> text=Queued")
            await page.wait_for_url(f"{base}queue")
            path = await shot("1-read-only")
            assert entry in await page.inner_text("main table"), f"see {path}"
            assert await page.locator("input[type=checkbox]").count() == 0, f"see {path}"

            await page.click("text=Sign in as operator")
            await page.wait_for_url(f"{base}operator/login")
            await page.fill("input[name=token]", OPERATOR)
            await page.click("form button")
            await page.wait_for_url(f"{base}queue")
            path = await shot("2-signed-in")
            assert "Signed in as operator" in await page.inner_text("main"), f"see {path}"
            cookie = next(c for c in await context.cookies(base) if c["name"] == "mqd_operator")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", f"{cookie}"

            await page.check(f"input[type=checkbox][value='{entry}']")
            await page.click("button[name=action][value=hold]")
            await page.wait_for_selector("text=Hold 1 message(s)?")
            path = await shot("3-confirm")
            assert (await daemon.store.get(entry)).state.value == "deferred", "held unconfirmed"

            await page.click("button:text('Yes, hold')")
            await page.wait_for_selector("h1:text('Held: 1 message(s)')")
            path = await shot("4-held")
            assert entry in await page.inner_text("main"), f"see {path}"
            assert (await daemon.store.get(entry)).state.value == "held", f"see {path}"

            await page.click("text=Back to the queue")
            await page.wait_for_url(f"{base}queue")
            row = await page.inner_text(f"tr:has(a:text-is('{entry}'))")
            assert re.search(r"\bheld\b", row), f"{row!r}; see {await shot('5-queue')}"

            # Signing out: the buttons go, and the old session can act no more.
            await page.click("button:text('Sign out')")
            await page.wait_for_url(f"{base}queue")
            path = await shot("6-signed-out")
            assert await page.locator("button[name=action]").count() == 0, f"see {path}"
            violations = [line for line in console if "Content Security Policy" in line]
            assert not violations, f"{violations}"
        finally:
            await browser.close()
