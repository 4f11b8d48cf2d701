"""``mqd install-sendmail``: a sendmail launcher that starts Python without ``site.py``.

``mqd sendmail`` runs once per message, and before its first line Python's ``site.py`` has spent
about a third of a bare interpreter's start: reading every ``.pth`` file in site-packages
(setuptools' imports a module of its own), looking for ``sitecustomize`` and ``usercustomize``
along the whole import path. The sendmail path needs none of that, only the directories it adds
to ``sys.path``; pip cannot write a script that starts with ``python -S`` (it drops what follows
``#!python``), so this writes one, with those directories as they are when it runs.

It also holds what the sendmail path needs from the config (``mqd.producer.sendmail.Settings``:
the spool, the qualify domain, the spool's sender policy), resolved by the full loader when it is
written, so that the path reads no TOML. When that config file changes, the launcher reads it in
full again (and says so on stderr) until it is written again.

Should mqd move after that (a new venv elsewhere), the launcher falls back to ``site.py`` and
works as ``mqd-sendmail`` does, only slower, until it is written again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mqd.errors import MQDError
from mqd.fsutil import atomic_write
from mqd.version import __version__

if TYPE_CHECKING:
    from mqd.config.schema import Config

__all__ = ["LauncherError", "render_launcher", "site_paths", "write_launcher"]


class LauncherError(MQDError):
    """The launcher cannot be written (the message names the file and what to do)."""


def site_paths() -> list[str]:
    """The import path entries ``site.py`` gave this interpreter (site-packages, the paths of
    ``.pth`` files such as an editable install's), in order, with mqd's own directory among them."""
    bare = subprocess.run(
        [sys.executable, "-S", "-c", "import json, sys; print(json.dumps(sys.path))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    without_site = set(json.loads(bare.stdout))
    # sys.path[0] is this command's own directory (or '' for the current one): not the launcher's.
    paths = [p for p in sys.path[1:] if p and p not in without_site]
    import mqd

    home = os.path.dirname(os.path.dirname(os.path.abspath(mqd.__file__)))
    if home not in paths:  # found through PYTHONPATH, say, which cron would not set
        paths.insert(0, home)
    return list(dict.fromkeys(paths))


def render_launcher(python: str, paths: list[str], baked: dict[str, Any] | None = None) -> str:
    """The launcher's text: ``python -S``, ``paths`` after the standard library's, then
    ``mqd.producer.sendmail``'s ``main`` with ``baked`` (``Settings.to_data``, a literal)."""
    if not os.path.isabs(python) or any(c.isspace() for c in python):
        # A #! line takes one path without spaces, and one argument (here -S).
        raise LauncherError(
            f"cannot write a launcher for the interpreter {python!r}: a #! line needs an "
            "absolute path without spaces; use mqd-sendmail (installed beside mqd) instead"
        )
    source = (baked or {}).get("config") or "the embedded defaults"
    return f"""#!{python} -S
# mqd sendmail (mqd {__version__}), written by "mqd install-sendmail": the same command as
# mqd-sendmail, started without site.py, whose .pth files and sitecustomize lookups cost about a
# third of a bare start. The import path site.py gave this installation is set below instead;
# after moving or reinstalling mqd elsewhere, run "mqd install-sendmail --force" again (until
# then this falls back to site.py, and works, only slower).
# SETTINGS: what mqd sendmail needs from {source} (the spool, qualify_domain, the spool's
# sender policy), as the full loader read it; when that file changes this reads it in full
# (slower, saying so) until written again. A -C naming another config wins.
import sys

sys.path.extend({paths!r})
SETTINGS = {baked!r}
try:
    from mqd.producer.sendmail import main
except ImportError:  # mqd has moved since: look for it as python3 would
    import site

    site.main()
    from mqd.producer.sendmail import main
sys.exit(main(sys.argv[1:], SETTINGS))
"""


def write_launcher(target: Path, config: Config, *, force: bool = False) -> None:
    """Write the launcher for ``config`` to ``target`` (mode 0755) atomically; refuse to replace
    an existing file (often a real sendmail) unless ``force``."""
    from mqd.producer.settings import Settings

    if os.name != "posix":
        raise LauncherError(
            "a launcher needs a #! line, which Windows does not run; use mqd-sendmail instead"
        )
    if target.is_dir():
        raise LauncherError(f"{target} is a directory: give the launcher's file name")
    if (target.exists() or target.is_symlink()) and not force:
        what = f"a symlink to {os.readlink(target)}" if target.is_symlink() else "a file"
        raise LauncherError(
            f"{target} exists ({what}); use --force to replace it with mqd's launcher"
        )
    if not target.parent.is_dir():
        raise LauncherError(f"cannot write {target}: the directory {target.parent} does not exist")
    baked = Settings.from_config(config).to_data()
    baked["launcher"] = os.path.abspath(target)  # named when the config has changed since
    text = render_launcher(sys.executable, site_paths(), baked)
    try:
        # Temporary file, fsync, rename (a symlink at target is replaced, not followed).
        atomic_write(target, text.encode("utf-8"), mode=0o755)
        os.chmod(target, 0o755)  # noqa: S103 - a command for everyone, whatever the umask
    except OSError as exc:
        raise LauncherError(f"cannot write {target}: {exc.strerror or exc}") from None
