"""End to end through the daemon: a spool whose relay is ``plugin = "sendgrid"``, run once."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

from mqd.testing import Harness, make_message
from sendgrid_fake import FakeSendGrid


def configure(harness: Harness, fake: FakeSendGrid, key_file: Path) -> None:
    harness.configure(
        {"sg": {"plugin": "sendgrid", "base_url": fake.url, "api_key_file": key_file}}
    )


def texts(body: dict[str, Any]) -> str:
    """Everything a reader of the request would see: content blocks and decoded attachments."""
    parts = [block["value"] for block in body["content"]]
    parts += [
        base64.b64decode(a["content"]).decode("utf-8", "replace")
        for a in body.get("attachments", [])
    ]
    return "\n".join(parts)


async def test_a_dropped_message_reaches_sendgrid(
    mqd_harness: Harness, fake: FakeSendGrid, key_file: Path
) -> None:
    configure(mqd_harness, fake, key_file)
    mqd_harness.drop(make_message(to=("ann@example.net",), subject="Order 42", body="Thanks!"))
    await mqd_harness.run_once()
    [body] = fake.sent
    assert body["subject"] == "Order 42"
    assert body["personalizations"] == [{"to": [{"email": "ann@example.net"}]}]
    assert body["content"][0]["value"].startswith("Thanks!")
    assert body["custom_args"]["mqd_id"], "mqd's queue id travels for correlation"
    assert mqd_harness.queued() == []
    assert mqd_harness.failed() == []


async def test_a_400_bounces_with_the_api_error_text(
    mqd_harness: Harness, fake: FakeSendGrid, key_file: Path
) -> None:
    configure(mqd_harness, fake, key_file)
    problem = "The attachment content must be base64 encoded."
    fake.answer(400, {"errors": [{"field": "attachments.0.content", "message": problem}]})
    mqd_harness.drop(make_message(to=("ann@example.net",)))
    await mqd_harness.run_once()
    [record] = mqd_harness.failed()
    assert problem in record["reason"]
    assert mqd_harness.queued() == []
    # The bounce goes back to the sender through the same relay, carrying SendGrid's words.
    [dsn] = fake.sent
    assert dsn["personalizations"][0]["to"] == [{"email": "app@example.com"}]
    assert problem in texts(dsn)


async def test_a_429_stays_queued_until_retry_after(
    mqd_harness: Harness, fake: FakeSendGrid, key_file: Path
) -> None:
    configure(mqd_harness, fake, key_file)
    fake.answer(
        429, {"errors": [{"field": None, "message": "too many requests"}]}, Retry_After="600"
    )
    mqd_harness.drop(make_message(to=("ann@example.net",)))
    before = time.time()
    await mqd_harness.run_once()
    [entry] = mqd_harness.queued()
    assert entry.attempts == 1
    assert entry.next_attempt_at >= before + 600, "no sooner than SendGrid asked"
    assert "too many requests" in (entry.last_reply or "")
    assert len(fake.requests) == 1
    assert mqd_harness.failed() == []
