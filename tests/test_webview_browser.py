"""The web view in a real browser: Debian's Chromium, driven by Playwright, against a real daemon.

It proves what an HTML parser cannot: that the pages work under their own Content-Security-
Policy (the stylesheet's hash matches, the search form may submit), that the links lead from the
overview to a message's timeline, and that a browser signs in with the token and keeps the
cookie. Screenshots of each page go to tests/artifacts/ (named in every assertion message).

Skipped when /usr/bin/chromium is missing, except under CI=true, where that is a failure:
.ci/run installs Debian's ``chromium`` package.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from corehelpers import drop, make_message

from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.message.reply import Reply
from mqd.plugins.host import PluginHost
from mqd.relays.memory import MemoryRelay
from mqd.testing import wait_until

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-test-token-41c9"

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

[[spool]]
path = "{spool}"
relay = "main"
allowed_senders = ["*@example.com"]

[relays.main]
plugin = "memory"
"""


def need_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{CHROMIUM} is missing under CI=true: .ci/run installs Debian's chromium package "
            "(apt-get install -y chromium) before the tests; see its log"
        )
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (Debian) to run this test")


@pytest.fixture
async def daemon(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path
) -> AsyncIterator[Daemon]:
    need_chromium()
    text = CONFIG.format(queue=queue_dir, spool=spool, token=TOKEN)
    config: Config = load_config(write_config(text))
    daemon = Daemon(config, host=PluginHost(entry_points=False), shutdown_timeout=5)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)


async def recorded(daemon: Daemon, message: bytes, status: str) -> str:
    """Drop ``message`` into the spool; its queue id once the event store shows ``status``."""
    found = re.search(rb"Message-ID: (<[^>]+>)", message)
    assert found is not None
    drop(daemon.config.spools[0].path, message)
    tracker = daemon.tracker
    assert tracker is not None
    key = found.group(1).decode()

    async def shown() -> str | None:
        history = await tracker.message(key)
        return str(history.id) if history is not None and history.status == status else None

    queue_id = await wait_until(shown, f"the message to show {status!r} in the event store", 15)
    assert queue_id is not None
    return queue_id


async def test_from_the_overview_to_a_message_timeline(
    daemon: Daemon, request: pytest.FixtureRequest
) -> None:
    from playwright.async_api import ConsoleMessage, async_playwright

    MemoryRelay.instances["main"].replies["bob@example.net"] = Reply(
        550, "no such user here", "5.1.1"
    )
    good = await recorded(daemon, make_message(to=("alice@example.net",)), "dispatched")
    bad = await recorded(daemon, make_message(to=("bob@example.net",)), "failed")
    assert daemon.http is not None
    base = daemon.http.url
    ARTIFACTS.mkdir(exist_ok=True)
    shots: list[Path] = []
    console: list[str] = []

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})

            def keep(message: ConsoleMessage) -> None:
                console.append(f"{message.type}: {message.text}")

            page.on("console", keep)

            async def shot(name: str) -> Path:
                path = ARTIFACTS / f"{request.node.name}-{name}.png"
                await page.screenshot(path=str(path), full_page=True)
                shots.append(path)
                return path

            # The overview: counts, the failed count, the relay's health.
            response = await page.goto(base)
            assert response is not None
            path = await shot("1-overview")
            assert response.status == 200, f"GET / answered {response.status}; see {path}"
            assert await page.inner_text("h1") == "Queue", f"see {path}"
            relay_row = await page.inner_text("table:not(.kv) tbody tr")
            assert "main" in relay_row and "healthy" in relay_row, f"{relay_row!r}; see {path}"
            # The inline stylesheet ran under the CSP (its hash matches): the header is dark.
            background = await page.eval_on_selector(
                "header", "el => getComputedStyle(el).backgroundColor"
            )
            assert background == "rgb(29, 35, 48)", f"stylesheet blocked? {background}; {path}"

            # Messages: both listed; follow the link to the delivered one.
            await page.click("header >> text=Messages")
            await page.wait_for_url(f"{base}messages")
            path = await shot("2-messages")
            listed = await page.inner_text("main table")
            assert good in listed and bad in listed, f"see {path}"
            await page.click(f"a:text-is('{good}')")
            await page.wait_for_url(f"{base}messages/{good}")
            path = await shot("3-message")
            assert good in await page.inner_text("h1"), f"see {path}"
            timeline = page.locator("h2:text-is('Timeline') + table tbody tr td:nth-child(2)")
            statuses = [s.strip() for s in await timeline.all_inner_texts()]
            assert statuses[:3] == ["accepted", "queued", "dispatched"], f"{statuses}; {path}"
            recipients = await page.inner_text("h2:text-is('Recipients') + table")
            assert "alice@example.net" in recipients and "dispatched" in recipients, f"{path}"

            # The search form submits under form-action 'self'.
            await page.click("header >> text=Messages")
            await page.fill("input[name=q]", "bob@example.net")
            await page.click("form button")
            await page.wait_for_url(re.compile(r".*/messages\?q=bob%40example\.net.*"))
            path = await shot("4-search")
            found = await page.inner_text("main table")
            assert bad in found and good not in found, f"see {path}"

            # Failed: the bounce with its reason, and the file in the failed folder.
            await page.click("header >> text=Failed")
            await page.wait_for_url(f"{base}failed")
            path = await shot("5-failed")
            text = await page.inner_text("main")
            assert bad in text and "no such user here" in text, f"see {path}"
            assert "In the failed folder (1)" in text, f"see {path}"

            violations = [line for line in console if "Content Security Policy" in line]
            assert not violations, f"{violations}; see {shots}"
        finally:
            await browser.close()


async def test_a_browser_behind_a_proxy_signs_in_with_the_token(
    daemon: Daemon, request: pytest.FixtureRequest
) -> None:
    from playwright.async_api import async_playwright

    assert daemon.http is not None
    base = daemon.http.url
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            # What a reverse proxy adds: the browser no longer counts as local.
            context = await browser.new_context(
                extra_http_headers={"X-Forwarded-For": "203.0.113.7"}
            )
            page = await context.new_page()

            async def shot(name: str) -> Path:
                path = ARTIFACTS / f"{request.node.name}-{name}.png"
                await page.screenshot(path=str(path), full_page=True)
                return path

            response = await page.goto(base)
            assert response is not None
            path = await shot("1-refused")
            assert response.status == 403, f"see {path}"
            assert await page.inner_text("h1") == "Not allowed", f"see {path}"

            await page.fill("input[name=token]", "a wrong token")
            await page.click("form button")
            path = await shot("2-wrong-token")
            assert "not the one" in await page.inner_text("main"), f"see {path}"

            await page.fill("input[name=token]", TOKEN)
            await page.click("form button")
            await page.wait_for_url(base)
            path = await shot("3-signed-in")
            assert await page.inner_text("h1") == "Queue", f"see {path}"
            [cookie] = await context.cookies(base)
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", f"{cookie}"
            assert TOKEN not in cookie["value"], "the cookie must not hold the token"
            # The cookie carries on to the other pages.
            response = await page.goto(f"{base}failed")
            assert response is not None and response.status == 200, f"see {await shot('4')}"
        finally:
            await browser.close()
