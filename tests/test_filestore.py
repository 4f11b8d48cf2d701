"""mqd.queue.file.store: layout, the lock, durable writes, and recovery after a crash."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lockholder import hold_queue_lock

from mqd.errors import QueueLockedError
from mqd.queue.entry import QueueEntry, RcptStatus, RecipientState, new_message_id
from mqd.queue.file.store import DSN_SOURCE, FileStore

SOURCE = "0123456789ab"


def make_entry(entry_id: str | None = None, source: str = SOURCE, **kwargs) -> QueueEntry:
    now = time.time()
    fields = {
        "id": entry_id or new_message_id(),
        "sender": "app@example.com",
        "recipients": [RecipientState("alice@example.net"), RecipientState("bob@example.net")],
        "relay": "main",
        "source": source,
        "created_at": now,
        "next_attempt_at": now,
        "size": 42,
        "spool_name": "1.eml",
        "message_id": "<m@example.com>",
    }
    fields.update(kwargs)
    return QueueEntry(**fields)


@pytest.fixture
async def store(queue_dir: Path) -> AsyncIterator[FileStore]:
    s = FileStore(queue_dir)
    await s.open()
    yield s
    await s.close()


async def reopen(old: FileStore):
    """Close ``old`` (a crash would release the lock too) and open a new store on its dir."""
    await old.close()
    new = FileStore(old.directory)
    return new, await new.open()


# -- open and the lock ---------------------------------------------------------------------------


async def test_open_creates_the_layout(queue_dir: Path) -> None:
    assert not queue_dir.exists()
    s = FileStore(queue_dir)
    recovery = await s.open()
    try:
        for name in ("messages", "state", "failed"):
            assert (queue_dir / name).is_dir(), name
        assert (queue_dir / "lock").read_text().strip() == str(os.getpid())
        key = (queue_dir / "queue-id").read_text().strip()
        assert key == s.queue_key
        assert len(key) == 16 and all(c in "0123456789abcdef" for c in key)
        assert recovery.entries == [] and recovery.unaccepted == {} and recovery.notes == []
    finally:
        await s.close()
    # The queue key is stable across restarts.
    again = FileStore(queue_dir)
    await again.open()
    try:
        assert again.queue_key == key
    finally:
        await again.close()


async def test_a_second_store_on_the_same_dir_is_refused(store: FileStore) -> None:
    other = FileStore(store.directory)
    with pytest.raises(QueueLockedError) as info:
        await other.open()
    message = str(info.value)
    assert str(store.directory) in message
    assert f"pid {os.getpid()}" in message
    # The refused store did not take over the lock file's content.
    assert (store.directory / "lock").read_text().strip() == str(os.getpid())


async def test_the_lock_is_released_on_close(queue_dir: Path) -> None:
    first = FileStore(queue_dir)
    await first.open()
    await first.close()
    second = FileStore(queue_dir)
    await second.open()
    await second.close()


async def test_the_lock_held_by_a_child_process_names_its_pid(queue_dir: Path) -> None:
    with hold_queue_lock(queue_dir) as child:
        s = FileStore(queue_dir)
        with pytest.raises(QueueLockedError) as info:
            await s.open()
        message = str(info.value)
        assert str(queue_dir) in message
        assert f"pid {child.pid}" in message
    # Once the child is gone (killed, not closed cleanly) the lock is free again.
    s = FileStore(queue_dir)
    await s.open()
    await s.close()


# -- writes and the round trip -------------------------------------------------------------------


async def test_add_many_then_recovery_round_trip(store: FileStore) -> None:
    entries = [make_entry(), make_entry(source="fedcba987654"), make_entry(source=DSN_SOURCE)]
    entries[0].recipients[0].status = RcptStatus.DELIVERED
    entries[0].recipients[0].reply = "250 2.0.0 OK"
    entries[0].attempts = 1
    bodies = [f"message {i}\r\n".encode() for i in range(3)]
    await store.add_many(list(zip(entries, bodies, strict=True)))
    for entry, body in zip(entries, bodies, strict=True):
        assert store.body_path(entry).read_bytes() == body
        assert store.state_path(entry.id).is_file()
        assert await store.load_body(entry) == body

    new, recovery = await reopen(store)
    try:
        assert sorted(recovery.entries, key=lambda e: e.id) == sorted(entries, key=lambda e: e.id)
        assert recovery.unaccepted == {}
        assert recovery.notes == []
        for entry, body in zip(entries, bodies, strict=True):
            assert await new.load_body(entry) == body
    finally:
        await new.close()


async def test_add_many_with_a_body_already_in_staging_writes_no_state_file(
    store: FileStore,
) -> None:
    """A claimed body is its own record until the entry first changes: no state file at intake;
    recovery gives the body back to be taken in again."""
    entry = make_entry()
    store.ensure_source_dir(entry.source)
    store.staging_path(entry.source, entry.id).write_bytes(b"claimed")
    await store.add_many([(entry, None)])
    assert not store.state_path(entry.id).exists() and not store.has_state(entry.id)
    new, recovery = await reopen(store)
    try:
        assert recovery.entries == []
        assert recovery.unaccepted == {entry.source: [store.body_path(entry)]}
    finally:
        await new.close()


async def test_an_entry_accepted_without_state_gets_one_when_saved(store: FileStore) -> None:
    entry = make_entry()
    store.ensure_source_dir(entry.source)
    store.staging_path(entry.source, entry.id).write_bytes(b"claimed")
    await store.add_many([(entry, None)])
    entry.attempts = 1
    await store.save(entry)
    assert store.has_state(entry.id)
    await store.remove(entry)
    assert not store.body_path(entry).exists() and not store.state_path(entry.id).exists()


async def test_save_persists_the_new_state(store: FileStore) -> None:
    entry = make_entry()
    await store.add_many([(entry, b"body")])
    entry.attempts = 3
    entry.recipients[1].status = RcptStatus.FAILED
    entry.recipients[1].reply = "550 5.1.1 no such user"
    await store.save(entry)
    new, recovery = await reopen(store)
    try:
        [loaded] = recovery.entries
        assert loaded.attempts == 3
        assert loaded.recipients[1].status is RcptStatus.FAILED
        assert loaded.recipients[1].reply == "550 5.1.1 no such user"
    finally:
        await new.close()


async def test_remove_deletes_body_and_state(store: FileStore) -> None:
    keep, gone = make_entry(), make_entry()
    await store.add_many([(keep, b"keep"), (gone, b"gone")])
    await store.remove(gone)
    assert not store.body_path(gone).exists()
    assert not store.state_path(gone.id).exists()
    await store.remove(gone)  # idempotent
    new, recovery = await reopen(store)
    try:
        assert recovery.entries == [keep]
        assert recovery.notes == []
    finally:
        await new.close()


async def test_fail_writes_the_reason_and_moves_the_body(store: FileStore) -> None:
    entry = make_entry()
    await store.add_many([(entry, b"the message")])
    reason = {"stage": "delivery", "reason": "<bob@example.net>: 550 5.1.1 no such user"}
    target = await store.fail(entry, reason)
    assert target == store.failed_dir / f"{entry.id}.eml"
    assert target.read_bytes() == b"the message"
    record = json.loads((store.failed_dir / f"{entry.id}.json").read_text(encoding="utf-8"))
    assert record["id"] == entry.id
    assert record["reason"] == reason["reason"]
    assert record["stage"] == "delivery"
    assert isinstance(record["failed_at"], float)
    assert not store.body_path(entry).exists()
    assert not store.state_path(entry.id).exists()
    new, recovery = await reopen(store)
    try:
        assert recovery.entries == [] and recovery.unaccepted == {}
        assert (new.failed_dir / f"{entry.id}.eml").exists()  # failed/ is left alone
    finally:
        await new.close()


async def test_reject_moves_a_claimed_file_to_failed(store: FileStore) -> None:
    store.ensure_source_dir(SOURCE)
    claimed = store.staging_path(SOURCE, "rejected1")
    claimed.write_bytes(b"spam")
    target = await store.reject("rejected1", claimed, {"stage": "policy", "reason": "not allowed"})
    assert target.read_bytes() == b"spam"
    assert not claimed.exists()
    record = json.loads((store.failed_dir / "rejected1.json").read_text())
    assert record["reason"] == "not allowed"


# -- recovery ------------------------------------------------------------------------------------


async def test_recovery_lists_a_body_without_state_as_unaccepted(store: FileStore) -> None:
    accepted = make_entry()
    await store.add_many([(accepted, b"accepted")])
    store.ensure_source_dir(SOURCE)
    orphan = store.staging_path(SOURCE, "0000orphan")
    orphan.write_bytes(b"claimed, never accepted")
    new, recovery = await reopen(store)
    try:
        assert recovery.entries == [accepted]
        assert recovery.unaccepted == {SOURCE: [orphan]}
        assert orphan.read_bytes() == b"claimed, never accepted"  # kept, to be taken in again
    finally:
        await new.close()


async def test_recovery_cleans_up_a_state_whose_body_is_gone(store: FileStore) -> None:
    entry = make_entry()
    await store.add_many([(entry, b"body")])
    store.body_path(entry).unlink()  # a crash after the commit point of remove()
    new, recovery = await reopen(store)
    try:
        assert recovery.entries == []
        assert not new.state_path(entry.id).exists()
        assert len(recovery.notes) == 1
        assert entry.id in recovery.notes[0]
        assert "finished" in recovery.notes[0]
    finally:
        await new.close()


async def test_recovery_notes_an_entry_half_moved_to_failed(store: FileStore) -> None:
    entry = make_entry()
    await store.add_many([(entry, b"body")])
    os.replace(store.body_path(entry), store.failed_dir / f"{entry.id}.eml")  # crash mid-fail()
    new, recovery = await reopen(store)
    try:
        assert recovery.entries == []
        assert not new.state_path(entry.id).exists()
        assert recovery.notes == [f"{entry.id}: finished moving to failed/"]
    finally:
        await new.close()


async def test_recovery_deletes_an_orphan_dsn_body(store: FileStore) -> None:
    store.ensure_source_dir(DSN_SOURCE)
    orphan = store.staging_path(DSN_SOURCE, "0000dsnb0")
    orphan.write_bytes(b"a bounce whose entry was never written")
    new, recovery = await reopen(store)
    try:
        assert not orphan.exists()
        assert recovery.unaccepted == {}
        assert recovery.entries == []
    finally:
        await new.close()


async def test_recovery_deletes_interrupted_temp_files(store: FileStore) -> None:
    entry = make_entry()
    await store.add_many([(entry, b"body")])
    stray_state = store.state_dir / f".{entry.id}.json.123.tmp"
    stray_state.write_bytes(b"{half")
    stray_body = store.messages_dir / SOURCE / ".x.eml.123.tmp"
    stray_body.write_bytes(b"half")
    new, recovery = await reopen(store)
    try:
        assert not stray_state.exists() and not stray_body.exists()
        assert recovery.entries == [entry]
        assert recovery.unaccepted == {}
    finally:
        await new.close()


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[1, 2]", b'{"version": 1, "id": "x"}', b'{"version": 99}'],
    ids=["zero-length", "corrupt", "not-an-object", "missing-fields", "future-version"],
)
async def test_recovery_quarantines_an_unreadable_state_file(
    store: FileStore, content: bytes
) -> None:
    good = make_entry()
    await store.add_many([(good, b"good")])
    bad_id = "0000badstate"
    store.ensure_source_dir(SOURCE)
    body = store.staging_path(SOURCE, bad_id)
    body.write_bytes(b"the body of the bad entry")
    store.state_path(bad_id).write_bytes(content)

    new, recovery = await reopen(store)
    try:
        assert recovery.entries == [good]
        assert not new.state_path(bad_id).exists()
        quarantined = new.quarantine_dir / f"{bad_id}.json"
        assert quarantined.read_bytes() == content
        reason = (new.quarantine_dir / f"{bad_id}.reason.txt").read_text(encoding="utf-8")
        assert "unreadable state file" in reason
        assert any(bad_id in note and "quarantine" in note for note in recovery.notes)
        # Its body is not lost: it is offered to intake again.
        assert recovery.unaccepted == {SOURCE: [body]}
        assert body.read_bytes() == b"the body of the bad entry"
    finally:
        await new.close()
