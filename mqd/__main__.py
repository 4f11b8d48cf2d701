"""Entry point of the ``mqd`` command (and of ``python -m mqd``).

``mqd sendmail ...`` (or mqd invoked through a symlink named ``sendmail``) goes straight to the
light sendmail module, without loading click or the daemon.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    program = os.path.basename(sys.argv[0]) if sys.argv else "mqd"
    if program in ("sendmail", "mqd-sendmail") or (args and args[0] == "sendmail"):
        from .sendmail import main as sendmail_main

        sys.exit(sendmail_main(args[1:] if args and args[0] == "sendmail" else args))
    from .cli import cli

    cli.main(args=args, prog_name="mqd")


if __name__ == "__main__":
    main()
