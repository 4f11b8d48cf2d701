"""A child process that holds a queue directory's lock, for the lock tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

_SCRIPT = """
import asyncio, sys, time
from pathlib import Path
from mqd.queue.file.store import FileStore

store = FileStore(Path(sys.argv[1]), rebuild=lambda unread: None)  # the lock lives with it
asyncio.run(store.open())
print("locked", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def hold_queue_lock(queue_dir: Path, timeout: float = 30.0) -> Iterator[subprocess.Popen[str]]:
    """Start ``python -c`` that opens a FileStore on ``queue_dir`` and sleeps; kill it after.

    Yields once the child has said it holds the lock (AssertionError after ``timeout``).
    """
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    child = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(queue_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(child.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not line or line[0].strip() != "locked":
            child.kill()
            _, err = child.communicate(timeout=10)
            raise AssertionError(f"the lock-holding child did not start: {err}")
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)
