"""Fixtures for tests that deliver through the provider plugins: SendGrid's contract (the
SendGrid plugin's fake API) and SES (moto's server), from the plugins' own test folders.

Import the fixtures by name into a test module: ``from providerfixtures import aws, sendgrid,
ses``. Without the plugins installed the module is skipped, except under CI=true, where the
README's test command installs them and a missing one must fail.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

if os.environ.get("CI") != "true":
    pytest.importorskip("mqd_sendgrid", reason="the mqd-sendgrid plugin is not installed")
    pytest.importorskip("mqd_ses", reason="the mqd-ses plugin is not installed")

sys.path[:0] = [str(ROOT / "plugins/mqd-sendgrid/tests"), str(ROOT / "plugins/mqd-ses/tests")]

from sendgrid_fake import API_KEY, FakeSendGrid  # noqa: E402
from ses_moto import REGION, MotoSES  # noqa: E402

__all__ = ["API_KEY", "REGION", "FakeSendGrid", "MotoSES", "aws", "sendgrid", "ses"]


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials only: nothing from the machine's AWS configuration."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDMQDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "mqd-test-secret")


@pytest.fixture
def sendgrid() -> Iterator[FakeSendGrid]:
    fake = FakeSendGrid().start()
    yield fake
    fake.stop()


@pytest.fixture
def ses(aws: None) -> Iterator[MotoSES]:
    server = MotoSES().start()
    server.reset()
    server.verify("example.com", "news.example.com")
    yield server
    server.stop()
