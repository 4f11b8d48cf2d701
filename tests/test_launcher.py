"""``mqd install-sendmail``: a launcher that runs ``mqd sendmail`` without site.py, and still
finds mqd (through site.py) when the directories written into it are gone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from corehelpers import imports

from mqd.cli.main import cli
from mqd.config.load import load_config
from mqd.exitcodes import ExitCode
from mqd.producer.launcher import LauncherError, render_launcher, site_paths, write_launcher

pytestmark = pytest.mark.skipif(os.name != "posix", reason="a launcher is a #! script")

MESSAGE = b"From: App <app@example.com>\nTo: Bob <bob@example.net>\nSubject: hi\n\nhello\n"


@pytest.fixture
def config(producer_config: Path) -> Path:
    return producer_config


def run(launcher: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(launcher), *args], input=MESSAGE, capture_output=True, env=env, timeout=60, check=False
    )


def test_the_launcher_drops_the_message_into_the_spool_without_site(
    tmp_path: Path, config: Path, spool: Path, env: dict[str, str]
) -> None:
    launcher = tmp_path / "sendmail"
    write_launcher(launcher, load_config(config))
    assert launcher.read_text().startswith(f"#!{sys.executable} -S\n")
    assert os.stat(launcher).st_mode & 0o777 == 0o755
    modules = imports([str(launcher), "-C", str(config), "-t", "-i"], MESSAGE, env)
    assert "mqd.producer.sendmail" in modules
    assert "site" not in modules  # what the launcher is for
    assert "mqd.__main__" not in modules
    [written] = spool.glob("*.eml")
    assert written.read_bytes().startswith(b"X-Sender: <app@example.com>\r\n")


def test_it_exits_as_mqd_sendmail_does(tmp_path: Path, config: Path, env: dict[str, str]) -> None:
    launcher = tmp_path / "sendmail"
    write_launcher(launcher, load_config(config))
    bad = run(launcher, ["-C", str(config), "-bp"], env)
    assert bad.returncode == ExitCode.USAGE
    assert b"only -bm" in bad.stderr
    no_recipient = run(launcher, ["-C", str(config)], env)
    assert no_recipient.returncode == ExitCode.DATAERR


def test_the_config_it_was_written_for_is_the_default_and_a_later_c_wins(
    tmp_path: Path,
    config: Path,
    spool: Path,
    write_config: Callable[..., Path],
    env: dict[str, str],
) -> None:
    other_spool = tmp_path / "other-spool"
    other = write_config(
        config.read_text().replace(str(spool), str(other_spool)), name="other.toml"
    )
    launcher = tmp_path / "sendmail"
    write_launcher(launcher, load_config(config))
    # $MQD_CONFIG names another config: the launcher keeps to the one it was written for.
    assert run(launcher, ["-t"], {**env, "MQD_CONFIG": str(other)}).returncode == 0
    assert len(list(spool.glob("*.eml"))) == 1
    assert run(launcher, ["-C", str(other), "-t"], env).returncode == 0
    assert len(list(other_spool.glob("*.eml"))) == 1
    assert len(list(spool.glob("*.eml"))) == 1


def test_install_sendmail_writes_the_resolved_spool_in(
    tmp_path: Path, config: Path, spool: Path
) -> None:
    target = tmp_path / "sendmail"
    result = CliRunner().invoke(cli, ["--config", str(config), "install-sendmail", str(target)])
    assert result.exit_code == 0, result.output
    assert f"with the spool {spool} from {config}" in result.output
    text = target.read_text()
    assert f"'spool': '{spool}'" in text
    assert f"'config': '{config}'" in text


def test_install_sendmail_refuses_a_config_with_problems(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    bad = write_config('[[spool]]\npath = "s"\n[sendmail]\nqualify_domian = "x.org"\n')
    target = tmp_path / "sendmail"
    result = CliRunner().invoke(cli, ["--config", str(bad), "install-sendmail", str(target)])
    assert result.exit_code == ExitCode.CONFIG
    assert "qualify_domian" in result.output
    assert not target.exists()


def test_when_mqd_has_moved_it_falls_back_to_site(
    tmp_path: Path, config: Path, spool: Path, env: dict[str, str]
) -> None:
    launcher = tmp_path / "sendmail"
    launcher.write_text(render_launcher(sys.executable, [str(tmp_path / "gone")]))
    launcher.chmod(0o755)
    environment = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    modules = imports([str(launcher), "-C", str(config), "-t"], MESSAGE, environment)
    assert "site" in modules
    assert len(list(spool.glob("*.eml"))) == 1


def test_the_paths_written_in_are_those_site_adds_with_mqds_own() -> None:
    paths = site_paths()
    import mqd

    assert str(Path(mqd.__file__).resolve().parent.parent) in paths
    assert all(p not in paths for p in sys.path[1:] if p.endswith(("lib-dynload", ".zip")))


def test_an_existing_file_is_kept_without_force(tmp_path: Path) -> None:
    target = tmp_path / "sendmail"
    target.write_text("a real sendmail\n")
    result = CliRunner().invoke(cli, ["install-sendmail", str(target)])
    assert result.exit_code == ExitCode.CANTCREAT
    assert f"{target} exists (a file); use --force" in result.output
    assert target.read_text() == "a real sendmail\n"
    result = CliRunner().invoke(cli, ["install-sendmail", "--force", str(target)])
    assert result.exit_code == 0, result.output
    assert f"wrote {target}" in result.output
    assert "from mqd.producer.sendmail import main" in target.read_text()


def test_a_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "mqd-sendmail"
    real.write_text("#!/bin/sh\n")
    link = tmp_path / "sendmail"
    link.symlink_to(real)
    defaults = load_config(None)
    with pytest.raises(LauncherError, match=r"exists \(a symlink to .*mqd-sendmail\)"):
        write_launcher(link, defaults)
    write_launcher(link, defaults, force=True)
    assert not link.is_symlink()
    assert real.read_text() == "#!/bin/sh\n"
    assert list(tmp_path.glob(".*tmp")) == []


@pytest.mark.parametrize(
    ("target", "error"),
    [("missing/sendmail", "the directory .*missing does not exist"), (".", "is a directory")],
)
def test_a_target_that_cannot_be_written_is_named(tmp_path: Path, target: str, error: str) -> None:
    with pytest.raises(LauncherError, match=error):
        write_launcher(tmp_path / target, load_config(None))


@pytest.mark.parametrize("python", ["/opt/my python/bin/python3", "python3"])
def test_an_interpreter_a_shebang_cannot_name_is_refused(python: str) -> None:
    with pytest.raises(LauncherError, match="use mqd-sendmail"):
        render_launcher(python, [])
