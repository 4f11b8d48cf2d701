"""contrib/launchd: the property lists parse, use only keys launchd.plist(5) documents, with the
types launchd expects, and run mqd the way the systemd unit does (same config, graceful stop).

``plutil -lint`` checks them too where it exists (macOS).
"""

from __future__ import annotations

import plistlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mqd.config.schema import QueueConfig

ROOT = Path(__file__).resolve().parent.parent
LAUNCHD = ROOT / "contrib" / "launchd"
DAEMON = LAUNCHD / "org.mqd.mqd.plist"
AGENT = LAUNCHD / "org.mqd.mqd.user.plist"

#: launchd.plist(5): each key these files may use, and the type launchd reads it as.
KEY_TYPES: dict[str, type | tuple[type, ...]] = {
    "Label": str,
    "ProgramArguments": list,
    "UserName": str,
    "GroupName": str,
    "Umask": (int, str),
    "WorkingDirectory": str,
    "RunAtLoad": bool,
    "KeepAlive": (bool, dict),
    "ThrottleInterval": int,
    "ExitTimeOut": int,
    "ProcessType": str,
    "SoftResourceLimits": dict,
    "HardResourceLimits": dict,
    "StandardOutPath": str,
    "StandardErrorPath": str,
    "EnvironmentVariables": dict,
}
PROCESS_TYPES = {"Background", "Standard", "Adaptive", "Interactive"}


def load(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        plist = plistlib.load(fh)
    assert isinstance(plist, dict)
    return plist


@pytest.mark.parametrize("path", [DAEMON, AGENT], ids=lambda p: p.name)
def test_keys_and_types_are_what_launchd_expects(path: Path) -> None:
    plist = load(path)
    unknown = sorted(set(plist) - set(KEY_TYPES))
    assert not unknown, f"keys launchd.plist(5) does not document: {unknown}"
    wrong = {key: type(value).__name__ for key, value in plist.items()}
    wrong = {k: t for k, t in wrong.items() if not isinstance(plist[k], KEY_TYPES[k])}
    # bool is an int in Python, but a plist <true/> is not an <integer>.
    wrong |= {k: "bool" for k, v in plist.items() if isinstance(v, bool) and KEY_TYPES[k] is int}
    assert not wrong, wrong
    assert plist["Label"] == path.name.removesuffix(".plist")
    assert all(isinstance(arg, str) for arg in plist["ProgramArguments"])
    assert plist["ProcessType"] in PROCESS_TYPES
    for key in ("SoftResourceLimits", "HardResourceLimits"):
        assert all(type(v) is int for v in plist.get(key, {}).values())
    for key in ("StandardOutPath", "StandardErrorPath", "WorkingDirectory"):
        if key in plist:
            assert plist[key].startswith("/"), f"{key} must be absolute: launchd does not expand ~"


@pytest.mark.parametrize("path", [DAEMON, AGENT], ids=lambda p: p.name)
def test_runs_mqd_and_stops_it_gracefully(path: Path) -> None:
    plist = load(path)
    args = plist["ProgramArguments"]
    assert args[0].startswith("/") and args[0].endswith("/bin/mqd")
    assert args[-1] == "run"
    assert args[args.index("--config") + 1].endswith("/mqd.toml")
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] is True
    # launchd sends SIGTERM, then SIGKILL after ExitTimeOut: mqd needs its shutdown_timeout.
    assert plist["ExitTimeOut"] > QueueConfig.shutdown_timeout


def test_the_system_daemon_matches_the_linux_layout() -> None:
    plist = load(DAEMON)
    assert plist["UserName"] == "mqd"
    assert plist["GroupName"] == "mqd"
    assert plist["ProgramArguments"] == ["/opt/mqd/bin/mqd", "--config", "/etc/mqd/mqd.toml", "run"]
    umask = plist["Umask"]
    assert (int(umask, 8) if isinstance(umask, str) else umask) == 0o007
    assert plist["StandardErrorPath"].startswith("/Library/Logs/mqd/")


def test_the_user_agent_has_only_placeholders_to_fill_in() -> None:
    plist = load(AGENT)
    assert "UserName" not in plist  # an agent runs as the logged-in user
    paths = [*plist["ProgramArguments"], plist["StandardErrorPath"], plist["StandardOutPath"]]
    assert all("/Users/USERNAME/" in p for p in paths if p.startswith("/"))


@pytest.mark.parametrize("path", [DAEMON, AGENT], ids=lambda p: p.name)
def test_plutil_lint(path: Path) -> None:
    plutil = shutil.which("plutil")
    if plutil is None:
        pytest.skip("plutil is macOS's")
    result = subprocess.run([plutil, "-lint", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
