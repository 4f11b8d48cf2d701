"""The deployment guide's install commands, run as written (docs/deployment/README.md): wheels
built from this repository, installed into a new virtual environment, mqd and its plugins
there; and the LICENSE the project declares, shipped in the wheel."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_guide_builds_and_installs_what_it_says() -> None:
    guide = (ROOT / "docs" / "deployment" / "README.md").read_text(encoding="utf-8")
    assert "pip wheel --no-deps -w dist . ./plugins/mqd-sendgrid ./plugins/mqd-ses" in guide
    assert "pip install dist/mqd-*.whl" in guide
    assert re.search(r"pip install mqd(\s|$)", guide) is None, "mqd is on no package index"


@pytest.mark.slow
def test_wheels_built_from_the_repository_install_and_run(tmp_path: Path) -> None:
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    # As the guide says, with the test run's hatchling instead of one fetched per build.
    pip = [sys.executable, "-m", "pip"]
    projects = [".", "./plugins/mqd-sendgrid", "./plugins/mqd-ses"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), *projects],
        cwd=ROOT,
        check=True,
        timeout=600,
    )
    wheels = sorted(p.name for p in dist.glob("*.whl"))
    assert [w.split("-")[0] for w in wheels] == ["mqd", "mqd_sendgrid", "mqd_ses"]
    with zipfile.ZipFile(next(dist.glob("mqd-*.whl"))) as wheel:
        assert any(name.endswith("LICENSE") for name in wheel.namelist()), "the MIT license"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    into = [*pip, "--python", str(venv / "bin" / "python")]
    mqd = venv / "bin" / "mqd"
    # The dependencies come from this test run's environment (a .pth file), so that the test
    # needs no package index; `pip check` then proves every one the wheels declare is there.
    site = next((venv / "lib").glob("python3*/site-packages"))
    here = next(p for p in sys.path if p.endswith("site-packages"))
    (site / "deps-of-the-test-run.pth").write_text(here + "\n")
    subprocess.run(
        [*into, "install", "-q", "--no-deps", *(str(p) for p in sorted(dist.glob("*.whl")))],
        check=True,
        timeout=600,
    )
    subprocess.run([*into, "check"], check=True, timeout=120, capture_output=True)
    version = subprocess.run([str(mqd), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("mqd, version ")
    plugins = subprocess.run([str(mqd), "plugins"], capture_output=True, text=True, check=True)
    assert "relays: sendgrid" in plugins.stdout and "relays: ses" in plugins.stdout
