"""contrib/windows: the portable half of the pywin32 service, run here for real, and the WinSW
configuration checked against WinSW's documented elements.

``ServiceRunner`` is what the service thread runs: a real daemon with a real config, delivering
to the aiosmtpd server of the tests, stopped from another thread as the Service Control Manager's
stop control does. The pywin32 half itself needs Windows.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from corehelpers import make_message
from smtpserver import SMTPPeer

from mqd.config.schema import Config, QueueConfig
from mqd.errors import ConfigError
from mqd.plugins.host import PluginHost
from mqd.producer.inject import inject
from mqd.testing import wait_until_sync
from mqd.testing.harness import queued_entries

ROOT = Path(__file__).resolve().parent.parent
WINDOWS = ROOT / "contrib" / "windows"


def load_service_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mqd_service", WINDOWS / "mqd_service.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


service = load_service_module()


class RunnerThread:
    """A ServiceRunner in its own thread, as in the service; ``error`` is what run() raised."""

    def __init__(self, config_path: Path) -> None:
        self.ready = threading.Event()
        self.runner = service.ServiceRunner(
            config_path, host=PluginHost(entry_points=False), on_ready=self.ready.set
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="service-thread")

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> RunnerThread:
        self.thread.start()
        return self

    def join(self, timeout: float = 60) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the daemon did not stop"


@pytest.fixture
def runners() -> Iterator[list[RunnerThread]]:
    started: list[RunnerThread] = []
    yield started
    for runner in started:  # a failed test must not leave a daemon running
        if runner.thread.is_alive():
            runner.runner.request_stop()
            runner.runner.request_stop()
            runner.thread.join(30)


def config_path(config: Config) -> Path:
    assert config.source is not None
    return config.source


# -- ServiceRunner ------------------------------------------------------------------------------


def test_stop_from_another_thread_lets_the_delivery_in_flight_finish(
    plain_config: Config, spool: Path, smtp_server: SMTPPeer, runners: list[RunnerThread]
) -> None:
    smtp_server.data_delay = 1.0  # the stop arrives while the message is being sent
    runner = RunnerThread(config_path(plain_config)).start()
    runners.append(runner)
    assert runner.ready.wait(30), "never became ready"
    inject(spool, make_message(subject="in flight"))
    wait_until_sync(lambda: smtp_server.data_started >= 1, "the delivery to start")
    assert runner.runner.daemon.in_flight  # really in flight when the stop comes

    runner.runner.request_stop()  # what SvcStop does, from the SCM's thread
    runner.join()
    assert runner.error is None
    assert len(smtp_server.messages) == 1
    assert b"Subject: in flight" in smtp_server.messages[0].data
    assert not list((plain_config.queue.dir / "state").glob("*.json"))
    runner.runner.request_stop()  # after the end: nothing happens


def test_a_second_stop_cancels_the_delivery_and_keeps_the_message(
    plain_config: Config, spool: Path, smtp_server: SMTPPeer, runners: list[RunnerThread]
) -> None:
    smtp_server.data_delay = 5.0
    runner = RunnerThread(config_path(plain_config)).start()
    runners.append(runner)
    assert runner.ready.wait(30)
    inject(spool, make_message())
    wait_until_sync(lambda: smtp_server.data_started >= 1, "the delivery to start")
    runner.runner.request_stop()
    runner.runner.request_stop()  # Windows shutting down: no time left
    runner.join()
    assert runner.error is None
    # Cancelled before the relay accepted it: still queued, retried after the restart.
    assert len(queued_entries(plain_config)) == 1


def test_stop_before_the_daemon_exists_stops_it_after_recovery(
    plain_config: Config, spool: Path, runners: list[RunnerThread]
) -> None:
    message = inject(spool, make_message())
    runner = RunnerThread(config_path(plain_config))
    runners.append(runner)
    runner.runner.request_stop()  # the SCM stops a service that is still starting
    runner.start().join()
    assert runner.error is None
    assert runner.runner.daemon is not None
    assert message.exists()  # not taken: a stopping daemon claims nothing


def test_a_bad_config_is_raised_to_the_service(tmp_path: Path) -> None:
    runner = service.ServiceRunner(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="config file not found"):
        runner.run()
    assert runner.daemon is None


def test_several_workers_are_refused_with_the_way_that_works(tmp_path: Path) -> None:
    config = tmp_path / "mqd.toml"
    config.write_text(
        f'[queue]\ndir = "{tmp_path / "queue"}"\nworkers = 2\n'
        f'[[spool]]\npath = "{tmp_path / "spool"}"\nallowed_senders = ["a@example.com"]\n'
        '[relays.out]\nplugin = "memory"\n'
    )
    runner = service.ServiceRunner(config)
    with pytest.raises(ConfigError, match=r"queue.workers = 2 needs 'mqd run'.*WinSW"):
        runner.run()
    assert not (tmp_path / "queue").exists()  # refused before anything was opened


def test_shutdown_timeout_follows_the_config(
    sink_config: Any, tmp_path: Path, runners: list[RunnerThread]
) -> None:
    config: Config = sink_config(queue='shutdown_timeout = "50s"')
    runner = RunnerThread(config_path(config))
    assert runner.runner.shutdown_timeout == QueueConfig.shutdown_timeout  # before the start
    runners.append(runner)
    runner.start()
    assert runner.ready.wait(30)
    assert runner.runner.shutdown_timeout == 50
    runner.runner.request_stop()
    runner.join()


# -- logging ------------------------------------------------------------------------------------


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_service_logs_go_to_a_file(tmp_path: Path, root_logger: logging.Logger, fmt: str) -> None:
    service.setup_logging(tmp_path / "logs", fmt=fmt)
    logging.getLogger("mqd.daemon").warning("queue %s recovered", "Q")
    for handler in root_logger.handlers:
        handler.flush()
    line = (tmp_path / "logs" / "mqd.log").read_text(encoding="utf-8").strip()
    if fmt == "json":
        record = json.loads(line)
        assert (record["level"], record["logger"]) == ("warning", "mqd.daemon")
        assert record["message"] == "queue Q recovered"
    else:
        assert line.endswith("WARNING mqd.daemon: queue Q recovered")


@pytest.mark.skipif(sys.platform == "win32", reason="on Windows main() runs pywin32's commands")
def test_main_elsewhere_explains_what_it_needs(capsys: pytest.CaptureFixture[str]) -> None:
    assert service.main(["mqd_service.py", "install"]) == 69
    assert "needs Windows and pywin32" in capsys.readouterr().err


# -- WinSW --------------------------------------------------------------------------------------

#: The elements WinSW 2.x documents for <service> (doc/xmlConfigFile.md); a typo would be ignored.
WINSW_ELEMENTS = {
    "id", "name", "description", "executable", "startmode", "delayedAutoStart", "depend",
    "logpath", "log", "logmode", "argument", "arguments", "startargument", "stopargument",
    "stopexecutable", "stoptimeout", "env", "interactive", "beeponshutdown", "download",
    "onfailure", "resetfailure", "securityDescriptor", "serviceaccount", "workingdirectory",
    "priority", "stopparentprocessfirst", "hidewindow", "waithint", "sleeptime", "extensions",
}  # fmt: skip
WINSW_UNITS = {"ms": 0.001, "sec": 1, "secs": 1, "min": 60, "mins": 60, "hour": 3600}


def winsw_seconds(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+)\s*(ms|sec|secs|min|mins|hour)\s*", text)
    assert match, f"not a WinSW duration with a unit: {text!r}"
    return int(match.group(1)) * WINSW_UNITS[match.group(2)]


@pytest.fixture(scope="module")
def winsw() -> ET.Element:
    return ET.parse(WINDOWS / "mqd-winsw.xml").getroot()


def test_winsw_uses_documented_elements(winsw: ET.Element) -> None:
    assert winsw.tag == "service"
    unknown = sorted({child.tag for child in winsw} - WINSW_ELEMENTS)
    assert not unknown, unknown
    assert winsw.findtext("id") == "mqd"


def test_winsw_runs_mqd_with_an_explicit_config(winsw: ET.Element) -> None:
    assert (winsw.findtext("executable") or "").endswith(r"\Scripts\mqd.exe")
    arguments = [element.text for element in winsw.findall("argument")]
    assert arguments == ["--config", r"%ProgramData%\mqd\mqd.toml", "run"]


def test_winsw_stops_gracefully(winsw: ET.Element) -> None:
    # WinSW sends Ctrl+C (SIGINT for Python, a graceful stop for mqd), then waits this long.
    assert winsw_seconds(winsw.findtext("stoptimeout") or "") > QueueConfig.shutdown_timeout
    assert winsw.findtext("stopparentprocessfirst") == "true"
    failures = winsw.findall("onfailure")
    assert failures and all(f.get("action") == "restart" for f in failures)
    assert all(winsw_seconds(f.get("delay", "")) > 0 for f in failures)


def test_winsw_rolls_its_logs(winsw: ET.Element) -> None:
    log = winsw.find("log")
    assert log is not None and log.get("mode") == "roll-by-size"
    assert int(log.findtext("sizeThreshold") or "0") > 0
    assert int(log.findtext("keepFiles") or "0") > 0
    assert winsw.findtext("logpath") == r"%ProgramData%\mqd\logs"
