"""contrib/systemd: the unit passes systemd's own checks, the sysusers and tmpfiles files create
what the unit expects, and mqd works under the unit's sandbox where it can be reproduced here.

``systemd-analyze``, ``systemd-sysusers`` and ``systemd-tmpfiles`` are run for real. Without them
the tests skip, except under ``CI=true``: CI machines have systemd, so there a missing tool fails.
Two sandbox settings are reproduced with the kernel directly: MemoryDenyWriteExecute= and
NoNewPrivileges= (prctl), and the separate bind mounts ReadWritePaths= makes (unshare).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from corehelpers import make_message
from smtpserver import SMTPPeer

from mqd.config.schema import Config, QueueConfig
from mqd.producer.inject import inject

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib" / "systemd"
UNIT = CONTRIB / "mqd.service"
SYSUSERS = CONTRIB / "mqd.sysusers"
TMPFILES = CONTRIB / "mqd.tmpfiles"
#: How long mqd gives deliveries in flight by default (queue.shutdown_timeout).
SHUTDOWN_TIMEOUT = QueueConfig.shutdown_timeout
#: Where the unit expects mqd; the tests point it at this venv's instead.
INSTALLED_MQD = "/opt/mqd/bin/mqd"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing: CI machines have systemd, install it")
        pytest.skip(f"{name} is not installed")
    return path


def venv_mqd() -> str:
    script = Path(sys.executable).parent / "mqd"
    assert script.is_file(), f"mqd is not installed next to {sys.executable}"
    return str(script)


def unit_settings(text: str) -> dict[str, list[str]]:
    """``"Section.Key"`` -> every value assigned, in order (an empty assignment included)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def seconds(timespan: str) -> float:
    """A systemd time span such as "45s", "5min", "1min 30s" in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", timespan)
    assert parts, timespan
    return sum(float(number) * units[unit or "s"] for number, unit in parts)


def installed_unit(tmp_path: Path) -> Path:
    """The unit copied to tmp_path with ExecStart/ExecReload pointing at this venv's mqd."""
    target = tmp_path / "mqd.service"
    target.write_text(UNIT.read_text().replace(INSTALLED_MQD, venv_mqd()))
    return target


# -- the unit -----------------------------------------------------------------------------------


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    unit = installed_unit(tmp_path)
    result = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Unknown keys, unparsable values and missing executables are warnings with exit code 0.
    about_unit = [line for line in output.splitlines() if "mqd.service" in line]
    assert not about_unit, "\n".join(about_unit)


