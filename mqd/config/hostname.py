"""The machine's fully qualified name, the default of ``queue.hostname``.

``socket.getfqdn()`` asks the reverse lookup, which answers "localhost" on a machine whose
/etc/hosts maps its name to 127.0.0.1 (most containers and many VMs). Like Postfix's
``myhostname`` this takes the kernel's host name and, when it has no dot, the canonical name the
resolver gives it, keeping the short name when that is no better.
"""

from __future__ import annotations

import functools
import socket

__all__ = ["local_hostname"]


@functools.cache
def local_hostname() -> str:
    """This machine's fully qualified host name, or its short name when none is known."""
    name = socket.gethostname()
    if "." in name:
        return name
    try:
        infos = socket.getaddrinfo(name, None, flags=socket.AI_CANONNAME)
    except OSError:
        return name
    for info in infos:
        canonical = info[3]
        if "." in canonical and not canonical.startswith("localhost"):
            return canonical
    return name
