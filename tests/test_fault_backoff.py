"""``mqd.faults.Fault``: said once, backoff doubling to a ceiling, and back to a quick retry
when a try made progress (a queue that took part of a batch has room coming)."""

from __future__ import annotations

import logging

import pytest

from mqd.clock import ManualClock
from mqd.faults import Fault


def test_the_wait_doubles_to_its_ceiling_and_progress_brings_it_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    fault = Fault("intake", logging.getLogger("test"), clock=clock, first=1.0, most=60.0)
    with caplog.at_level(logging.ERROR):
        for _ in range(8):
            fault.failed("the queue is full")
    assert fault.retry_in() == 60.0, "a long outage waits up to the ceiling"
    assert caplog.text.count("the queue is full") == 1, "said once"
    fault.failed("the queue is full", progress=True)
    assert fault.retry_in() == 1.0, "part of the batch went in: try again soon"
    fault.failed("the queue is full")
    assert fault.retry_in() == 2.0
    fault.cleared()
    assert not fault.active and fault.retry_in() == 0.0