def test_unit_hardening_exposure_is_low(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    unit = installed_unit(tmp_path)
    result = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "--offline" in result.stderr and result.returncode != 0:  # pragma: no cover - systemd<250
        pytest.skip("systemd-analyze is older than 250 (no 'security --offline')")
    match = re.search(r"Overall exposure level for mqd\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    # 0 is a fully locked-down service, 10 an unprotected one; below 2 systemd says "OK".
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_settings_match_what_mqd_does() -> None:
    settings = unit_settings(UNIT.read_text())

    def one(key: str) -> str:
        values = settings.get(key, [])
        assert len(values) == 1, f"{key}: {values}"
        return values[0]

    assert one("Service.Type") == "notify"
    start = shlex.split(one("Service.ExecStart"))
    assert start[0] == INSTALLED_MQD
    assert start[start.index("--config") + 1] == "/etc/mqd/mqd.toml"
    assert start[-1] == "run"
    [reload_] = [shlex.split(v) for v in settings["Service.ExecReload"]]
    # Synchronous through the control socket: a refused config fails 'systemctl reload'.
    assert reload_[0] == INSTALLED_MQD and reload_[-1] == "reload"
    assert seconds(one("Service.TimeoutStopSec")) > SHUTDOWN_TIMEOUT
    assert seconds(one("Service.WatchdogSec")) > 0
    assert one("Service.User") == "mqd"
    assert one("Service.ProtectSystem") == "strict"
    assert one("Service.CapabilityBoundingSet") == ""
    assert one("Service.UMask") == "0007"  # a spool mqd creates must stay group-writable
    assert one("Service.MemoryDenyWriteExecute") == "yes"
    assert set(one("Service.RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    writable = set(one("Service.ReadWritePaths").split())
    assert writable == {"/var/lib/mqd", "/var/spool/mqd"}
    assert {"64", "78"} <= set(one("Service.RestartPreventExitStatus").split())


# -- sysusers and tmpfiles ----------------------------------------------------------------------


def config_lines(path: Path) -> list[list[str]]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def tmpfiles_dirs() -> dict[str, tuple[str, str, str]]:
    """Path -> (mode, user, group) of each 'd' line."""
    found = {}
    for fields in config_lines(TMPFILES):
        assert fields[0] == "d", fields
        assert len(fields) == 6, fields
        found[fields[1]] = (fields[2], fields[3], fields[4])
    return found


def test_sysusers_lines() -> None:
    lines = config_lines(SYSUSERS)
    assert all(fields[0] in {"u", "g", "m"} for fields in lines), lines
    users = {f[1]: f for f in lines if f[0] == "u"}
    groups = {f[1] for f in lines if f[0] in {"u", "g"}}  # 'u' makes the group of its name too
    members = {(f[1], f[2]) for f in lines if f[0] == "m"}
    assert set(users) == {"mqd"}
    assert users["mqd"][4] == "/var/lib/mqd"
    assert groups == {"mqd", "mqd-submit"}
    assert ("mqd", "mqd-submit") in members  # mqd reads the producers' files through it


def test_tmpfiles_lines_agree_with_the_unit_and_sysusers() -> None:
    dirs = tmpfiles_dirs()
    assert dirs == {
        "/var/spool/mqd": ("2770", "mqd", "mqd-submit"),
        "/var/lib/mqd": ("0700", "mqd", "mqd"),
        "/etc/mqd": ("0755", "root", "root"),
    }
    settings = unit_settings(UNIT.read_text())
    assert set(settings["Service.ReadWritePaths"][0].split()) == set(dirs) - {"/etc/mqd"}
    assert settings["Service.User"] == [dirs["/var/lib/mqd"][1]]
    assert settings["Service.SupplementaryGroups"] == [dirs["/var/spool/mqd"][2]]
    assert settings["Service.StateDirectoryMode"] == [dirs["/var/lib/mqd"][0]]


def test_sysusers_and_tmpfiles_create_the_layout(tmp_path: Path) -> None:
    sysusers = require_tool("systemd-sysusers")
    tmpfiles = require_tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles needs root to give the directories their owners")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run([sysusers, f"--root={root}", str(SYSUSERS)], check=True, timeout=60)
    subprocess.run([tmpfiles, f"--root={root}", "--create", str(TMPFILES)], check=True, timeout=60)

    passwd = {
        f[0]: f
        for f in (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())
    }
    group = {
        f[0]: f for f in (line.split(":") for line in (root / "etc/group").read_text().splitlines())
    }
    assert passwd["mqd"][5] == "/var/lib/mqd"
    assert passwd["mqd"][6].endswith("nologin")
    assert "mqd" in group["mqd-submit"][3].split(",")
    ids = {"root": 0, **{name: int(f[2]) for name, f in passwd.items()}}
    gids = {"root": 0, **{name: int(f[2]) for name, f in group.items()}}
    for path, (mode, user, grp) in tmpfiles_dirs().items():
        st = (root / path.lstrip("/")).stat()
        assert oct(st.st_mode & 0o7777) == oct(int(mode, 8)), path
        assert (st.st_uid, st.st_gid) == (ids[user], gids[grp]), path


# -- mqd under the unit's sandbox ---------------------------------------------------------------

#: Runs mqd the way the unit's NoNewPrivileges=, MemoryDenyWriteExecute= and UMask= would.
HARDENED = textwrap.dedent(
    """
    import ctypes, mmap, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        sys.exit(90)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3)
        sys.exit(91)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError:
        pass
    else:
        sys.exit(92)  # not enforced: the test would prove nothing
    os.umask(0o007)
    os.execv(sys.executable, [sys.executable, "-m", "mqd", *sys.argv[1:]])
    """
)


def mdwe_supported() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ctypes; ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0 or exit(1)",
        ],
        timeout=30,
    )
    return probe.returncode == 0


@pytest.mark.slow
def test_mqd_runs_with_memory_deny_write_execute(
    tmp_path: Path, spool: Path, smtp_server: SMTPPeer, plain_config: Config
) -> None:
    """The whole daemon (inotify through ctypes, asyncio, SMTP) with no writable+executable
    memory, as MemoryDenyWriteExecute=yes enforces."""
    if not mdwe_supported():
        pytest.skip("the kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert plain_config.source is not None
    log = tmp_path / "mqd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", HARDENED, "--config", str(plain_config.source), "run"],
            stdout=out,
            stderr=out,
        )
    try:
        inject(spool, make_message(subject="hardened"))
        smtp_server.wait_for(1, timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert b"Subject: hardened" in smtp_server.messages[0].data


@pytest.mark.slow
def test_claims_work_across_the_bind_mounts_of_read_write_paths(
    tmp_path: Path,
    spool: Path,
    queue_dir: Path,
    smtp_server: SMTPPeer,
    plain_config: Config,
) -> None:
    """ReadWritePaths=/var/lib/mqd /var/spool/mqd makes each its own bind mount, so a rename from
    the spool into the queue fails with EXDEV even on one filesystem: mqd must copy instead."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to make bind mounts")
    assert plain_config.source is not None
    queue_dir.mkdir()
    inject(spool, make_message(subject="across mounts"))
    script = 'mount --bind "$1" "$1" && mount --bind "$2" "$2" && shift 2 && exec "$@"'
    mqd = [sys.executable, "-m", "mqd", "--config", str(plain_config.source), "run", "--once"]
    dirs = [str(queue_dir), str(spool)]
    result = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh", *dirs, *mqd],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0 and "mount" in result.stderr and "mqd" not in result.stderr:
        pytest.skip(f"cannot make bind mounts here: {result.stderr.strip()}")  # pragma: no cover
    assert result.returncode == 0, result.stderr
    assert "claiming through" in result.stderr  # the rename really failed with EXDEV
    assert len(smtp_server.messages) == 1
    assert b"Subject: across mounts" in smtp_server.messages[0].data
    assert not list(spool.glob("*.eml"))
    assert not list((queue_dir / "state").glob("*.json"))
