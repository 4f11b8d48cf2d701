"""Whether the daemon traces, and why: read from ``[tracing] enabled`` and the standard
``OTEL_*`` variables without importing OpenTelemetry (``mqd config check`` says it; the daemon
imports ``mqd.tracing.spans`` only when this says on).

On only when ``[tracing] enabled = true``, ``OTEL_SDK_DISABLED`` is not ``true``, the
OpenTelemetry SDK is installed (``pip install 'mqd[otel]'``) and ``OTEL_TRACES_EXPORTER`` names
exporters mqd can build: ``otlp`` (the default), ``console`` or ``none``. The OTLP exporter reads
its own variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``..._TRACES_ENDPOINT``, ``..._HEADERS``,
``..._TIMEOUT``, ``..._PROTOCOL``); a variable in the environment alone never turns tracing on.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from mqd.config.schema import Config

__all__ = ["EXPORTERS", "PROTOCOLS", "TracingStatus", "tracing_status"]

#: The values of ``OTEL_TRACES_EXPORTER`` mqd builds.
EXPORTERS = ("otlp", "console", "none")
#: The OTLP protocols, and the distribution that provides each one's exporter.
PROTOCOLS = {
    "http/protobuf": "opentelemetry-exporter-otlp-proto-http",
    "grpc": "opentelemetry-exporter-otlp-proto-grpc",
}
_MODULES = {
    "http/protobuf": "opentelemetry.exporter.otlp.proto.http",
    "grpc": "opentelemetry.exporter.otlp.proto.grpc",
}
_DEFAULT_ENDPOINT = {"http/protobuf": "http://localhost:4318", "grpc": "http://localhost:4317"}


@dataclass(frozen=True)
class TracingStatus:
    """On or off, why (one line for a person), and what stops it when it was asked for."""

    on: bool
    why: str
    #: The exporters to build (``OTEL_TRACES_EXPORTER``, ``none`` left out) and the OTLP
    #: protocol; meaningful when ``on``.
    exporters: tuple[str, ...] = ()
    protocol: str = "http/protobuf"
    #: What keeps tracing off although ``[tracing] enabled`` asks for it (a warning: the mail
    #: is delivered all the same).
    problems: tuple[str, ...] = field(default=())


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def tracing_status(config: Config, environ: Mapping[str, str] | None = None) -> TracingStatus:
    """Whether the daemon of ``config`` traces, with the environment ``environ`` (the process's
    by default)."""
    env = os.environ if environ is None else environ
    if not config.tracing.enabled:
        return TracingStatus(False, "off: [tracing] enabled is false")
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TracingStatus(False, "off: OTEL_SDK_DISABLED=true overrides [tracing] enabled")
    problems: list[str] = []
    if not _installed("opentelemetry.sdk"):
        problems.append(
            "[tracing] enabled = true, but the OpenTelemetry SDK is not installed: "
            "pip install 'mqd[otel]'"
        )
    names = [
        name.strip().lower()
        for name in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if name.strip()
    ] or ["otlp"]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        problems.append(
            f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}, which mqd does not build "
            f"(it builds {', '.join(EXPORTERS)})"
        )
    exporters = tuple(name for name in names if name != "none")
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if "otlp" in exporters and not problems:
        if protocol not in PROTOCOLS:
            problems.append(f"the OTLP protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        elif not _installed(_MODULES[protocol]):
            problems.append(
                f"OTLP over {protocol} needs {PROTOCOLS[protocol]}: pip install it "
                "(mqd[otel] brings http/protobuf)"
            )
    if problems:
        return TracingStatus(False, "off: " + "; ".join(problems), problems=tuple(problems))
    if not exporters:
        return TracingStatus(
            True,
            "on ([tracing] enabled = true), but OTEL_TRACES_EXPORTER=none: spans are made and "
            "dropped",
            (),
            protocol,
        )
    where = []
    for name in exporters:
        if name == "otlp":
            endpoint = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or f"{_DEFAULT_ENDPOINT[protocol]} (the default)"
            )
            where.append(f"OTLP over {protocol} to {endpoint}")
        else:
            where.append("the console (standard output)")
    return TracingStatus(
        True, f"on ([tracing] enabled = true): exporting to {', '.join(where)}", exporters, protocol
    )
