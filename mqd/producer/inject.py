"""The producer side of the spool contract, used by ``mqd send`` and ``mqd sendmail``.

A message is written to a dotfile temp name in the spool, fsynced, renamed to ``<name>.eml``
(the daemon ignores dotfiles and takes only ``.eml``), and the directory is fsynced: when
``inject`` returns, the message survives a crash. Applications in other languages follow the
same three steps (see docs/producers.md).

``mqd sendmail`` runs once per message, so this module imports only ``os`` and ``time`` at run
time (no pathlib, no secrets: the name's random part comes from ``os.urandom``).
"""

import os
import time

from mqd.fsutil import fsync_dirs, make_dirs, write_durably

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know it)
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

    from mqd.fsutil import StrPath

__all__ = ["envelope_lines", "inject", "inject_many", "write_to_spool"]


def envelope_lines(sender: str, recipients: "Sequence[str]") -> bytes:
    """Leading ``X-Sender`` / ``X-Receiver`` lines that state the envelope explicitly."""
    lines = [f"X-Sender: <{sender}>"] + [f"X-Receiver: <{rcpt}>" for rcpt in recipients]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def inject(spool: "Path", message: bytes) -> "Path":
    """Write one message into ``spool`` durably; returns the ``.eml`` path."""
    return inject_many(spool, [message])[0]


def inject_many(spool: "Path", messages: "Iterable[bytes]") -> "list[Path]":
    """Write messages into ``spool``; the directory is fsynced once for all of them."""
    from pathlib import Path

    return [Path(name) for name in write_to_spool(spool, messages)]


def write_to_spool(spool: "StrPath", messages: "Iterable[bytes]") -> list[str]:
    """``inject_many`` with plain string paths: what ``mqd sendmail`` uses."""
    spool = os.fspath(spool)
    written: list[str] = []
    make_dirs(spool, mode=0o770)  # the daemon creates it too; the first producer may come first
    try:
        for message in messages:
            name = f"{time.time_ns()}.{os.getpid()}.{os.urandom(4).hex()}.eml"
            tmp = os.path.join(spool, f".{name}.tmp")
            try:
                write_durably(tmp, message, mode=0o640)
                os.rename(tmp, os.path.join(spool, name))
            except BaseException:
                try:  # noqa: SIM105 - contextlib would cost mqd sendmail an import
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            written.append(os.path.join(spool, name))
    finally:
        if written:
            fsync_dirs([spool])
    return written
