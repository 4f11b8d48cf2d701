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
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path

import pytest
from corehelpers import drop, make_message

from mqd.config.load import load_config
from mqd.config.schema import Config
from mqd.daemon.root import Daemon
from mqd.message.reply import Reply
from mqd.plugins.host import PluginHost
from mqd.producer.inject import inject
from mqd.relays.memory import MemoryRelay
from mqd.testing import wait_until
from mqd.tracking.answers import MessageHistory

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


CATCHER_CONFIG = """
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
relay = "outbox"
allowed_senders = ["*@example.com"]

[[spool]]
path = "{spool2}"
relay = "flaky"
allowed_senders = ["*@example.com"]

[relays.outbox]
plugin = "outbox"
path = "{outbox}"

[relays.flaky]
plugin = "memory"
"""


@pytest.fixture
async def catcher(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path, tmp_path: Path
) -> AsyncIterator[Daemon]:
    """A daemon whose first spool goes to the outbox relay (the local mail catcher) and whose
    second goes to a memory relay that the test makes fail."""
    need_chromium()
    spool2 = tmp_path / "spool2"
    spool2.mkdir()
    text = CATCHER_CONFIG.format(
        queue=queue_dir, spool=spool, spool2=spool2, outbox=tmp_path / "outbox", token=TOKEN
    )
    daemon = Daemon(
        load_config(write_config(text)), host=PluginHost(entry_points=False), shutdown_timeout=5
    )
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)


