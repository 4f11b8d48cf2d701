"""``[[account]]`` (issue 24 #2): senders grouped under a name with limits per minute, hour and
day; over a limit mail waits uncounted (or is refused at hand-over); the counts survive restarts.

Each ``--once`` run is a restart; the daemon's ManualClock stands at the time the test chooses.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mqd.cli.main import cli
from mqd.clock import ManualClock
from mqd.config.accounts import account_for
from mqd.config.load import load_config
from mqd.config.schema import Config, QuotaConfig
from mqd.daemon.root import Daemon
from mqd.delivery.quota import Quota
from mqd.errors import ConfigError
from mqd.plugins.host import PluginHost
from mqd.producer.inject import inject
from mqd.queue.entry import QueueEntry
from mqd.relays.memory import MemoryRelay
from mqd.testing import make_message

CONFIG = """
[queue]
dir = "{queue}"
bounce_sender = "mailer-daemon@mqd.test"

[[spool]]
path = "{spool}"
allowed_senders = ["*@shop.example", "*@example.com"]

[relays.main]
plugin = "memory"

[[account]]
name = "shop"
senders = ["*@shop.example"]
max_per_minute = 2
max_per_day = 100
{extra}
"""


@pytest.fixture
def make_config(
    write_config: Callable[[str], Path], spool: Path, queue_dir: Path
) -> Callable[..., Config]:
    def make(extra: str = "") -> Config:
        return load_config(write_config(CONFIG.format(queue=queue_dir, spool=spool, extra=extra)))

    return make


async def run_at(config: Config, host: PluginHost, now: float) -> Daemon:
    daemon = Daemon(config, host=host, once=True, clock=ManualClock(now))
    await daemon.run()
    return daemon


def sent_count() -> int:
    return len(MemoryRelay.instances["main"].sent)


def drop(spool: Path, sender: str, count: int) -> None:
    for n in range(count):
        inject(spool, make_message(sender=sender, subject=f"m{n}"))


def queued(queue_dir: Path) -> list[QueueEntry]:
    return [QueueEntry.from_json(p.read_bytes()) for p in (queue_dir / "state").glob("*")]


async def test_over_its_limit_an_accounts_mail_waits_uncounted_and_the_count_survives_restarts(
    make_config: Callable[..., Config], host: PluginHost, spool: Path, queue_dir: Path
) -> None:
    config = make_config()
    now = time.time()
    drop(spool, "orders@shop.example", 5)
    drop(spool, "app@example.com", 3)  # no account: no account limit
    daemon = await run_at(config, host, now)
    assert sent_count() == 2 + 3
    status = await daemon.admin.status()
    shop = status.accounts["shop"]
    assert shop.limits == {"minute": 2, "day": 100}
    assert shop.sent == {"minute": 2, "day": 2}
    assert shop.held >= 3
    # Held back without an attempt: waiting, not deferred.
    assert status.by_state["waiting"] == 3 and status.by_state["deferred"] == 0
    assert all(e.attempts == 0 for e in queued(queue_dir))

    await run_at(config, host, now + 10)  # a restart within the minute: still full
    assert sent_count() == 0, "the minute's count survived the restart"
    await run_at(config, host, now + 61)
    assert sent_count() == 2
    daemon = await run_at(config, host, now + 122)
    assert sent_count() == 1  # (each run's relay counts its own)
    status = await daemon.admin.status()
    assert status.accounts["shop"].sent["day"] == 5
    assert status.messages == 0
    assert not list((queue_dir / "failed").glob("*.json")), "waiting is never failing"


async def test_an_account_that_refuses_over_its_limit_refuses_at_hand_over_with_the_reason(
    make_config: Callable[..., Config], host: PluginHost, spool: Path, queue_dir: Path
) -> None:
    config = make_config('over_limit = "refuse"')
    drop(spool, "orders@shop.example", 4)
    daemon = await run_at(config, host, time.time())
    assert sent_count() == 2
    reasons = [json.loads(p.read_text())["reason"] for p in (queue_dir / "failed").glob("*.json")]
    assert len(reasons) == 2
    assert all("account shop reached its per-minute limit" in r for r in reasons)
    status = await daemon.admin.status()
    assert status.accounts["shop"].refused == 2
    assert status.accounts["shop"].over_limit == "refuse"


def test_an_account_is_found_by_its_senders_first_match_first() -> None:
    from mqd.config.schema import AccountConfig

    accounts = (
        AccountConfig("vip", ("boss@shop.example",), QuotaConfig()),
        AccountConfig("shop", ("*@shop.example",), QuotaConfig()),
    )
    assert account_for(accounts, "Boss@Shop.Example").name == "vip"  # type: ignore[union-attr]
    assert account_for(accounts, "orders@shop.example").name == "shop"  # type: ignore[union-attr]
    assert account_for(accounts, "app@example.com") is None


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('over_limit = "drop"', "over_limit"),
        ("max_per_hour = 0", "max_per_hour"),
        ('[[account]]\nname = "shop"\nsenders = ["a@b.example"]', "names another"),
        ('[[account]]\nname = "x"', "senders"),
    ],
)
def test_account_mistakes_are_named(
    make_config: Callable[..., Config], extra: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        make_config(extra)


def test_the_minute_window_is_exact_and_a_refund_gives_the_count_back() -> None:
    now = [1000.0]
    quota = Quota("a", QuotaConfig(max_per_minute=2), clock=lambda: now[0])
    assert quota.take() is None and quota.take() is None
    hold = quota.take()
    assert hold is not None and hold.limit == "per-minute"
    assert hold.seconds == pytest.approx(60.0)
    now[0] += 30
    quota.refund()  # the second did not go out
    assert quota.take() is None
    assert quota.sent_within(60) == 2
    now[0] += 30.5
    assert quota.take() is None, "the first send left the window"


async def test_the_history_per_user_filters_by_account(
    make_config: Callable[..., Config], host: PluginHost, spool: Path, write_config: Any
) -> None:
    config = make_config()
    drop(spool, "orders@shop.example", 2)
    drop(spool, "app@example.com", 1)
    await run_at(config, host, time.time())
    assert config.source is not None
    base = ["--config", str(config.source), "history"]
    runner = CliRunner()
    shown = await asyncio.to_thread(runner.invoke, cli, [*base, "--account", "shop", "--json"])
    assert shown.exit_code == 0, shown.output
    found = json.loads(shown.output)
    assert len(found) == 2
    assert {m["sender"] for m in found} == {"orders@shop.example"}
    assert {m["account"] for m in found} == {"shop"}
    none = await asyncio.to_thread(runner.invoke, cli, [*base, "--account", "nobody"])
    assert none.exit_code == 1 and "account 'nobody'" in none.output
    bare = await asyncio.to_thread(runner.invoke, cli, base)
    assert bare.exit_code == 2 and "--account" in bare.output


def test_mqd_status_draws_each_account_and_the_suppression_list() -> None:
    from mqd.admin.render import render_status

    lines = render_status(
        {
            "running": False,
            "messages": 0,
            "by_state": {},
            "failed": 0,
            "queue_dir": "/q",
            "suppressed": 3,
            "accounts": {
                "shop": {
                    "over_limit": "wait",
                    "limits": {"minute": 2, "day": 100},
                    "sent": {"minute": 2, "day": 40},
                    "held": 5,
                    "refused": 0,
                }
            },
        }
    )
    assert "  shop: 2/2 a minute, 40/100 a day; 5 held back over a limit" in lines
    assert any(line.startswith("suppressed") and "3 address(es)" in line for line in lines)
