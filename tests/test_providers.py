"""One queue, three providers: a real SMTP server, SendGrid's contract (the SendGrid plugin's
fake API) and SES (moto's server), chosen by spool and by route; failover from SMTP to SendGrid
when the SMTP server is down; an hourly quota holding back a burst.

Needs the two plugins installed (the README's test command installs them). Their tests' fakes
are reused from their test folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import providerfixtures
from providerfixtures import API_KEY, REGION, FakeSendGrid, MotoSES
from smtpserver import SMTPPeer

from mqd.testing import Harness, make_message

aws, sendgrid, ses = providerfixtures.aws, providerfixtures.sendgrid, providerfixtures.ses


def relays(smtp: SMTPPeer, sendgrid: FakeSendGrid, ses: MotoSES, key: Path) -> dict[str, Any]:
    senders = ["*@example.com", "*@news.example.com"]
    return {
        "smtp": {
            "plugin": "smtp",
            "host": "127.0.0.1",
            "port": smtp.port,
            "security": "none",
            "connect_timeout": "2s",
            "allowed_senders": senders,
        },
        "sendgrid": {
            "plugin": "sendgrid",
            "base_url": sendgrid.url,
            "api_key_file": str(key),
            "allowed_senders": senders,
        },
        "ses": {
            "plugin": "ses",
            "region": REGION,
            "endpoint_url": ses.endpoint_url,
            "api_attempts": 1,
            "allowed_senders": ["*@news.example.com"],
            "max_per_hour": 3,
        },
    }


async def test_one_queue_three_providers_routes_failover_and_quota(
    mqd_harness: Harness, smtp_server: SMTPPeer, sendgrid: FakeSendGrid, ses: MotoSES, tmp_path
) -> None:
    key = tmp_path / "sendgrid-key"
    key.write_text(API_KEY + "\n")
    key.chmod(0o600)  # a secret file must not be readable by others
    second_spool = mqd_harness.root / "spool-marketing"
    mqd_harness.configure(
        relays(smtp_server, sendgrid, ses, key),
        spools=[
            {"path": mqd_harness.spool_dir, "relay": ["smtp", "sendgrid"]},
            {"path": second_spool, "relay": "sendgrid"},
        ],
        routes=[{"senders": ["*@news.example.com"], "relay": "ses"}],
    )

    # 1. Each message goes where its spool or its sender's route says.
    mqd_harness.drop(make_message(sender="app@example.com", to=["a@example.net"]), spool=0)
    mqd_harness.drop(make_message(sender="app@example.com", to=["b@example.net"]), spool=1)
    mqd_harness.drop(make_message(sender="letters@news.example.com", to=["c@example.net"]), spool=0)
    await mqd_harness.run_once()
    assert [m.rcpt_tos for m in smtp_server.messages] == [["a@example.net"]]
    assert [p["personalizations"][0]["to"][0]["email"] for p in sendgrid.sent] == ["b@example.net"]
    assert [r["Destination"]["ToAddresses"] for r in ses.requests()] == [["c@example.net"]]
    assert mqd_harness.queued() == [] and mqd_harness.failed() == []

    # 2. The SMTP server goes down: the first spool's mail fails over to SendGrid.
    smtp_server.stop()
    for n in range(3):
        mqd_harness.drop(make_message(sender="app@example.com", to=[f"down{n}@example.net"]))
    await mqd_harness.run_once()
    assert len(smtp_server.messages) == 1
    got = sorted(p["personalizations"][0]["to"][0]["email"] for p in sendgrid.sent)
    assert got == ["b@example.net", "down0@example.net", "down1@example.net", "down2@example.net"]
    assert mqd_harness.queued() == [] and mqd_harness.failed() == []

    # 3. A burst of newsletters meets SES's hourly quota of 3 (one already sent): two go out,
    # the rest wait in the queue without a counted attempt, and nothing bounces.
    for n in range(5):
        mqd_harness.drop(
            make_message(sender="letters@news.example.com", to=[f"reader{n}@example.net"])
        )
    await mqd_harness.run_once()
    assert len(ses.requests()) == 3
    held = mqd_harness.queued()
    assert len(held) == 3
    assert all(entry.attempts == 0 and entry.relays == ["ses"] for entry in held)
    assert mqd_harness.failed() == []