def _png(width: int, height: int) -> bytes:
    """A red PNG of ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xc0\x10\x10" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def catcher_message(to: str, subject: str) -> bytes:
    """A message with text and HTML (a script, a remote image) and a file attached."""
    message = EmailMessage()
    message["From"] = "shop@example.com"
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate()
    message["Message-ID"] = make_msgid(domain="example.com")
    message.set_content("Thanks for your order.\nIt ships tomorrow.\n")
    message.add_alternative(
        "<html><body style='font-family:sans-serif'>"
        "<h1 style='color:#a00000'>Your order</h1>"
        "<script>document.body.innerHTML = 'SCRIPT RAN'</script>"
        "<img src='https://tracker.example.net/pixel.gif' alt='remote pixel'>"
        "<p>Thanks, <b>Alice</b>! <img src='cid:logo@shop' alt='logo'></p></body></html>",
        subtype="html",
    )
    html_part = message.get_payload()[1]  # type: ignore[index]
    html_part.add_related(_png(24, 24), maintype="image", subtype="png", cid="<logo@shop>")
    message.add_attachment(
        b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="invoice-42.pdf"
    )
    return message.as_bytes(policy=SMTP)


async def test_the_mail_catcher_message_page_lists_and_relay_health(
    catcher: Daemon, request: pytest.FixtureRequest
) -> None:
    from playwright.async_api import Request, Response, async_playwright

    caught = await recorded(
        catcher,
        catcher_message("alice@example.net", "Grüße: your order #42 <shipped>"),
        "dispatched",
    )
    flaky = MemoryRelay.instances["flaky"]
    flaky.replies["bob@example.net"] = Reply(451, "greylisted, come back in 5 minutes", "4.7.1")
    deferred_message = make_message(
        to=("carol@example.net", "bob@example.net"), subject="Two recipients, two replies"
    )
    found = re.search(rb"Message-ID: (<[^>]+>)", deferred_message)
    assert found is not None
    drop(catcher.config.spools[1].path, deferred_message)
    tracker = catcher.tracker
    assert tracker is not None
    key = found.group(1).decode()

    async def deferred_history() -> MessageHistory | None:
        history = await tracker.message(key)
        return history if history is not None and history.status == "deferred" else None

    history = await wait_until(deferred_history, "the message to bob to be deferred", 15)
    assert history is not None
    deferred = history.id
    inject(catcher.config.spools[1].path, b"\x00\x01 not a message at all\n")

    async def rejected() -> bool:
        return any(m.status == "rejected" for m in await tracker.recent(limit=5))

    await wait_until(rejected, "the file that is not a message to be rejected", 15)
    flaky.replies["carol@example.net"] = Reply(451, "mailbox busy", "4.2.1")
    flaky.replies["dave@example.net"] = Reply(451, "mailbox busy", "4.2.1")
    drop(catcher.config.spools[1].path, make_message(to=("dave@example.net",)))

    async def degraded() -> bool:
        return (await catcher.admin.status()).relays["flaky"].health == "degraded"

    await wait_until(degraded, "the flaky relay to show as degraded", 15)

    assert catcher.http is not None
    base = catcher.http.url
    ARTIFACTS.mkdir(exist_ok=True)
    remote: list[str] = []
    blocked: list[str] = []
    console: list[str] = []

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            # Nothing leaves the machine even were the policy broken: answer remote requests.
            await page.route(
                re.compile(r"^https?://(?!127\.0\.0\.1).*"),
                lambda route: route.fulfill(status=200, body=b"GIF89a"),
            )

            def note(response: Response) -> None:
                if not response.url.startswith(base):
                    remote.append(response.url)

            def failed(req: Request) -> None:
                if not req.url.startswith(base):
                    blocked.append(f"{req.url} {req.failure}")

            # A remote request that got an answer: the policy failed. (Chromium reports the
            # ones the policy stops as failed requests: that is what it must do.)
            page.on("response", note)
            page.on("requestfailed", failed)
            page.on("console", lambda message: console.append(message.text))

            async def shot(name: str) -> Path:
                path = ARTIFACTS / f"{request.node.name}-{name}.png"
                await page.screenshot(path=str(path), full_page=True)
                return path

            # The message page of a caught message: subject, headers, text, HTML, attachment.
            response = await page.goto(f"{base}messages/{caught}")
            assert response is not None and response.status == 200
            frame_element = await page.wait_for_selector("iframe.mail")
            assert frame_element is not None
            frame = await frame_element.content_frame()
            assert frame is not None
            await frame.wait_for_selector("h1")
            path = await shot("1-caught-message")
            # A full-page capture leaves the sandboxed (out-of-process) frame blank: the frame
            # gets its own screenshot, and one of the window scrolled to it.
            await frame_element.screenshot(path=str(ARTIFACTS / f"{request.node.name}-1-frame.png"))
            await frame_element.scroll_into_view_if_needed()
            await page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-1-frame-in-page.png"))
            text = await page.inner_text("main")
            assert "Grüße: your order #42 <shipped>" in text, f"see {path}"
            assert "It ships tomorrow." in text and "invoice-42.pdf" in text, f"see {path}"
            assert "the outbox folder of relay outbox" in text, f"see {path}"
            heading = await frame.inner_text("h1")
            assert heading == "Your order", f"see {path}"
            color = await frame.eval_on_selector("h1", "el => getComputedStyle(el).color")
            assert color == "rgb(160, 0, 0)", f"the mail's inline style: {color}; {path}"
            assert "SCRIPT RAN" not in await frame.inner_text("body"), f"see {path}"
            logo = await frame.eval_on_selector("img[alt=logo]", "el => el.naturalWidth")
            assert logo == 24, f"the message's own image (cid:) did not show: {logo}; {path}"
            assert not remote, f"the page loaded something remote: {remote}; {path}"
            assert blocked and all(b.lower().endswith("csp") for b in blocked), f"{blocked}"
            height = await page.eval_on_selector("iframe.mail", "el => getComputedStyle(el).height")
            assert height != "150px", f"the page's own stylesheet was blocked; {path}"

            # The lists: subjects, per-recipient replies, human times, not a message.
            await page.goto(f"{base}messages")
            path = await shot("2-messages")
            listing = await page.inner_text("main table")
            assert "Grüße: your order #42 <shipped>" in listing, f"see {path}"
            assert "Two recipients, two replies" in listing, f"see {path}"
            assert "451 4.7.1 greylisted" in listing, f"see {path}"
            assert "not a message" in listing and "(a bounce)" not in listing, f"see {path}"
            assert re.search(r"\b(just now|\d+ s ago)\b", listing), f"see {path}"
            assert not re.search(r"\b1[0-9]{9}\.[0-9]", listing), f"a raw epoch; see {path}"

            await page.goto(f"{base}messages/{deferred}")
            path = await shot("3-deferred-message")
            queue_part = await page.inner_text("h3:text-is('Its recipients') + table")
            rows = {line.split("\t")[0]: line for line in queue_part.splitlines()[1:]}
            assert "greylisted" in rows["bob@example.net"], f"{rows}; {path}"
            assert "greylisted" not in rows["carol@example.net"], f"{rows}; {path}"
            facts = await page.inner_text("h2:text-is('In the queue') + table")
            assert re.search(r"Next attempt\s+in (59 min|1 h)", facts), f"{facts!r}; {path}"

            await page.goto(f"{base}failed")
            path = await shot("4-failed")
            text = await page.inner_text("main")
            assert "not a message" in text and "(a bounce)" not in text, f"see {path}"

            await page.goto(base)
            path = await shot("5-overview")
            row = await page.inner_text("table:not(.kv) tbody tr:has(td:text-is('flaky'))")
            assert "healthy" not in row and "mailbox busy" in row, f"{row!r}; see {path}"
            assert "degraded" in row or "failing" in row, f"{row!r}; see {path}"
            outbox = await page.inner_text("table:not(.kv) tbody tr:has(td:text-is('outbox'))")
            assert "healthy" in outbox, f"{outbox!r}; see {path}"

            page_violations = [
                line for line in console if "Content Security Policy" in line and "style" in line
            ]
            assert not page_violations, f"{page_violations}"

            # Through a proxy, signed in with the token: the frame comes with the cookie too.
            context = await browser.new_context(
                extra_http_headers={"X-Forwarded-For": "203.0.113.7"}
            )
            remote_page = await context.new_page()
            await remote_page.goto(f"{base}login?token={TOKEN}")
            await remote_page.goto(f"{base}messages/{caught}")
            framed = await remote_page.wait_for_selector("iframe.mail")
            assert framed is not None
            inner = await framed.content_frame()
            assert inner is not None
            await inner.wait_for_selector("h1")
            assert await inner.inner_text("h1") == "Your order"
        finally:
            await browser.close()
