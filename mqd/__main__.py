"""Entry point of the ``mqd`` command (and of ``python -m mqd``).

``mqd sendmail ...`` (or mqd invoked through a symlink named ``sendmail``) goes straight to the
light sendmail module, without loading click or the daemon.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know it)
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    program = os.path.basename(sys.argv[0]) if sys.argv else "mqd"
    sendmail_args = args if program in ("sendmail", "mqd-sendmail") else _sendmail_args(args)
    if sendmail_args is not None:
        from mqd.producer.sendmail import main as sendmail_main

        sys.exit(sendmail_main(sendmail_args))
    import click

    from mqd.cli.main import cli
    from mqd.exitcodes import ExitCode

    try:
        # Not standalone: click would exit 2 on usage errors; mqd uses sysexits' 64.
        result = cli.main(args=args, prog_name="mqd", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # also bad parameters and missing files: sysexits' 64
        exc.show()
        sys.exit(ExitCode.USAGE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        print("Aborted.", file=sys.stderr)
        sys.exit(130)
    except Exception:
        import traceback

        traceback.print_exc()
        print(
            "mqd: internal error (a bug): please report it with the traceback above",
            file=sys.stderr,
        )
        sys.exit(ExitCode.SOFTWARE)
    sys.exit(result if isinstance(result, int) else ExitCode.OK)  # ctx.exit(n) returns n


def _sendmail_args(args: list[str]) -> list[str] | None:
    """The arguments for the sendmail fast path when the command is ``mqd [--config FILE]
    sendmail ...`` (``--config`` becomes sendmail's own ``-C``); None for any other command."""
    config: list[str] = []
    rest = args
    if rest[:1] in (["--config"], ["-c"]) and len(rest) > 1:
        config, rest = ["-C", rest[1]], rest[2:]
    elif rest[:1] and rest[0].startswith("--config="):
        config, rest = ["-C", rest[0].partition("=")[2]], rest[1:]
    if rest[:1] != ["sendmail"]:
        return None
    return [*config, *rest[1:]]


if __name__ == "__main__":
    main()
