"""Events (mqd.events, exported by mqd): one frozen class per kind, with the typed fields its
emitter fills and the time of the emitter's clock; a daemon run publishes each kind to plugins."""

from __future__ import annotations

import dataclasses

import pytest

from mqd import (
    Attempted,
    Bounced,
    Claimed,
    Completed,
    Deferred,
    Deleted,
    Delivered,
    Event,
    EventKind,
    Failed,
    MessageEvent,
    PluginHost,
    Queued,
    QueueEntry,
    RecipientEvent,
    RecipientState,
    Rejected,
    Reply,
    Suppressed,
    hookimpl,
)
from mqd.admin.client import offline
from mqd.clock import ManualClock
from mqd.daemon.root import Daemon
from mqd.events import EVENT_TYPES
from mqd.relays.memory import MemoryRelay
from mqd.testing import Harness, make_message

NOW = 1_800_000_000.0


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def mqd_track_event(self, event: Event) -> None:
        self.events.append(event)

    def about(self, message_id: str) -> list[Event]:
        return [e for e in self.events if e.message_id == message_id]


def test_each_kind_has_one_class_that_names_it() -> None:
    assert set(EVENT_TYPES) == set(EventKind)
    for kind, cls in EVENT_TYPES.items():
        assert cls.kind is kind and issubclass(cls, Event)
    assert {c for c in EVENT_TYPES.values() if issubclass(c, MessageEvent)} == {
        Queued,
        Failed,
        Completed,
        Deleted,
    }
    assert {c for c in EVENT_TYPES.values() if issubclass(c, RecipientEvent)} == {
        Delivered,
        Deferred,
        Bounced,
        Suppressed,
    }


def test_events_are_frozen_and_their_payload_is_their_own_fields() -> None:
    event = Bounced(
        message_id="m1",
        time=NOW,
        recipient="gone@example.net",
        reply="550 5.1.1 no such user",
        relay="mem",
        status_code="5.1.1",
        dsn_sent=True,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.dsn_sent = False  # type: ignore[misc]
    assert event.kind is EventKind.BOUNCED
    assert event.payload() == {
        "recipient": "gone@example.net",
        "reply": "550 5.1.1 no such user",
        "relay": "mem",
        "status_code": "5.1.1",
        "dsn_sent": True,
        "dsn_id": None,
        "traceparent": None,
    }
    with pytest.raises(TypeError):
        Claimed("m1", NOW, "a.eml", "/spool")  # type: ignore[misc]  # keywords only


def test_a_message_event_describes_its_queue_entry() -> None:
    entry = QueueEntry(
        id="018f2a3b4c5d0123456789",
        sender="",
        recipients=[RecipientState("a@example.net"), RecipientState("b@example.net")],
        relay="main",
        source="dsn",
        created_at=NOW,
        next_attempt_at=NOW,
        route=["main", "backup"],
    )
    event = Queued.of(entry, NOW + 1)
    assert event == Queued(
        message_id="018f2a3b4c5d0123456789",
        time=NOW + 1,
        sender="",  # the null sender
        recipients=("a@example.net", "b@example.net"),
        relay="main",
        route=("main", "backup"),
        message_id_header=None,  # it has none
        accepted_at=NOW,
        attempts=0,
        traceparent=None,
    )
    entry.message_id, entry.route = "<1@example.com>", []
    assert Failed.of(entry, NOW).message_id_header == "<1@example.com>"
    assert Failed.of(entry, NOW).route == ("main",)


async def test_a_daemon_publishes_each_kind_with_its_fields_at_its_clocks_time(
    mqd_harness: Harness,
) -> None:
    config = mqd_harness.configure({"mem": {"plugin": "memory"}})
    recorder = Recorder()
    host = PluginHost(entry_points=False, extra=(recorder,))
    daemon = Daemon(config, host=host, once=True, clock=ManualClock(NOW))
    relay = daemon.relays["mem"]
    assert isinstance(relay, MemoryRelay)
    relay.replies["gone@example.net"] = Reply(550, "no such user", "5.1.1")
    relay.replies["slow@example.net"] = Reply(451, "try later", "4.3.0")
    ok = mqd_harness.drop(make_message(to=("alice@example.net",)), name="ok.eml")
    mqd_harness.drop(make_message(to=("gone@example.net",)), name="gone.eml")
    mqd_harness.drop(make_message(to=("slow@example.net",)), name="slow.eml")
    mqd_harness.drop(
        make_message(sender="mallory@evil.test", to=("eve@example.net",)), name="evil.eml"
    )
    await daemon.run()

    assert recorder.events and {e.time for e in recorder.events} == {NOW}
    claimed = {e.file: e for e in recorder.events if isinstance(e, Claimed)}
    assert set(claimed) == {"ok.eml", "gone.eml", "slow.eml", "evil.eml"}
    assert {e.spool for e in claimed.values()} == {str(ok.parent)}

    ok_events = recorder.about(claimed["ok.eml"].message_id)
    assert [type(e) for e in ok_events] == [Claimed, Queued, Attempted, Delivered, Completed]
    _, queued, attempted, delivered, completed = ok_events
    assert isinstance(attempted, Attempted) and attempted.attempt == 1
    assert attempted.started == attempted.waiting_since == NOW
    [call] = attempted.calls
    assert (call.relay, call.recipients, call.outcome) == (
        "mem",
        ("alice@example.net",),
        "delivered",
    )
    assert call.reply.startswith("250") and call.started == call.ended == NOW
    assert isinstance(queued, Queued) and isinstance(delivered, Delivered)
    assert queued.sender == "app@example.com" and queued.recipients == ("alice@example.net",)
    assert queued.relay == "mem" and queued.route == ("mem",)
    assert (queued.message_id_header or "").startswith("<")
    assert (delivered.recipient, delivered.relay) == ("alice@example.net", "mem")
    assert (delivered.reply or "").startswith("250") and delivered.age == 0.0
    # The same entry, described again (one attempt later; a source's hand-over names itself in
    # Queued only).
    own = {"source": None, "login": None, "peer": None}
    assert {**completed.payload(), **own} == {**queued.payload(), "attempts": 1}

    gone = recorder.about(claimed["gone.eml"].message_id)
    assert [type(e) for e in gone] == [Claimed, Queued, Attempted, Bounced, Failed]
    bounced = gone[3]
    assert isinstance(bounced, Bounced)
    assert bounced.recipient == "gone@example.net" and bounced.status_code == "5.1.1"
    assert bounced.dsn_sent and bounced.relay == "mem" and "no such user" in (bounced.reply or "")
    assert bounced.dsn_id == f"{bounced.message_id}b0"

    slow = recorder.about(claimed["slow.eml"].message_id)
    assert [type(e) for e in slow] == [Claimed, Queued, Attempted, Deferred]
    deferred = slow[3]
    assert isinstance(deferred, Deferred)
    assert deferred.recipient == "slow@example.net" and deferred.next_attempt_at > NOW

    evil = recorder.about(claimed["evil.eml"].message_id)
    assert [type(e) for e in evil] == [Claimed, Rejected]
    rejected = evil[1]
    assert isinstance(rejected, Rejected)
    assert rejected.stage == "policy" and rejected.sender == "mallory@evil.test"
    assert rejected.file == "evil.eml" and "mallory@evil.test" in rejected.reason
    assert rejected.recipients == ("eve@example.net",)

    async with offline(config, host) as admin:
        await admin.op_delete([deferred.message_id])
    deleted = recorder.events[-1]
    assert isinstance(deleted, Deleted)
    assert deleted.message_id == deferred.message_id and deleted.recipients == ("slow@example.net",)
