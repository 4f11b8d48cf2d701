"""The soak (benchmarks/soak.py) in small: messages flow while the daemon is SIGKILLed at random
every fraction of a second; every message must arrive at least once and none may be stuck.
The full 20,000-message run is documented in docs/reliability.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SOAK = Path(__file__).parent.parent / "benchmarks" / "soak.py"


def test_random_sigkills_under_load_lose_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--messages",
            "600",
            "--min-kill",
            "0.3",
            "--max-kill",
            "0.9",
            "--seed",
            "7",
            "--workdir",
            str(tmp_path),
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["kills"] >= 1
    assert report["delivered_at_least_once"] == 600 and report["lost"] == 0
    assert report["left_in_queue"] == 0 and report["failed"] == 0
