"""``queue.workers``: several daemon processes sharing the claim, one ``mqd run``.

One Python process is bound by its GIL to about one core. With ``queue.workers = N`` the
process ``mqd run`` started (worker 1) starts N - 1 more, ``python -m mqd run --worker <n>``
with the same config file. Each is a whole daemon: its own queue directory
(``<queue.dir>/workers/<n>``, locked like any queue), relay connections and control socket.
They share the spools (each file is claimed by exactly one of them: a claim is one atomic
rename), the failed folder and the event store (SQLite in WAL mode takes writers from several
processes). The relays' quotas are divided between them (``QuotaConfig.divided``); [notify]
runs in worker 1 only, [http] in each (``mqd.daemon.firstworker``: keyed hand-overs on the file
store in worker 1), [metrics] in each on a port of its own. ``mqd status`` and ``mqd queue
...`` ask every worker (``mqd.admin.fanout``).

Worker 1 watches the others: one that exits while nothing asked it to is started again after
1 s, doubling to a minute. Its stop requests reach them over a pipe on their standard input
(``STOP``, then ``HURRY`` for a second request), and a worker also stops when that pipe ends,
so that none outlives a worker 1 that was killed. SIGHUP (reload) and SIGUSR1 (flush) sent to
worker 1 are passed on as signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mqd.queue.file.layout import retired_queues

if TYPE_CHECKING:
    from mqd.config.schema import Config, QueueConfig

__all__ = ["WorkerPool", "warn_of_retired_workers", "watch_parent"]

log = logging.getLogger("mqd.workers")

#: A worker that exited unexpectedly is started again after this long, doubling up to MAX.
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0
#: A worker that ran this long before it exited starts again after RESTART_DELAY, not more.
STEADY_AFTER = 60.0
#: The environment that belongs to worker 1 alone: systemd's notify and watchdog, socket
#: activation. A worker that sent READY=1 would confuse the service manager.
PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
#: What worker 1 writes on a worker's pipe: stop gracefully; cancel the deliveries in flight.
STOP = b"s"
HURRY = b"h"


class WorkerPool:
    """Workers 2..N of ``config``, started, restarted and stopped by worker 1."""

    def __init__(self, config: Config, *, once: bool = False, cli_args: Sequence[str] = ()) -> None:
        if config.source is None:
            raise ValueError("queue.workers needs a config file")  # the defaults have 1
        self.config = config
        self.once = once
        #: Global options for the workers' command line (the log level and format).
        self.cli_args = tuple(cli_args)
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._stop_requests = 0
        #: Exit codes of workers that ended on their own with --once (0: all delivered).
        self.failures: dict[int, int] = {}

    def command(self, worker: int) -> list[str]:
        assert self.config.source is not None
        args = [sys.executable, "-m", "mqd", "--config", str(self.config.source)]
        args += [*self.cli_args, "run", "--worker", str(worker)]
        if self.once:
            args += ["--once", "--no-progress"]
        return args

    def start(self) -> None:
        for worker in range(2, self.config.queue.workers + 1):
            task = asyncio.get_running_loop().create_task(
                self._keep(worker), name=f"mqd-worker-{worker}"
            )
            self._tasks.append(task)

    async def _keep(self, worker: int) -> None:
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
        delay = RESTART_DELAY
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.command(worker), stdin=asyncio.subprocess.PIPE, env=env
                )
            except OSError as exc:
                log.error("cannot start worker %d (%s): %s", worker, sys.executable, exc)
                code: int | None = None
            else:
                self._procs[worker] = proc
                log.info("worker %d started (pid %d)", worker, proc.pid)
                if self._stopping.is_set():  # the stop came while it was being started
                    self._ask_to_stop(proc)
                code = await proc.wait()
                del self._procs[worker]
            if self._stopping.is_set():
                return
            if self.once:
                if code != 0:  # None: it could not be started
                    self.failures[worker] = -1 if code is None else code
                return
            if time.monotonic() - started > STEADY_AFTER:
                delay = RESTART_DELAY
            log.error(
                "worker %d exited (code %s) though nothing stopped it: starting it again in %g s",
                worker,
                code,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)

    def stop(self) -> None:
        """Ask every worker to stop (``STOP`` on its pipe); asked again, ``HURRY``: a second
        stop request cancels their deliveries in flight, as it does in worker 1."""
        self._stopping.set()
        self._stop_requests += 1
        for proc in list(self._procs.values()):
            self._ask_to_stop(proc)

    def _ask_to_stop(self, proc: asyncio.subprocess.Process) -> None:
        # Over the pipe, not by a signal: a service manager may send the workers its own
        # SIGTERM at the same moment, and two signals would read as a second request.
        if proc.stdin is None or proc.stdin.is_closing():
            return
        with contextlib.suppress(OSError):
            proc.stdin.write(STOP if self._stop_requests <= 1 else HURRY)

    def send_signal(self, sig: signal.Signals) -> None:
        for proc in list(self._procs.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def flush(self) -> None:
        """Pass a flush (SIGUSR1) on to every worker (not on Windows, which has no signals)."""
        if sys.platform != "win32":
            self.send_signal(signal.SIGUSR1)

    def reload(self) -> None:
        """Pass a reload (SIGHUP) on to every worker (not on Windows)."""
        if sys.platform != "win32":
            self.send_signal(signal.SIGHUP)

    async def wait(self, grace: float) -> None:
        """Until every worker has ended (--once: has done its work); after ``grace`` seconds
        of a stop, kill those left."""
        if not self._tasks:
            return
        if self.once and not self._stopping.is_set():
            await asyncio.wait(self._tasks)  # each ends when its worker has done its work
        if not self._stopping.is_set():
            self.stop()
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for worker, proc in list(self._procs.items()):
            log.error(
                "worker %d (pid %d) did not stop in %g s: killing it", worker, proc.pid, grace
            )
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if pending:
            await asyncio.wait(pending)

    @property
    def pids(self) -> dict[int, int]:
        return {worker: proc.pid for worker, proc in self._procs.items()}


def watch_parent(on_stop: Callable[[], None], on_hurry: Callable[[], None]) -> None:
    """Follow worker 1's pipe on standard input, in the running loop: ``on_stop`` at ``STOP``
    or at its end (worker 1 stopped, or died), ``on_hurry`` at ``HURRY`` (a second stop request
    reached worker 1). A thread, since pipes cannot be watched by every event loop."""
    loop = asyncio.get_running_loop()
    try:
        fd = sys.stdin.fileno()
        # Only a pipe: a worker started by hand from a terminal is stopped with Ctrl-C.
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
    except (AttributeError, OSError, ValueError):
        return

    def call(callback: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed already
            loop.call_soon_threadsafe(callback)

    def follow() -> None:
        # os.read, not sys.stdin's buffered reader: a daemon thread blocked inside that one
        # holds its lock, and the interpreter aborts at exit when it cannot take it.
        with contextlib.suppress(OSError):
            while data := os.read(fd, 64):
                for byte in data:
                    call(on_hurry if byte == HURRY[0] else on_stop)
        call(on_stop)

    threading.Thread(target=follow, name="mqd-parent-watch", daemon=True).start()


def warn_of_retired_workers(queue: QueueConfig) -> None:
    """Log a warning for each worker beyond ``queue.workers`` whose queue still holds messages:
    nothing delivers them until ``queue.workers`` is raised again."""
    for worker, where, count in retired_queues(queue.dir, queue.workers):
        log.warning(
            "%s holds %d message(s) of worker %d, which queue.workers = %d no longer starts: "
            "set queue.workers to %d or more until they are delivered",
            where,
            count,
            worker,
            queue.workers,
            worker,
        )
