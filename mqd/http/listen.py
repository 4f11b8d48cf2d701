"""One clear error for a server that cannot listen where its config table says (``[metrics]``,
``[http]``): which key to change, and to what."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from mqd.errors import ConfigError

__all__ = ["listen_error"]


def listen_error(
    table: str,
    what: str,
    host: str,
    port: int,
    exc: OSError,
    *,
    source: Path | None,
    default_port: int,
    others: str,
) -> ConfigError:
    """``cannot serve <what> on host:port: ...`` naming ``[table] host`` or ``port``.

    ``others`` says who else may hold the port ("another mqd or another exporter")."""
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(
            f"cannot serve {what} on {where}: {host!r} is not an address of this machine "
            f"({exc.strerror or exc}); set [{table}] host to 127.0.0.1 (the default), to one "
            "of this machine's addresses, or to 0.0.0.0 for all of them",
            path=source,
            key=f"{table}.host",
        )
    if exc.errno == errno.EADDRINUSE:
        why = (
            f"the port is already in use ({others} listens there); set [{table}] port to a "
            "free port, or stop the program that holds it"
        )
    elif exc.errno == errno.EACCES:
        why = (
            f"permission denied (ports below 1024 need privileges); set [{table}] port to a "
            f"port above 1023, such as the default {default_port}"
        )
    else:
        why = f"{exc.strerror or exc}; set [{table}] port to a free port above 1023"
    return ConfigError(f"cannot serve {what} on {where}: {why}", path=source, key=f"{table}.port")
