"""Issue 6's "done when", end to end in one running daemon:

- a message sent through the SendGrid plugin (to SendGrid's contract, the plugin's fake API),
  then a signed SendGrid "delivered" and "open" webhook, shows all its events in ``mqd history``
  and in the API; a forged webhook is refused and records nothing;
- an SES bounce through SNS, signed by a test key whose certificate URL the relay's config allows
  explicitly, marks the recipient bounced;
- the web view renders the message's timeline in Chromium (screenshot in tests/artifacts/).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import providerfixtures
import pytest
from aiohttp import web
from providerfixtures import API_KEY, REGION, FakeSendGrid, MotoSES

from mqd.daemon.root import Daemon
from mqd.testing import Harness, make_message, wait_until
from mqd.tracking.answers import MessageHistory

aws, sendgrid, ses = providerfixtures.aws, providerfixtures.sendgrid, providerfixtures.ses

from mqd_sendgrid.testing import new_key_pair, signed_headers  # noqa: E402
from mqd_ses.testing import (  # noqa: E402
    TOPIC_ARN,
    new_signing_cert,
    ses_bounce_notification,
    sign_sns,
    sns_headers,
)
from test_webview_browser import CHROMIUM, CHROMIUM_ARGS, need_chromium  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture
async def cert_server() -> AsyncIterator[tuple[Any, str]]:
    """The test SNS signing key, and the URL of its certificate on a local HTTP server."""
    key, pem = new_signing_cert()
    app = web.Application()

    async def certificate(request: web.Request) -> web.Response:
        return web.Response(body=pem, content_type="application/x-pem-file")

    app.router.add_get("/SimpleNotificationService-test.pem", certificate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield key, f"http://127.0.0.1:{port}/SimpleNotificationService-test.pem"
    await runner.cleanup()


async def wait_for_status(daemon: Daemon, address: str, status: str) -> MessageHistory:
    tracker = daemon.tracker
    assert tracker is not None

    async def shown() -> MessageHistory | None:
        found = await tracker.history(address)
        return found[0] if found and found[0].status == status else None

    history = await wait_until(shown, f"<{address}> to show {status!r}", 20)
    assert history is not None
    return history


def history_cli(config_path: Path, key: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mqd", "--config", str(config_path), "history", key],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_tracking_end_to_end(
    mqd_harness: Harness,
    sendgrid: FakeSendGrid,
    ses: MotoSES,
    cert_server: tuple[Any, str],
    tmp_path: Path,
) -> None:
    need_chromium()
    sns_key, cert_url = cert_server
    sg_private, sg_public = new_key_pair()
    api_key = tmp_path / "sendgrid-key"
    api_key.write_text(API_KEY + "\n")
    api_key.chmod(0o600)  # a secret file must not be readable by others
    mqd_harness.configure(
        {
            "sendgrid": {
                "plugin": "sendgrid",
                "base_url": sendgrid.url,
                "api_key_file": api_key,
                "allowed_senders": ["*@example.com", "*@news.example.com"],
                "webhook_verification_key": sg_public,
            },
            "ses": {
                "plugin": "ses",
                "region": REGION,
                "endpoint_url": ses.endpoint_url,
                "api_attempts": 1,
                "allowed_senders": ["*@news.example.com"],
                "webhook_topics": [TOPIC_ARN],
                # The test's signing certificate is served here: allowed explicitly.
                "webhook_certificate_urls": [cert_url],
            },
        },
        spools=[
            {
                "path": mqd_harness.spool_dir,
                "relay": "sendgrid",
                "allowed_senders": ["*@example.com", "*@news.example.com"],
            }
        ],
        routes=[{"senders": ["*@news.example.com"], "relay": "ses"}],
        tables={"http": {"enabled": True, "port": 0}},
    )
    daemon = Daemon(mqd_harness.config, host=mqd_harness.host)  # type: ignore[arg-type]
    running = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 15)
        assert daemon.http is not None and daemon.tracker is not None
        base = daemon.http.url.rstrip("/")

        # 1. Through SendGrid: dispatched, with SendGrid's X-Message-Id as the provider id.
        mqd_harness.drop(
            make_message(
                sender="app@example.com",
                to=["bob@example.net"],
                headers={"Message-ID": "<e2e-sg@example.com>"},
            )
        )
        sent = await wait_for_status(daemon, "bob@example.net", "dispatched")
        mqd_id = sent.id
        [bob] = sent.recipients
        provider_id = bob.provider_id
        assert provider_id and len(sendgrid.sent) == 1
        assert sendgrid.sent[0]["custom_args"]["mqd_id"] == mqd_id

        # 2. SendGrid's signed Event Webhook: delivered, then open.
        now = int(time.time())
        events = [
            {
                "email": "bob@example.net",
                "timestamp": now,
                "event": "delivered",
                "response": "250 2.0.0 OK queued",
                "sg_event_id": "sg-evt-delivered-1",
                "sg_message_id": f"{provider_id}.recvd-5f8b-1-0",
                "mqd_id": mqd_id,
            },
            {
                "email": "bob@example.net",
                "timestamp": now + 1,
                "event": "open",
                "sg_event_id": "sg-evt-open-1",
                "sg_message_id": f"{provider_id}.recvd-5f8b-1-0",
                "mqd_id": mqd_id,
            },
        ]
        body = json.dumps(events).encode()
        hook = f"{base}/webhooks/sendgrid"
        async with aiohttp.ClientSession() as http:
            async with http.post(hook, data=body, headers=signed_headers(sg_private, body)) as r:
                assert r.status == 200, await r.text()
            # The same delivery again (SendGrid retries): recorded once.
            async with http.post(hook, data=body, headers=signed_headers(sg_private, body)) as r:
                assert r.status == 200
            counted = await daemon.tracker.message(mqd_id)
            assert counted is not None
            before = len(counted.events)

            # Forged: signed with another key, or the body changed after signing.
            other, _ = new_key_pair()
            forged = json.dumps([{**events[1], "event": "spamreport", "sg_event_id": "x"}])
            for data, headers in (
                (forged.encode(), signed_headers(other, forged.encode())),
                (forged.encode(), signed_headers(sg_private, body)),
            ):
                async with http.post(hook, data=data, headers=headers) as r:
                    assert r.status == 403
            history = await daemon.tracker.message(mqd_id)
            assert history is not None and len(history.events) == before
            assert history.status == "opened"

            # 3. The API shows every event.
            async with http.get(f"{base}/api/v1/messages/{mqd_id}") as r:
                assert r.status == 200
                document = await r.json()
            timeline = [(e["status"], e["source"]) for e in document["events"]]
            assert timeline == [
                ("accepted", "mqd"),
                ("queued", "mqd"),
                ("dispatched", "mqd"),
                ("delivered", "sendgrid"),
                ("opened", "sendgrid"),
            ]
            assert document["recipients"][0]["status"] == "opened"

            # 4. Through SES, then a bounce through SNS signed with the allowed test cert.
            mqd_harness.drop(
                make_message(sender="letters@news.example.com", to=["carol@example.net"])
            )
            sent = await wait_for_status(daemon, "carol@example.net", "dispatched")
            [carol] = sent.recipients
            assert carol.relay == "ses" and carol.provider_id
            notification = sign_sns(
                ses_bounce_notification(
                    recipient="carol@example.net",
                    mqd_id=sent.id,
                    message_id=carol.provider_id,
                ),
                sns_key,
                cert_url,
            )
            async with http.post(
                f"{base}/webhooks/ses",
                data=json.dumps(notification).encode(),
                headers=sns_headers(notification),
            ) as r:
                assert r.status == 200, await r.text()
            bounced = await daemon.tracker.message(sent.id)
            assert bounced is not None
            assert bounced.recipients[0].status == "bounced"
            assert "5.1.1" in (bounced.recipients[0].reply or "")
            async with http.get(f"{base}/api/v1/failures") as r:
                assert [m["id"] for m in (await r.json())["messages"]] == [sent.id]

        # 5. mqd history, a separate process reading the store, shows it all.
        shown = history_cli(mqd_harness.config_path, "<e2e-sg@example.com>")
        for status in ("accepted", "queued", "dispatched", "delivered", "opened"):
            assert f"  {status}" in shown, shown
        assert "from sendgrid" in shown
        assert "bounced" in history_cli(mqd_harness.config_path, "carol@example.net")

        # 6. The web view renders the message's timeline in Chromium.
        from playwright.async_api import async_playwright

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "tracking-e2e-message.png"
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                await page.goto(f"{base}/messages/{mqd_id}")
                await page.screenshot(path=str(shot), full_page=True)
                text = await page.inner_text("body")
            finally:
                await browser.close()
        for expected in ("<e2e-sg@example.com>", "delivered", "opened", "sendgrid"):
            assert expected in text, f"{expected!r} not on the page (screenshot: {shot})"
    finally:
        daemon.request_stop()
        await asyncio.wait_for(running, 15)
