"""The intake sources' metrics (``[[smtpd]]``, ``[[mailbox]]``), read from their status at
scrape time (``mqd.http.metrics``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from mqd.intake.source import SourceStatus

__all__ = ["source_families"]


def source_families(sources: Sequence[SourceStatus]) -> Iterator[Metric]:
    """``mqd_source_messages_total`` and ``mqd_source_connections``, per source."""
    messages = CounterMetricFamily(
        "mqd_source_messages",
        "Messages an intake source other than the spools ([[smtpd]], [[mailbox]]) took in since "
        "mqd started, "
        "by outcome: accepted (durable in the queue, then acknowledged) or refused (sender not "
        "allowed, malformed, too large, or the queue unable to take it).",
        labels=["source", "outcome"],
    )
    connections = GaugeMetricFamily(
        "mqd_source_connections",
        "Producers connected to an intake source ([[smtpd]]) now; for a [[mailbox]], 1 while "
        "it is connected to its broker, else 0.",
        labels=["source"],
    )
    for source in sources:
        messages.add_metric([source.name, "accepted"], source.accepted)
        messages.add_metric([source.name, "refused"], source.refused)
        connections.add_metric([source.name], source.connections)
    yield from (messages, connections)
