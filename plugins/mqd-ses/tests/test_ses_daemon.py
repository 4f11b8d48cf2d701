"""End to end: a spool routed to ``plugin = "ses"`` (installed through its entry point), the
daemon run once, moto's SES receiving what the daemon sends."""

from __future__ import annotations

import json
from typing import Any

from mqd.testing import Harness, make_message
from ses_moto import REGION, MotoSES


def ses_relay(moto: MotoSES, **keys: Any) -> dict[str, dict[str, Any]]:
    return {
        "ses": {
            "plugin": "ses",
            "region": REGION,
            "endpoint_url": moto.endpoint_url,
            "api_attempts": 1,
            **keys,
        }
    }


async def test_the_daemon_delivers_through_ses(moto: MotoSES, mqd_harness: Harness) -> None:
    mqd_harness.configure(ses_relay(moto, tags={"app": "shop"}))
    message = make_message(
        sender="app@example.com",
        to=["rcpt@example.net"],
        subject="Your order",
        headers={"Bcc": "audit@example.org"},
    )
    mqd_harness.drop(message)

    await mqd_harness.run_once()

    assert mqd_harness.queued() == []
    assert mqd_harness.failed() == []
    [sent] = moto.sent()
    assert sent["source"] == "app@example.com"
    assert {"rcpt@example.net", "audit@example.org"} <= set(sent["destinations"])
    raw = sent["raw_data"].encode("utf-8")
    assert b"Subject: Your order" in raw
    assert b"Bcc" not in raw and b"audit@" not in raw  # mqd stripped it; the envelope has it
    [request] = moto.requests()
    assert request["Destination"] == {"ToAddresses": ["rcpt@example.net", "audit@example.org"]}
    [mqd_id, app] = request["EmailTags"]
    assert mqd_id["Name"] == "mqd_id" and mqd_id["Value"].isalnum()
    assert app == {"Name": "app", "Value": "shop"}
    # The body SES got is the message as dropped, apart from the stripped Bcc line.
    body = message.split(b"\r\n\r\n", 1)[1]
    assert raw.endswith(body)


async def test_an_unverified_sender_bounces_with_ses_text(
    moto: MotoSES, mqd_harness: Harness
) -> None:
    """example.com is not verified here; the bounce sender's domain is, so the bounce (from <>,
    identity taken from its From header) goes out through SES too."""
    moto.reset()
    moto.verify("mqd.test")
    mqd_harness.configure(ses_relay(moto))
    mqd_harness.drop(make_message(sender="app@example.com", to=["rcpt@example.net"]))

    await mqd_harness.run_once()

    assert mqd_harness.queued() == []
    [failed] = mqd_harness.failed()
    record = json.dumps(failed)
    assert "MessageRejected" in record
    assert "Did not have authority to send from email app@example.com" in record
    [bounce] = moto.sent()
    assert bounce["destinations"][0] == "app@example.com"
    assert bounce["source"] == "mailer-daemon@mqd.test"
    assert "Did not have authority to send from email app@example.com" in bounce["raw_data"]
    first, second = moto.requests()
    assert first["FromEmailAddress"] == "app@example.com"
    assert first["EmailTags"] == [{"Name": "mqd_id", "Value": failed["id"]}]
    assert "FromEmailAddress" not in second  # the bounce, from the null sender
