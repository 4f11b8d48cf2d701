"""OpenTelemetry traces (``mqd[otel]``, ``[tracing]``): whether they are on (``status``, which
imports no OpenTelemetry) and the spans made from the daemon's events (``spans``)."""
