r"""Run mqd as a Windows service, in process, with pywin32.

From an elevated prompt, with the Python of the venv that has mqd and pywin32::

    C:\mqd\Scripts\python.exe mqd_service.py --startup auto -c C:\ProgramData\mqd\mqd.toml install
    C:\mqd\Scripts\python.exe mqd_service.py start

``-c`` (the config file; default ``%ProgramData%\mqd\mqd.toml``) and ``-l`` (the log folder;
default ``%ProgramData%\mqd\logs``) are stored in the service's registry key. Also: ``stop``,
``restart``, ``remove``, ``update``, and ``debug`` (runs in this console; Ctrl-C stops it).
Install and operation: docs/deployment/windows.md.

Two halves. ``ServiceRunner`` is plain Python (tested on every platform): it runs one mqd daemon
on an asyncio loop in the calling thread, and ``request_stop()``, callable from any thread, hands
a graceful stop to that loop (what SIGTERM does for ``mqd run``). ``MQDService``, defined only on
Windows with pywin32 installed, is the Service Control Manager's side: the service thread calls
``ServiceRunner.run``, the stop and shutdown controls call ``request_stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from mqd.config.load import load_config, locate_config
from mqd.config.schema import QueueConfig
from mqd.daemon.root import Daemon
from mqd.errors import ConfigError
from mqd.logs import JSONFormatter
from mqd.plugins.host import PluginHost

__all__ = ["ServiceRunner", "default_config", "default_log_dir", "main", "setup_logging"]

SERVICE_NAME = "mqd"
DISPLAY_NAME = "mqd mail queue daemon"
DESCRIPTION = (
    "Delivers the messages applications drop into mqd's spool folders through the configured "
    "relays, with retries and bounces."
)
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: How long the SCM is told to wait for the queue to be recovered at start.
START_WAIT_HINT_MS = 5 * 60 * 1000
#: Added to queue.shutdown_timeout for the stop's wait hint: closing relays, saving state.
STOP_MARGIN = 15.0

log = logging.getLogger("mqd.service")


def service_home() -> Path:
    """``%ProgramData%\\mqd``: the folder of a service's config, queue, spool and logs."""
    return Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "mqd"


def default_config() -> Path:
    return service_home() / "mqd.toml"


def default_log_dir() -> Path:
    return service_home() / "logs"


# -- the portable half --------------------------------------------------------------------------


