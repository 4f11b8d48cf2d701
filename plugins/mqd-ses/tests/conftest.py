"""Fixtures for the SES plugin: moto's SES server, a scripted SES endpoint, an AWS environment
that never reaches the real AWS or the developer's ~/.aws, and relays built as the daemon does."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from mqd.testing import relay_from_table
from ses_fake import FakeSES
from ses_moto import REGION, MotoSES
from ses_support import MakeRelay

from mqd_ses import SESRelay


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Fake static credentials and a region; no shared config or credentials files of the
    developer, no instance metadata lookups. Returns the (absent) AWS config file path."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    config_file = tmp_path / "aws" / "config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config_file))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws" / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDMQDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "mqd-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return config_file


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoSES]:
    server = MotoSES().start()
    yield server
    server.stop()


@pytest.fixture
def moto(moto_server: MotoSES) -> MotoSES:
    """moto's SES, reset, with the domain ``example.com`` verified."""
    moto_server.reset()
    moto_server.verify("example.com")
    return moto_server


@pytest.fixture
def fake_ses() -> Iterator[FakeSES]:
    """A scripted SES endpoint (script it with ``fake_ses.script(...)``)."""
    server = FakeSES().start()
    yield server
    server.stop()


@pytest.fixture
async def make_relay() -> AsyncIterator[MakeRelay]:
    """``make_relay(endpoint_url, **keys)``: an SES relay built through the installed
    plugins from a ``[relays.test]`` table (``api_attempts = 1`` unless given), closed after
    the test."""
    relays: list[SESRelay] = []

    def make(endpoint_url: str | None, **keys: Any) -> SESRelay:
        table: dict[str, Any] = {"api_attempts": 1, **keys}
        if endpoint_url is not None:
            table["endpoint_url"] = endpoint_url
        relay = relay_from_table("ses", table)
        assert isinstance(relay, SESRelay)
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        await relay.aclose()
