"""Fixtures for the SendGrid plugin's tests: a fake SendGrid on 127.0.0.1 and relays built the
way the daemon builds them (through the installed entry point, unknown keys refused)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mqd.testing import relay_from_table

from mqd_sendgrid import SendGridRelay

sys.path.insert(0, os.path.dirname(__file__))

from sendgrid_fake import API_KEY, FakeSendGrid

MakeRelay = Callable[..., SendGridRelay]


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    server = FakeSendGrid().start()
    yield server
    server.stop()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "sendgrid-api-key"
    path.write_text(API_KEY + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture
def relay_table(fake: FakeSendGrid, key_file: Path) -> dict[str, Any]:
    """The least a relay needs to talk to ``fake``."""
    return {"base_url": fake.url, "api_key_file": str(key_file), "timeout": "10s"}


@pytest.fixture
async def make_relay(relay_table: dict[str, Any]) -> AsyncIterator[MakeRelay]:
    """``make_relay(**keys)``: a relay for ``fake`` with extra or replaced keys (``None`` removes
    a key); every relay made is closed after the test."""
    made: list[SendGridRelay] = []

    def make(**keys: Any) -> SendGridRelay:
        table = {**relay_table, **keys}
        relay = relay_from_table("sendgrid", {k: v for k, v in table.items() if v is not None})
        assert isinstance(relay, SendGridRelay)
        made.append(relay)
        return relay

    yield make
    for relay in made:
        await relay.aclose()
