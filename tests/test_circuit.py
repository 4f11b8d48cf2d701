"""Unit tests for mqd.delivery.circuit: the per-relay circuit breaker, driven by a fake clock."""

from __future__ import annotations

import logging

import pytest
from corehelpers import FakeClock as Clock

from mqd.config.schema import CircuitConfig
from mqd.delivery.circuit import TRIAL_WAIT, Circuit, CircuitState


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(
    clock: Clock, *, failures: int = 3, cooldown: float = 10.0, max_cooldown: float = 100.0
) -> Circuit:
    config = CircuitConfig(failures=failures, cooldown=cooldown, max_cooldown=max_cooldown)
    return Circuit("smtp", config, clock=clock)


def fail(circuit: Circuit, times: int, reason: str = "connection refused") -> None:
    for _ in range(times):
        circuit.failure(reason)


def open_after_trial(circuit: Circuit, clock: Clock) -> None:
    """From an open circuit: wait out the pause, take the trial, and fail it."""
    clock.advance(circuit.admit() or 0.0)
    assert circuit.admit() is None  # the trial
    circuit.failure("still down")


# -- closed ----------------------------------------------------------------------------------------


def test_a_new_circuit_is_closed_and_admits_every_message(clock):
    circuit = make(clock)
    assert circuit.state is CircuitState.CLOSED
    assert [circuit.admit() for _ in range(10)] == [None] * 10
    assert circuit.failures == 0
    assert circuit.reason == ""


@pytest.mark.parametrize("failures", [1, 2, 3, 5])
def test_opens_after_exactly_the_configured_failures_in_a_row(clock, failures):
    circuit = make(clock, failures=failures, cooldown=10.0)
    fail(circuit, failures - 1)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.admit() is None  # not before
    circuit.failure("connection refused")
    assert circuit.state is CircuitState.OPEN
    assert circuit.admit() == pytest.approx(10.0)
    assert circuit.failures == failures
    assert circuit.reason == "connection refused"


def test_a_success_in_between_resets_the_count(clock):
    circuit = make(clock, failures=3)
    fail(circuit, 2)
    circuit.success()
    assert circuit.failures == 0
    fail(circuit, 2)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.admit() is None
    circuit.failure("timeout")
    assert circuit.state is CircuitState.OPEN


def test_a_success_on_a_closed_circuit_changes_nothing(clock, caplog):
    circuit = make(clock)
    with caplog.at_level(logging.WARNING, logger="mqd.circuit"):
        circuit.success()
    assert circuit.state is CircuitState.CLOSED
    assert circuit.admit() is None
    assert caplog.records == []


# -- open ------------------------------------------------------------------------------------------


def test_open_returns_the_remaining_seconds(clock):
    circuit = make(clock, failures=1, cooldown=30.0)
    circuit.failure("connection refused")
    assert circuit.admit() == pytest.approx(30.0)
    clock.advance(12.0)
    assert circuit.admit() == pytest.approx(18.0)
    clock.advance(17.5)
    assert circuit.admit() == pytest.approx(0.5)
    assert circuit.state is CircuitState.OPEN


def test_asking_while_open_does_not_take_the_trial(clock):
    circuit = make(clock, failures=1, cooldown=30.0)
    circuit.failure("connection refused")
    for _ in range(5):
        assert circuit.admit() is not None
    clock.advance(30.0)
    assert circuit.admit() is None  # the trial is still free for the first caller after


# -- half-open -------------------------------------------------------------------------------------


def test_after_the_cooldown_exactly_one_trial_is_admitted(clock):
    circuit = make(clock, failures=1, cooldown=30.0)
    circuit.failure("connection refused")
    clock.advance(30.0)
    assert circuit.state is CircuitState.HALF_OPEN
    assert circuit.admit() is None  # the trial
    assert circuit.admit() == TRIAL_WAIT
    assert circuit.admit() == TRIAL_WAIT
    assert circuit.state is CircuitState.HALF_OPEN
    clock.advance(1000.0)  # however long the trial takes, it stays the only one
    assert circuit.admit() == TRIAL_WAIT


