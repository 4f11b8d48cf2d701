"""What importing mqd costs, structurally: ``mqd sendmail`` runs once per message, so it must load
nothing it does not need, and ``import mqd`` must stay cheap while the public names still work.

These assert which modules are loaded, never how long it took (timings live in benchmarks/).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from corehelpers import imports

import mqd

MQD = Path(sys.executable).with_name("mqd")

#: Modules the sendmail path must not load: the daemon's world (asyncio, pluggy, aiosmtplib),
#: the CLI's (click), the email package's parser and the validating config loader (dataclasses).
HEAVY = (
    "aiohttp",
    "aiosmtplib",
    "asyncio",
    "click",
    "dataclasses",
    "email",
    "email.policy",
    "email.utils",
    "inspect",
    "mqd.config.load",
    "mqd.daemon.root",
    "mqd.message.envelope",
    "mqd.config.options",
    "mqd.config.paths",
    "mqd.plugins.host",
    # Tracing: the sendmail path leaves a traceparent header as it is (docs/tracing.md).
    "mqd.message.tracecontext",
    "mqd.tracing.status",
    "opentelemetry",
    "platformdirs",
    "pluggy",
    "secrets",
    "pathlib",
    "socket",
    "ssl",
)

MESSAGE = b"From: App <app@example.com>\nTo: Bob <bob@example.net>, carol@example.net\n\nhi\n"


def imported_by(argv: list[str], stdin: bytes, env: dict[str, str]) -> set[str]:
    """What the real ``mqd`` command imports beyond a bare interpreter's start (which may load
    more through site-packages' .pth files or a sitecustomize, none of mqd's doing)."""
    modules = imports([str(MQD), *argv], stdin, env)
    assert "mqd.producer.sendmail" in modules  # the report is read right
    return modules - imports([sys.executable, "-c", "pass"], b"", env)


@pytest.fixture
def config(producer_config: Path) -> Path:
    return producer_config


@pytest.fixture
def launcher(config: Path, tmp_path: Path) -> Path:
    """The launcher ``mqd install-sendmail`` writes for ``config``: the sendmail fast path."""
    from mqd.config.load import load_config
    from mqd.producer.launcher import write_launcher

    path = tmp_path / "sendmail"
    write_launcher(path, load_config(config))
    return path


@pytest.mark.skipif(sys.platform == "win32", reason="a launcher is a #! script")
@pytest.mark.parametrize("args", [["-t", "-i"], ["-i", "-f", "app@example.com", "bob@example.net"]])
def test_the_launcher_loads_only_mqds_own_light_modules(
    launcher: Path, spool: Path, env: dict[str, str], args: list[str]
) -> None:
    """The launcher loads nothing beyond a bare start (``os``; without site.py) but the sendmail
    path's own light modules: no re, typing, enum, tomllib, contextlib or collections, none of
    HEAVY (the config reader included: what it needs is written into the launcher), and not even
    __future__ ("from __future__ import annotations" is a real import, ~0.2 ms here, so the
    sendmail path's modules quote the annotations that name type-checking-only imports)."""
    modules = imports([str(launcher), *args], MESSAGE, env)
    extra = modules - imports([sys.executable, "-c", "pass"], b"", env)
    assert "mqd.producer.sendmail" in extra
    assert "mqd.__main__" not in extra
    assert sorted(m for m in extra if not m.startswith("mqd")) == []
    assert sorted(extra.intersection(HEAVY)) == []
    assert len(list(spool.glob("*.eml"))) == 1


#: What ``mqd sendmail`` without a launcher still never loads: it reads the config in full (the
#: sendmail path's slow path), but skips the CLI and the daemon's world.
DAEMON = ("aiohttp", "aiosmtplib", "asyncio", "click", "email.policy", "pluggy", "ssl")


def test_mqd_sendmail_without_a_launcher_skips_the_cli_and_the_daemon(
    config: Path, spool: Path, env: dict[str, str]
) -> None:
    modules = imported_by(["--config", str(config), "sendmail", "-t", "-i"], MESSAGE, env)
    assert sorted(modules.intersection(DAEMON)) == []
    assert "mqd.daemon.root" not in modules and "mqd.plugins.host" not in modules
    assert len(list(spool.glob("*.eml"))) == 1


def test_import_mqd_loads_no_submodule() -> None:
    code = "import sys, mqd; print(sorted(m for m in sys.modules if m.startswith('mqd.')))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"


def test_the_public_names_resolve() -> None:
    from mqd import (
        Envelope,
        Options,
        ProviderEvent,
        Relay,
        Status,
        Webhook,
        WebhookRejected,
        hookimpl,
    )
    from mqd.message.envelope import Envelope as EnvelopeDirect
    from mqd.relays.base import Relay as RelayDirect
    from mqd.tracking.vocabulary import Status as StatusDirect

    assert Envelope is EnvelopeDirect and Relay is RelayDirect and Status is StatusDirect
    assert callable(hookimpl) and isinstance(Options, type) and isinstance(ProviderEvent, type)
    assert issubclass(WebhookRejected, Exception) and isinstance(Webhook, type)
    for name in mqd.__all__:
        assert getattr(mqd, name) is not None, name
    assert set(mqd.__all__) <= set(dir(mqd))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="Relya"):
        mqd.Relya  # noqa: B018
    with pytest.raises(ImportError):
        from mqd import Relya  # type: ignore[attr-defined]  # noqa: F401


def test_the_installed_plugins_load_without_their_relays() -> None:
    """Every daemon start loads every installed plugin: the SES and SendGrid plugins register
    their relays by path, so a config that uses neither never imports botocore, aiohttp, httpx
    or cryptography (hundreds of milliseconds of start-up)."""
    code = (
        "import sys; from mqd.plugins.host import PluginHost; host = PluginHost();"
        "names = host.relay_names(); assert {'ses', 'sendgrid'} <= set(names), names;"
        "print(sorted(m.split('.')[0] for m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(eval(proc.stdout))  # a printed list of module names
    assert loaded.isdisjoint({"aiohttp", "botocore", "cryptography", "httpx"})


def test_the_daemon_loads_prometheus_client_only_with_metrics(
    config: Path, env: dict[str, str]
) -> None:
    """Each worker of queue.workers pays its imports at start: no exporter nobody asked for."""
    once = imports([str(MQD), "--config", str(config), "run", "--once"], b"", env)
    assert (
        "mqd.daemon.root" in once and "mqd.delivery.deliverer" in once
    )  # the report is read right
    assert "prometheus_client" not in once and "mqd.http.metrics" not in once


def test_the_daemon_loads_opentelemetry_only_with_tracing(
    config: Path, env: dict[str, str]
) -> None:
    """Tracing off (the default) costs no import, whatever OTEL_* variables are set: they
    configure tracing, [tracing] enabled turns it on (docs/tracing.md)."""
    env = {
        **env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_TRACES_EXPORTER": "otlp",
    }
    once = imports([str(MQD), "--config", str(config), "run", "--once"], b"", env)
    assert "mqd.delivery.deliverer" in once  # the report is read right
    assert not {m for m in once if m.split(".")[0] == "opentelemetry"}
    assert "mqd.tracing.spans" not in once and "mqd.tracing.status" not in once
