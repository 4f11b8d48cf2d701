"""Run mqd, and SIGKILL it the n-th time it reaches one step where state changes.

    python tests/crashpoint.py <point> <n> -- <mqd arguments>

The step is found by wrapping one function in-process before mqd starts, so the product carries
no test hooks. SIGKILL (not an exception) is what a power cut or the OOM killer does: no
``finally``, no flush, no cleanup.
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from mqd.intake.spool import Spool
from mqd.queue.entry import DSN_SOURCE
from mqd.queue.file.disk import Disk
from mqd.relays.smtp.relay import SMTPRelay


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _is_dsn(args: tuple[Any, ...]) -> bool:
    items = args[1] if len(args) > 1 else []
    return any(entry.source == DSN_SOURCE for entry, _ in items)


#: point -> (owner, function name, when: "before" | "after", which calls count)
POINTS: dict[str, tuple[type, str, str, Callable[[tuple[Any, ...]], bool]]] = {
    # The file was renamed out of the spool into the claim area; not in the queue yet.
    "claim": (Spool, "claim", "after", lambda args: True),
    # A batch is in the queue (renamed in, its directory fsynced; no state file yet): accepted.
    "accepted": (Disk, "_sync_dirs", "after", lambda args: True),
    # The server said 250; mqd has not recorded it.
    "relay-accepted": (SMTPRelay, "deliver", "after", lambda args: True),
    # Delivered and recorded as done, about to unlink.
    "before-removal": (Disk, "_remove", "before", lambda args: True),
    # The failures are saved; the DSN is not queued yet.
    "bounce-before-dsn": (Disk, "write_bodies", "before", _is_dsn),
    # The DSN is durable; the bounced entry has not noted it.
    "bounce-after-dsn": (Disk, "write_bodies", "after", _is_dsn),
    # Moving the bounced message to failed/.
    "fail-move": (Disk, "_fail", "before", lambda args: True),
}


def install(point: str, nth: int) -> None:
    owner, name, when, counts = POINTS[point]
    original = getattr(owner, name)
    hits = 0

    def reached(args: tuple[Any, ...]) -> bool:
        nonlocal hits
        if counts(args):
            hits += 1
        return hits == nth

    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            hit = reached(args)
            if hit and when == "before":
                _die()
            result = await original(*args, **kwargs)
            if hit:
                _die()
            return result

    else:

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            hit = reached(args)
            if hit and when == "before":
                _die()
            result = original(*args, **kwargs)
            if hit:
                _die()
            return result

    setattr(owner, name, wrapper)


if __name__ == "__main__":
    point, nth, separator, *mqd_args = sys.argv[1:]
    assert separator == "--", __doc__
    install(point, int(nth))
    from mqd.__main__ import main

    sys.argv = ["mqd", *mqd_args]
    sys.exit(main())