def test_trial_success_closes_the_circuit(clock):
    circuit = make(clock, failures=2, cooldown=30.0)
    fail(circuit, 2)
    clock.advance(30.0)
    assert circuit.admit() is None
    circuit.success()
    assert circuit.state is CircuitState.CLOSED
    assert circuit.failures == 0
    assert circuit.reason == ""
    assert [circuit.admit() for _ in range(3)] == [None] * 3


def test_trial_success_resets_the_cooldown(clock):
    circuit = make(clock, failures=1, cooldown=10.0, max_cooldown=100.0)
    circuit.failure("down")
    open_after_trial(circuit, clock)
    open_after_trial(circuit, clock)
    assert circuit.admit() == pytest.approx(40.0)
    clock.advance(40.0)
    assert circuit.admit() is None
    circuit.success()
    circuit.failure("down again")
    assert circuit.admit() == pytest.approx(10.0)  # back to circuit_cooldown, not 80


def test_trial_failure_reopens_with_the_cooldown_doubled_up_to_the_maximum(clock):
    circuit = make(clock, failures=2, cooldown=10.0, max_cooldown=35.0)
    fail(circuit, 2)
    pauses = [circuit.admit()]
    for _ in range(4):
        open_after_trial(circuit, clock)
        assert circuit.state is CircuitState.OPEN
        pauses.append(circuit.admit())
    assert pauses == [pytest.approx(p) for p in (10.0, 20.0, 35.0, 35.0, 35.0)]


def test_trial_failure_reopens_even_below_the_failure_count(clock):
    # After a success the count starts over, but a failed trial proves the relay still down.
    circuit = make(clock, failures=5, cooldown=10.0)
    circuit.failure("a pause", retry_after=20.0)
    assert circuit.failures == 1
    clock.advance(20.0)
    assert circuit.admit() is None
    circuit.failure("still down")
    assert circuit.state is CircuitState.OPEN
    assert circuit.admit() == pytest.approx(10.0)


def test_release_frees_the_trial(clock):
    circuit = make(clock, failures=1, cooldown=10.0)
    circuit.failure("down")
    clock.advance(10.0)
    assert circuit.admit() is None
    assert circuit.admit() == TRIAL_WAIT
    circuit.release()
    assert circuit.state is CircuitState.HALF_OPEN  # no answer, so no decision
    assert circuit.admit() is None  # the next message gets the trial
    assert circuit.admit() == TRIAL_WAIT


def test_release_on_a_closed_circuit_is_harmless(clock):
    circuit = make(clock)
    circuit.release()
    assert circuit.state is CircuitState.CLOSED
    assert circuit.admit() is None


# -- retry_after -----------------------------------------------------------------------------------


def test_retry_after_opens_at_once_whatever_the_count(clock):
    circuit = make(clock, failures=5, cooldown=10.0)
    circuit.failure("429 slow down", retry_after=120.0)
    assert circuit.failures == 1
    assert circuit.state is CircuitState.OPEN
    assert circuit.admit() == pytest.approx(120.0)
    assert circuit.reason == "429 slow down"
    clock.advance(120.0)
    assert circuit.state is CircuitState.HALF_OPEN
    assert circuit.admit() is None


def test_retry_after_longer_than_the_cooldown_extends_the_pause(clock):
    circuit = make(clock, failures=1, cooldown=10.0)
    circuit.failure("down")
    clock.advance(4.0)
    circuit.failure("429", retry_after=600.0)
    assert circuit.admit() == pytest.approx(600.0)


@pytest.mark.parametrize("shorter", [1.0, 30.0, 299.0])
def test_retry_after_never_shortens_a_longer_pause(clock, shorter):
    circuit = make(clock, failures=5)
    circuit.failure("429", retry_after=300.0)
    circuit.failure("429 again", retry_after=shorter)
    assert circuit.admit() == pytest.approx(300.0)


def test_retry_after_never_shortens_an_open_cooldown(clock):
    circuit = make(clock, failures=1, cooldown=60.0)
    circuit.failure("down")
    circuit.failure("429", retry_after=5.0)
    assert circuit.admit() == pytest.approx(60.0)