class ServiceRunner:
    """One mqd daemon on its own asyncio loop, stoppable from another thread.

    ``run()`` blocks the calling thread until the daemon has stopped, and raises what starting it
    raises (ConfigError for a bad config, QueueLockedError when another mqd holds the queue).
    ``on_ready`` is called (in that thread) once the queue is recovered and the daemon works.
    """

    def __init__(
        self,
        config_path: Path,
        *,
        host: PluginHost | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.config_path = config_path
        self.host = host
        self.on_ready = on_ready
        #: The daemon once ``run()`` has built it (kept after it stopped, for its state).
        self.daemon: Daemon | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._stop_requested = False

    def run(self) -> None:
        asyncio.run(self._main())

    @property
    def shutdown_timeout(self) -> float:
        """How long a graceful stop may wait for deliveries in flight (queue.shutdown_timeout)."""
        if self.daemon is not None:
            return self.daemon.shutdown_timeout
        return QueueConfig.shutdown_timeout

    def request_stop(self) -> None:
        """Stop gracefully, like SIGTERM: no new work, deliveries in flight may finish.

        Safe from any thread, at any time: asked before the daemon exists, it stops right after
        recovering the queue; asked after it stopped, it does nothing. A second request cancels
        the deliveries still in flight, like a second SIGTERM.
        """
        with self._lock:
            self._stop_requested = True
            loop, daemon = self._loop, self.daemon
        if loop is None or daemon is None:
            return
        # RuntimeError: the loop closed in the meantime, so the daemon has stopped already.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(daemon.request_stop)

    async def _main(self) -> None:
        config = load_config(locate_config(self.config_path))
        if config.queue.workers > 1:
            # The other workers are started as `python -m mqd run --worker N`, and in this
            # service sys.executable is pywin32's pythonservice.exe, not Python.
            raise ConfigError(
                f"queue.workers = {config.queue.workers} needs 'mqd run' to start the workers: "
                "run mqd as a service with WinSW (contrib/windows/mqd-winsw.xml), or set "
                "queue.workers = 1 for this one",
                path=config.source,
                key="queue.workers",
            )
        daemon = Daemon(config, host=self.host)
        with self._lock:
            self.daemon = daemon
            self._loop = asyncio.get_running_loop()
            stop_now = self._stop_requested
        if stop_now:
            daemon.request_stop()
        ready = asyncio.create_task(self._announce_ready(daemon), name="mqd-service-ready")
        try:
            await daemon.run()
        finally:
            with self._lock:
                self._loop = None
            ready.cancel()

    async def _announce_ready(self, daemon: Daemon) -> None:
        await daemon.ready.wait()
        log.info("mqd is running (config %s)", self.config_path)
        if self.on_ready is not None:
            self.on_ready()


def setup_logging(
    log_dir: Path,
    *,
    level: str = "info",
    fmt: str = "text",
    extra: Sequence[logging.Handler] = (),
) -> None:
    """Log to ``log_dir/mqd.log`` (rotated at 10 MiB, 5 files kept) and to the ``extra``
    handlers: a service has no console. ``fmt`` is "text" or "json", as ``--log-format``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        log_dir / "mqd.log", maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8"
    )
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler, *extra]
    root.setLevel(level.upper())
    if level.lower() != "debug":
        logging.getLogger("asyncio").setLevel(logging.WARNING)


# -- the Windows half ---------------------------------------------------------------------------

HAVE_PYWIN32 = False

if sys.platform == "win32":  # pragma: no cover - needs Windows and pywin32
    try:
        import servicemanager
        import win32service
        import win32serviceutil
    except ImportError:
        pass
    else:
        HAVE_PYWIN32 = True

if sys.platform == "win32" and HAVE_PYWIN32:  # pragma: no cover - needs Windows and pywin32

    class EventLogHandler(logging.Handler):
        """Warnings and errors into the Application event log, under the service's source
        (the one pywin32 registered for the service, so the messages render)."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                text = self.format(record)
                if record.levelno >= logging.ERROR:
                    servicemanager.LogErrorMsg(text)
                else:
                    servicemanager.LogWarningMsg(text)
            except Exception:
                self.handleError(record)

    class MQDService(win32serviceutil.ServiceFramework):  # type: ignore[misc]
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = DISPLAY_NAME
        _svc_description_ = DESCRIPTION

        def __init__(self, args: Sequence[str]) -> None:
            super().__init__(args)
            config = win32serviceutil.GetServiceCustomOption(self, "config", None)
            logs = win32serviceutil.GetServiceCustomOption(self, "logs", None)
            self.log_dir = Path(logs) if logs else default_log_dir()
            self.runner = ServiceRunner(
                Path(config) if config else default_config(), on_ready=self._running
            )

        def SvcRun(self) -> None:
            # Replaces the framework's, which reports RUNNING before anything ran: mqd is
            # RUNNING once its queue is recovered (as READY=1 under systemd).
            self.ReportServiceStatus(win32service.SERVICE_START_PENDING, START_WAIT_HINT_MS)
            events = EventLogHandler(logging.WARNING)
            events.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            setup_logging(self.log_dir, extra=[events])
            try:
                self.runner.run()
            except Exception as exc:
                log.exception("mqd stopped on an error")
                servicemanager.LogErrorMsg(f"mqd stopped on an error: {exc}")
                raise  # the framework reports SERVICE_STOPPED with an error: recovery applies
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)

        def _running(self) -> None:
            self.ReportServiceStatus(win32service.SERVICE_RUNNING)
            servicemanager.LogInfoMsg(f"mqd started (config {self.runner.config_path})")

        def SvcStop(self) -> None:
            wait_hint = int((self.runner.shutdown_timeout + STOP_MARGIN) * 1000)
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, wait_hint)
            log.info("stop requested by the Service Control Manager")
            self.runner.request_stop()

        def SvcShutdown(self) -> None:
            # Windows gives services only a few seconds at shutdown: what is still in flight
            # is cancelled and retried after the restart (at-least-once).
            self.SvcStop()

    def _store_options(opts: list[tuple[str, str]]) -> None:
        """``-c CONFIG`` and ``-l LOGDIR`` of ``install`` / ``update``, kept in the registry."""
        for option, value in opts:
            if option == "-c":
                path = Path(value).resolve()
                if not path.is_file():
                    raise ValueError(f"config file {path} not found: write it first")
                win32serviceutil.SetServiceCustomOption(SERVICE_NAME, "config", str(path))
            elif option == "-l":
                folder = Path(value).resolve()
                win32serviceutil.SetServiceCustomOption(SERVICE_NAME, "logs", str(folder))


def main(argv: Sequence[str] | None = None) -> int:
    """``install``, ``start``, ``stop``, ``remove``, ``debug``... (pywin32's command line)."""
    args = list(sys.argv if argv is None else argv)
    if sys.platform == "win32" and HAVE_PYWIN32:  # pragma: no cover - needs Windows and pywin32
        result: int = win32serviceutil.HandleCommandLine(
            MQDService, argv=args, customInstallOptions="c:l:", customOptionHandler=_store_options
        )
        return result
    print(
        "mqd_service.py installs and runs mqd as a Windows service: it needs Windows and pywin32 "
        "('pip install pywin32' in mqd's venv). Elsewhere run 'mqd run' under systemd or launchd "
        "(docs/deployment/).",
        file=sys.stderr,
    )
    return 69  # EX_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
