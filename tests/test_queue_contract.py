"""The queue store contract (mqd.queue.store), run against every store in tests/queue_stores.py.

Time comes from a ManualClock; a crash is a store abandoned without close and a new one opened
on the same durable state. A store shared by nodes (its kit's ``other()``) is also held to lease
expiry: a lease not renewed is taken by another node, and its old holder is fenced out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from queue_stores import KITS, StoreKit, body_for, new_entry

from mqd.clock import ManualClock
from mqd.queue.entry import QueueEntry, RcptStatus, RecipientState
from mqd.queue.failed import FailedRecipient, FailureRecord
from mqd.queue.store import (
    Bounce,
    EntryBusy,
    EntryState,
    Handed,
    HandoverKey,
    Incoming,
    LeaseLost,
    QueueStore,
    Refused,
    UnknownEntry,
)


@pytest.fixture(params=sorted(KITS))
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreKit]:
    kit = KITS[request.param](tmp_path, ManualClock())
    yield kit
    kit.close()


@pytest.fixture
async def store(kit: StoreKit) -> AsyncIterator[QueueStore]:
    store = kit.make()
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def clock(kit: StoreKit) -> ManualClock:
    return kit.clock


async def accepted(store: QueueStore, clock: ManualClock, **kwargs: object) -> QueueEntry:
    entry = new_entry(clock, **kwargs)  # type: ignore[arg-type]
    await store.accept([Incoming(entry, body_for(entry))])
    return entry


async def deferred(store: QueueStore, clock: ManualClock, wait: float = 600.0) -> QueueEntry:
    """An entry attempted once and saved for a retry ``wait`` seconds from now."""
    new = await accepted(store, clock)
    [lease] = await store.lease_ids([new.id])
    entry = lease.entry
    entry.attempts += 1
    entry.last_attempt_at = clock.time()
    entry.next_attempt_at = clock.time() + wait
    await store.save(lease, entry)
    return entry


# -- accepting and leasing -----------------------------------------------------------------------


async def test_an_accepted_entry_is_due_now_and_leased_once(store, clock):
    entry = await accepted(store, clock)
    assert await store.next_due() == clock.time()
    [lease] = await store.lease(10)
    assert lease.entry.id == entry.id and lease.node == store.node
    assert await store.lease(10) == []  # leased: not given twice
    assert await store.body(lease.entry) == body_for(entry)
    [listed] = await store.entries()
    assert listed.state is EntryState.ACTIVE and listed.node == store.node


async def test_lease_gives_at_most_limit_oldest_due_first(store, clock):
    first = await accepted(store, clock)
    clock.advance(1)
    second = await accepted(store, clock)
    clock.advance(1)
    await accepted(store, clock)
    leases = await store.lease(2)
    assert [lease.entry.id for lease in leases] == [first.id, second.id]
    assert len(await store.lease(5)) == 1


async def test_accept_is_idempotent_on_the_entry_id(store, clock):
    entry = await accepted(store, clock)
    await store.accept([Incoming(entry, body_for(entry))])
    assert [item.entry.id for item in await store.entries()] == [entry.id]


async def test_wake_is_called_when_an_entry_is_accepted(store, clock):
    woken: list[bool] = []
    store.subscribe(lambda: woken.append(True))
    await accepted(store, clock)
    assert woken


# -- the outcomes of an attempt ------------------------------------------------------------------


async def test_a_saved_entry_is_due_at_its_next_attempt(store, clock):
    entry = await deferred(store, clock, wait=600)
    assert await store.lease(10) == []
    assert await store.next_due() == entry.next_attempt_at
    [listed] = await store.entries()
    assert listed.state is EntryState.DEFERRED and listed.entry.attempts == 1
    clock.advance(600)
    [lease] = await store.lease(10)
    assert lease.entry.id == entry.id and lease.entry.attempts == 1


async def test_complete_removes_the_entry(store, clock):
    await accepted(store, clock)
    [lease] = await store.lease(10)
    await store.dispatching(lease)
    await store.complete(lease, lease.entry)
    assert await store.entries() == []
    assert await store.next_due() is None
    assert (await store.counts()).total == 0


async def test_fail_moves_the_message_to_the_failed_folder(store, clock):
    entry = await accepted(store, clock)
    [lease] = await store.lease(10)
    record = FailureRecord(
        "delivery",
        "<alice@example.net>: 550 5.1.1 no such user",
        sender=entry.sender,
        recipients=(FailedRecipient("alice@example.net", "failed", "550 5.1.1 no such user"),),
    )
    await store.fail(lease, lease.entry, record)
    assert await store.entries() == []
    [failed] = await store.failed.messages()
    assert failed.id == entry.id and failed.stage == "delivery"
    assert failed.recipients[0].reply == "550 5.1.1 no such user"
    assert await store.failed.read(failed) == body_for(entry)
    assert await store.failed.count() == 1
    await store.failed.remove(failed)
    assert await store.failed.messages() == []


async def test_a_bounce_saved_with_its_entry_is_queued_and_due(store, clock):
    entry = await accepted(store, clock)
    [lease] = await store.lease(10)
    bounced = lease.entry
    bounced.recipients[0].status = RcptStatus.FAILED
    bounced.recipients[0].notified = True
    bounced.bounces = 1
    bounced.next_attempt_at = clock.time() + 600
    dsn = QueueEntry(
        id=f"{entry.id}b0",
        sender="",
        recipients=[RecipientState(entry.sender)],
        relay="r1",
        source="dsn",
        created_at=clock.time(),
        next_attempt_at=clock.time(),
        is_report=True,
    )
    await store.save(lease, bounced, bounce=Bounce(dsn, b"Subject: bounce\r\n\r\nsorry\r\n"))
    [due] = await store.lease(10)
    assert due.entry.id == dsn.id and due.entry.is_report
    assert await store.body(due.entry) == b"Subject: bounce\r\n\r\nsorry\r\n"


async def test_release_gives_an_entry_back_uncounted(store, clock):
    entry = await accepted(store, clock)
    [lease] = await store.lease(10)
    await store.release(lease, not_before=clock.time() + 60)
    assert await store.lease(10) == []
    clock.advance(60)
    [again] = await store.lease(10)
    assert again.entry.id == entry.id and again.entry.attempts == 0


# -- fencing: administrators against lease holders -----------------------------------------------


async def test_a_delete_revokes_a_lease_not_yet_dispatching(store, clock):
    entry = await accepted(store, clock)
    [lease] = await store.lease(10)
    [gone] = await store.delete([entry.id])
    assert gone.id == entry.id
    with pytest.raises(LeaseLost):
        await store.dispatching(lease)
    with pytest.raises(LeaseLost):
        await store.save(lease, lease.entry)
    await store.release(lease)  # silent for a revoked lease
    assert await store.entries() == [] and await store.lease(10) == []


async def test_an_entry_being_dispatched_cannot_be_deleted(store, clock):
    entry = await accepted(store, clock)
    [lease] = await store.lease(10)
    await store.dispatching(lease)
    with pytest.raises(EntryBusy):
        await store.delete([entry.id])
    await store.complete(lease, lease.entry)  # the holder still owns it
    assert await store.entries() == []


async def test_a_hold_of_a_leased_entry_applies_when_it_is_saved(store, clock):
    entry = await accepted(store, clock)
    [lease] = await store.lease(10)
    assert await store.hold([entry.id]) == [entry.id]
    lease.entry.attempts += 1
    await store.save(lease, lease.entry)
    [listed] = await store.entries()
    assert listed.state is EntryState.HELD and listed.entry.held
    assert await store.next_due() is None
    assert await store.unhold(None) == [entry.id]
    [again] = await store.lease(10)
    assert again.entry.id == entry.id and not again.entry.held


async def test_a_retry_of_a_leased_entry_makes_it_due_when_saved(store, clock):
    entry = await accepted(store, clock)
    [lease] = await store.lease(10)
    assert await store.retry([entry.id]) == [entry.id]
    lease.entry.attempts += 1
    lease.entry.next_attempt_at = clock.time() + 3600
    await store.save(lease, lease.entry)
    [again] = await store.lease(10)
    assert again.entry.id == entry.id


async def test_retry_every_entry_makes_the_deferred_due_and_leaves_the_held(store, clock):
    waiting = await deferred(store, clock)
    held = await deferred(store, clock)
    await store.hold([held.id])
    assert await store.retry(None) == [waiting.id]
    [lease] = await store.lease(10)
    assert lease.entry.id == waiting.id


async def test_lease_ids_leases_named_entries_whatever_their_schedule(store, clock):
    entry = await deferred(store, clock)
    [lease] = await store.lease_ids([entry.id])
    assert lease.entry.id == entry.id
    with pytest.raises(EntryBusy):
        await store.lease_ids([entry.id])
    with pytest.raises(UnknownEntry):
        await store.lease_ids(["nope"])


async def test_find_resolves_unique_prefixes(store, clock):
    entry = await accepted(store, clock)
    other = await accepted(store, clock)
    assert await store.find([entry.id[-15:]]) == {}
    assert await store.find([entry.id]) == {entry.id: entry.id}
    common = next(i for i in range(len(entry.id)) if entry.id[i] != other.id[i])
    assert await store.find([entry.id[: common + 1]]) == {entry.id[: common + 1]: entry.id}
    with pytest.raises(UnknownEntry, match="start of 2"):
        await store.find([entry.id[:common]])
    with pytest.raises(UnknownEntry):
        await store.get("nope")


# -- counting ------------------------------------------------------------------------------------


async def test_counts_by_state_size_age_and_relay(store, clock):
    first = await accepted(store, clock, relays=("r1", "r2"))
    clock.advance(10)
    await deferred(store, clock)
    held = await deferred(store, clock)
    await store.hold([held.id])
    counts = await store.counts()
    assert counts.by_state[EntryState.WAITING] == 1
    assert counts.by_state[EntryState.DEFERRED] == 1
    assert counts.by_state[EntryState.HELD] == 1
    assert counts.total == 3 and counts.oldest == first.created_at
    assert counts.by_relay == {"r1": 3, "r2": 1}
    assert counts.size == sum(item.entry.size for item in await store.entries())


# -- the failed folder and small state -----------------------------------------------------------


async def test_refused_files_land_in_the_failed_folder_with_their_reason(store, clock):
    record = FailureRecord(
        "policy",
        "sender evil@example.org is not allowed",
        spool="/var/spool/mqd",
        file="x.eml",
        sender="evil@example.org",
        recipients=(FailedRecipient("alice@example.net", "refused"),),
    )
    await store.refuse([Refused("1a2b", record, b"Subject: x\r\n\r\nx\r\n")])
    [message] = await store.failed.find(["1a"])
    assert message.record.reason == record.reason and message.record.spool == "/var/spool/mqd"
    assert message.recipients == (FailedRecipient("alice@example.net", "refused"),)
    assert await store.failed.read(message) == b"Subject: x\r\n\r\nx\r\n"


async def test_small_state_round_trips(store):
    assert await store.load_state("quota") is None
    await store.save_state("quota", b'{"a": 1}')
    assert await store.load_state("quota") == b'{"a": 1}'


# -- crash recovery ------------------------------------------------------------------------------


async def test_after_a_crash_every_entry_is_back_and_leases_are_gone(kit, clock):
    store = kit.make()
    await store.open()
    waiting = await accepted(store, clock)
    later = await deferred(store, clock, wait=600)
    held = await deferred(store, clock, wait=600)
    await store.hold([held.id])
    await store.save_state("quota", b"1")
    [leased] = await store.lease(10)  # in flight when the crash comes
    assert leased.entry.id == waiting.id
    kit.abandon(store)

    again = kit.make()
    await again.open()
    try:
        listed = {item.entry.id: item for item in await again.entries()}
        assert set(listed) == {waiting.id, later.id, held.id}
        assert listed[held.id].state is EntryState.HELD
        assert listed[later.id].entry.attempts == 1
        [lease] = await again.lease(10)  # the one in flight is due again
        assert lease.entry.id == waiting.id
        assert await again.body(lease.entry) == body_for(waiting)
        assert await again.next_due() == later.next_attempt_at
        assert await again.load_state("quota") == b"1"
    finally:
        await again.close()


async def test_a_lease_not_renewed_expires_and_another_node_takes_the_entry(kit, store, clock):
    other = kit.other()
    if other is None or store.lease_renewal is None:
        pytest.skip(f"the {kit.name} store is one process's: its leases end with it, never expire")
    await other.open()
    try:
        entry = await accepted(store, clock)
        [lease] = await store.lease(10)
        await store.dispatching(lease)
        for _ in range(4):  # renewed in time: kept
            clock.advance(store.lease_renewal)
            await store.renew([lease])
            assert await other.lease(10) == []
        clock.advance(store.lease_renewal * 10)  # its node died: it expires
        [taken] = await other.lease(10)
        assert taken.entry.id == entry.id and taken.node == other.node
        assert (await other.counts()).redispatched == 1  # it may have gone out
        with pytest.raises(LeaseLost):
            await store.save(lease, lease.entry)
        await other.complete(taken, taken.entry)
        assert await store.entries() == []
    finally:
        await other.close()


async def test_an_entry_for_later_waits_keeps_its_time_across_a_crash_and_a_flush(kit, clock):
    """Send later: accepted with ``send_at`` ahead, it is listed as scheduled, not leased
    before its time (after a crash neither), a retry of everything leaves it, and it is due at
    its time."""
    store = kit.make()
    await store.open()
    entry = new_entry(clock)
    entry.send_at = entry.next_attempt_at = clock.time() + 7200
    await store.accept([Incoming(entry, body_for(entry))])
    assert (await store.get(entry.id)).state is EntryState.SCHEDULED
    assert await store.lease(10) == []
    await store.retry(None)
    assert await store.lease(10) == [], "a flush does not send a message for later"
    kit.abandon(store)

    again = kit.make()
    await again.open()
    try:
        listed = await again.get(entry.id)
        assert listed.state is EntryState.SCHEDULED
        assert listed.entry.send_at == entry.send_at
        assert await again.lease(10) == []
        assert await again.next_due() == entry.send_at
        clock.advance(7200)
        [lease] = await again.lease(10)
        assert lease.entry.id == entry.id
    finally:
        await again.close()


async def test_a_second_store_on_the_same_state_is_refused_while_one_holds_it(kit, store):
    from mqd.errors import QueueLockedError

    with pytest.raises(QueueLockedError):
        await kit.make().open()


# -- hand-over keys ------------------------------------------------------------------------------


def keyed(
    clock: ManualClock, key: str, *, scope: str = "submit.s1", keep: float = 3600.0
) -> Incoming:
    entry = new_entry(clock)
    note = f"first answer of {entry.id}"
    return Incoming(entry, body_for(entry), key=HandoverKey(scope, key, clock.time() + keep, note))


async def test_a_key_accepted_twice_queues_once_and_answers_with_the_first(store, clock):
    first = keyed(clock, "order-1")
    assert await store.accept([first]) == {}
    again = keyed(clock, "order-1")
    repeats = await store.accept([again])
    assert repeats == {again.entry.id: Handed(first.entry.id, first.key.note, replayed=True)}
    assert await store.accept([first]) == {}, "the same entry again is no repeat (idempotent)"
    # In one batch: the first of a key is queued, the others answered with it.
    one, two, elsewhere = keyed(clock, "k2"), keyed(clock, "k2"), keyed(clock, "k2", scope="other")
    repeats = await store.accept([one, two, elsewhere])
    assert repeats == {two.entry.id: Handed(one.entry.id, one.key.note, replayed=True)}
    queued = {listed.entry.id for listed in await store.entries()}
    assert queued == {first.entry.id, one.entry.id, elsewhere.entry.id}


async def test_a_key_outlives_its_entry_and_a_crash(kit, clock):
    store = kit.make()
    await store.open()
    first = keyed(clock, "order-2")
    await store.accept([first])
    [lease] = await store.lease(10)
    await store.complete(lease, lease.entry)  # delivered and gone: its key stays
    again = keyed(clock, "order-2")
    assert (await store.accept([again]))[again.entry.id].id == first.entry.id
    kit.abandon(store)

    restarted = kit.make()
    await restarted.open()
    try:
        third = keyed(clock, "order-2")
        assert await restarted.accept([third]) == {
            third.entry.id: Handed(first.entry.id, first.key.note, replayed=True)
        }
        assert await restarted.entries() == []
    finally:
        await restarted.close()


async def test_keys_expire(kit, store, clock):
    first = keyed(clock, "order-3", keep=60)
    await store.accept([first])
    clock.advance(61)
    later = keyed(clock, "order-3", keep=60)
    assert await store.accept([later]) == {}, "an expired key is a new one"
    assert {listed.entry.id for listed in await store.entries()} == {first.entry.id, later.entry.id}
    clock.advance(30)
    repeat = keyed(clock, "order-3")
    assert (await store.accept([repeat]))[repeat.entry.id].id == later.entry.id


async def test_a_key_is_queued_once_by_every_node(kit, store, clock):
    other = kit.other()
    if other is None:
        pytest.skip(f"the {kit.name} store is one process's")
    await other.open()
    try:
        first = keyed(clock, "order-4")
        await store.accept([first])
        again = keyed(clock, "order-4")
        assert (await other.accept([again]))[again.entry.id].id == first.entry.id
        # Two nodes accepting one key at once: one queues it, the other answers with it.
        a, b = keyed(clock, "order-5"), keyed(clock, "order-5")
        answers = await asyncio.gather(store.accept([a]), other.accept([b]))
        repeats = {**answers[0], **answers[1]}
        assert len(repeats) == 1
        [(repeated, handed)] = repeats.items()
        assert {repeated, handed.id} == {a.entry.id, b.entry.id}
        queued = {listed.entry.id for listed in await other.entries()}
        assert queued == {first.entry.id, handed.id}
    finally:
        await other.close()