@pytest.mark.parametrize("retry_after", [None, 0.0, -5.0])
def test_retry_after_that_is_no_pause_counts_as_a_plain_failure(clock, retry_after):
    circuit = make(clock, failures=2)
    circuit.failure("down", retry_after=retry_after)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.admit() is None
    circuit.failure("down", retry_after=retry_after)
    assert circuit.state is CircuitState.OPEN


def test_a_plain_failure_while_paused_never_shortens_the_far_ends_pause(clock):
    circuit = make(clock, failures=1, cooldown=60.0)
    circuit.failure("429 sending paused", retry_after=3600.0)
    circuit.failure("connection reset")  # a message that was already being sent
    assert circuit.admit() == pytest.approx(3600.0)


def test_failures_of_messages_in_flight_do_not_lengthen_an_open_circuit(clock):
    circuit = make(clock, failures=2, cooldown=10.0, max_cooldown=1000.0)
    for _ in range(2):
        assert circuit.admit() is None
    # Ten messages were admitted while it was closed; they all fail, one after the other.
    fail(circuit, 10)
    assert circuit.admit() == pytest.approx(10.0)
    clock.advance(10.0)
    assert circuit.admit() is None  # the trial
    circuit.failure("still down")
    assert circuit.admit() == pytest.approx(20.0)


def test_retry_after_after_a_close_opens_for_exactly_that_long(clock):
    circuit = make(clock, failures=1, cooldown=60.0)
    circuit.failure("down")
    circuit.success()  # a message already under way got through: the relay works
    assert circuit.state is CircuitState.CLOSED
    circuit.failure("429", retry_after=5.0)
    assert circuit.admit() == pytest.approx(5.0)


# -- state and logs --------------------------------------------------------------------------------


def test_state_values():
    assert [s.value for s in CircuitState] == ["closed", "open", "half-open"]
    assert CircuitState.HALF_OPEN == "half-open"


def test_state_follows_the_clock(clock):
    circuit = make(clock, failures=1, cooldown=10.0)
    seen = [circuit.state]
    circuit.failure("down")
    seen.append(circuit.state)
    clock.advance(9.999)
    seen.append(circuit.state)
    clock.advance(0.001)
    seen.append(circuit.state)
    assert circuit.admit() is None
    circuit.success()
    seen.append(circuit.state)
    assert seen == ["closed", "open", "open", "half-open", "closed"]


def test_opening_and_closing_are_logged_as_warnings(clock, caplog):
    circuit = make(clock, failures=2, cooldown=60.0)
    with caplog.at_level(logging.DEBUG, logger="mqd.circuit"):
        circuit.failure("first")
        assert caplog.records == []  # one failure is no news
        circuit.failure("connection refused by 127.0.0.1:25")
        clock.advance(60.0)
        circuit.admit()
        circuit.success()
    opened, closed = caplog.records
    assert opened.levelno == closed.levelno == logging.WARNING
    assert opened.name == "mqd.circuit"
    text = opened.getMessage()
    assert "relay smtp is unhealthy" in text
    assert "2 failure(s) in a row" in text
    assert "connection refused by 127.0.0.1:25" in text
    assert "60s" in text
    assert closed.getMessage() == "relay smtp answers again: using it for every message"


def test_a_reopening_logs_the_doubled_pause(clock, caplog):
    circuit = make(clock, failures=1, cooldown=60.0, max_cooldown=1000.0)
    circuit.failure("down")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mqd.circuit"):
        open_after_trial(circuit, clock)
    [record] = caplog.records
    assert "skipping it for 120s" in record.getMessage()


def test_retry_after_is_logged_once_per_longer_pause(clock, caplog):
    circuit = make(clock, failures=5)
    with caplog.at_level(logging.WARNING, logger="mqd.circuit"):
        circuit.failure("429 too many requests", retry_after=120.0)
        circuit.failure("429 too many requests", retry_after=30.0)  # inside the pause: quiet
        circuit.failure("429 too many requests", retry_after=600.0)
    texts = [r.getMessage() for r in caplog.records]
    assert len(texts) == 2
    assert "relay smtp asked to pause for 120s (429 too many requests)" in texts[0]
    assert "pause for 600s" in texts[1]
