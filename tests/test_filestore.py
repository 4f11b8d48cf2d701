"""mqd.queue.file: what only a directory of files promises, on real files: its layout, its lock,
its node name, claimed files taken over by rename, when state files are written, the failed
folder's files, and what recovery finds after a crash (the store abandoned without ``close``, as
tests/queue_stores.py does).

Left to the contract suite (tests/test_queue_contract.py runs it against this store too), and so
dropped from here: that queued entries and their bodies survive a crash at all, beside others
completed (test_after_a_crash_every_entry_is_back_and_leases_are_gone,
test_complete_removes_the_entry), and that a second store is refused at all (here: what the
refusal says). Every other check of the old file is kept, in the new API's terms: ``add_many``,
``remove``, ``reject`` and ``Recovery.unaccepted`` became ``accept``, ``complete``, ``refuse``
and bodies rebuilt through ``rebuild``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from lockholder import hold_queue_lock
from queue_stores import body_for, new_entry, rebuild

import mqd.queue.file.disk
import mqd.queue.file.failed
import mqd.queue.file.keys
import mqd.queue.keys
from mqd.clock import ManualClock
from mqd.errors import QueueLockedError
from mqd.queue.entry import DSN_SOURCE, QueueEntry, RcptStatus, RecipientState, id_time
from mqd.queue.failed import FailedRecipient, FailureRecord
from mqd.queue.file.rebuild import Unread
from mqd.queue.file.store import FileStore
from mqd.queue.keys import PRUNE_EVERY, KeyIndex
from mqd.queue.store import AcceptError, Bounce, Handed, HandoverKey, Incoming, Refused
from mqd.testing import wait_until

SOURCE = "spoolkey"  # new_entry's


class Node:
    """One queue directory and the store open on it; ``restart`` is a crash and a new start."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.clock = ManualClock()
        #: Every body the stores asked to have rebuilt.
        self.rebuilt: list[Unread] = []
        self.store: FileStore | None = None

    def make(self) -> FileStore:
        def seen(unread: Unread) -> QueueEntry | FailureRecord:
            self.rebuilt.append(unread)
            return rebuild(unread)

        return FileStore(self.directory, rebuild=seen, clock=self.clock)

    async def open(self) -> list[str]:
        self.store = self.make()
        return await self.store.open()

    async def restart(self) -> list[str]:
        """The store dies without a word (its lock goes with the process); a new one opens."""
        assert self.store is not None
        if self.store._reader is not None:
            self.store._reader.cancel()
        self.store.layout.unlock()
        return await self.open()

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()


@pytest.fixture
async def node(queue_dir: Path) -> AsyncIterator[Node]:
    node = Node(queue_dir)
    await node.open()
    yield node
    await node.close()


@pytest.fixture
def store(node: Node) -> FileStore:
    assert node.store is not None
    return node.store


@pytest.fixture
def clock(node: Node) -> ManualClock:
    return node.clock


@pytest.fixture
def claims(tmp_path: Path) -> Path:
    """Intake's claim area (on the queue's filesystem)."""
    path = tmp_path / "claims"
    path.mkdir()
    return path


def claimed(claims: Path, entry: QueueEntry, body: bytes | None = None) -> Incoming:
    path = claims / f"{entry.id}.eml"
    data = body_for(entry) if body is None else body
    path.write_bytes(data)
    return Incoming(entry, data, file=str(path))


def state_file(store: FileStore, entry_id: str) -> Path:
    return store.layout.state_path(entry_id)


def body_file(store: FileStore, entry: QueueEntry) -> Path:
    where = store.where(entry)
    assert where is not None
    return Path(where)


@pytest.fixture
def exdev(monkeypatch: pytest.MonkeyPatch, queue_dir: Path) -> None:
    """Renames and replaces into the queue directory fail with EXDEV: the claim area is on
    another filesystem (temp files renamed inside the queue directory still work)."""
    inside = queue_dir.resolve()
    real_rename, real_replace = os.rename, os.replace

    def across(real):
        def move(src, dst, *args, **kwargs):
            if Path(os.path.abspath(dst)).resolve().is_relative_to(inside) and not Path(
                os.path.abspath(src)
            ).resolve().is_relative_to(inside):
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
            return real(src, dst, *args, **kwargs)

        return move

    monkeypatch.setattr(mqd.queue.file.disk.os, "rename", across(real_rename))
    monkeypatch.setattr(mqd.queue.file.failed.os, "replace", across(real_replace))


# -- open and the lock ---------------------------------------------------------------------------


async def test_open_creates_the_layout_and_a_stable_node_name(queue_dir: Path) -> None:
    assert not queue_dir.exists()
    node = Node(queue_dir)
    assert await node.open() == []
    assert node.store is not None
    for name in ("messages", "state", "failed"):
        assert (queue_dir / name).is_dir(), name
    assert (queue_dir / "lock").read_text().strip() == str(os.getpid())
    key = (queue_dir / "queue-id").read_text().strip()
    assert node.store.node == key
    assert len(key) == 16 and all(c in "0123456789abcdef" for c in key)
    await node.close()
    assert await node.open() == []  # after a clean stop
    assert node.store.node == key
    await node.restart()  # and after a crash
    assert node.store.node == key
    await node.close()


async def test_a_second_store_is_refused_naming_the_directory_and_the_pid(
    node: Node, store: FileStore
) -> None:
    with pytest.raises(QueueLockedError) as info:
        await node.make().open()
    message = str(info.value)
    assert str(store.directory) in message
    assert f"pid {os.getpid()}" in message
    # The refused store did not take over the lock file's content.
    assert (store.directory / "lock").read_text().strip() == str(os.getpid())


async def test_the_lock_is_released_on_close(queue_dir: Path) -> None:
    node = Node(queue_dir)
    await node.open()
    await node.close()
    second = node.make()
    await second.open()
    await second.close()


async def test_a_lock_held_by_a_child_process_names_its_pid(queue_dir: Path) -> None:
    node = Node(queue_dir)
    with hold_queue_lock(queue_dir) as child:
        with pytest.raises(QueueLockedError) as info:
            await node.make().open()
        message = str(info.value)
        assert str(queue_dir) in message
        assert f"pid {child.pid}" in message
    # Once the child is gone (killed, not closed cleanly) the lock is free again.
    await node.open()
    await node.close()


# -- accepting -----------------------------------------------------------------------------------


async def test_accept_takes_a_claimed_file_over_by_rename(
    store: FileStore, clock: ManualClock, claims: Path
) -> None:
    entry = new_entry(clock)
    incoming = claimed(claims, entry)
    assert incoming.file is not None
    inode = os.stat(incoming.file).st_ino
    await store.accept([incoming])
    assert not Path(incoming.file).exists()
    assert os.stat(body_file(store, entry)).st_ino == inode  # the same file: no copy
    assert body_file(store, entry) == store.directory / "messages" / SOURCE / f"{entry.id}.eml"
    assert body_file(store, entry).read_bytes() == incoming.body


async def test_accept_writes_the_bytes_of_a_file_on_another_filesystem(
    store: FileStore, clock: ManualClock, claims: Path, exdev: None
) -> None:
    entry = new_entry(clock)
    incoming = claimed(claims, entry)
    assert incoming.file is not None
    await store.accept([incoming])
    assert body_file(store, entry).read_bytes() == incoming.body
    assert os.stat(body_file(store, entry)).st_ino != os.stat(incoming.file).st_ino
    assert Path(incoming.file).exists()  # left for intake to remove
    [lease] = await store.lease(10)
    assert await store.body(lease.entry) == incoming.body


async def test_a_write_failing_midway_names_the_entries_accepted(
    store: FileStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, broken, third = (new_entry(clock) for _ in range(3))
    real = mqd.queue.file.disk.atomic_write

    def full(path: Path, *args: object, **kwargs: object) -> None:
        if broken.id in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mqd.queue.file.disk, "atomic_write", full)
    with pytest.raises(AcceptError) as info:
        await store.accept([Incoming(e, body_for(e)) for e in (first, broken, third)])
    assert info.value.accepted == [first.id, third.id]
    assert str(store.directory) in str(info.value)
    assert {item.entry.id for item in await store.entries()} == {first.id, third.id}
    assert not body_file(store, broken).exists()


async def test_a_rename_failing_midway_names_the_entries_accepted(
    store: FileStore, clock: ManualClock, claims: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, broken, third = (new_entry(clock) for _ in range(3))
    batch = [claimed(claims, e) for e in (first, broken, third)]
    real = os.rename

    def rename(src, dst, *args, **kwargs):
        if broken.id in str(src):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(mqd.queue.file.disk.os, "rename", rename)
    with pytest.raises(AcceptError) as info:
        await store.accept(batch)
    assert info.value.accepted == [first.id]
    assert [item.entry.id for item in await store.entries()] == [first.id]
    # The others stay with intake, in its claim area.
    assert all(Path(str(item.file)).exists() for item in batch[1:])


async def test_an_accepted_body_gets_a_state_file_at_its_first_save(
    node: Node, store: FileStore, clock: ManualClock, claims: Path
) -> None:
    renamed, written = new_entry(clock), new_entry(clock)
    await store.accept([claimed(claims, renamed), Incoming(written, body_for(written))])
    assert list(store.layout.state_dir.iterdir()) == []  # the bodies are the whole record
    leases = {lease.entry.id: lease for lease in await store.lease(10)}
    entry = leases[renamed.id].entry
    entry.attempts = 1
    entry.next_attempt_at = clock.time() + 60
    await store.save(leases[renamed.id], entry)
    assert QueueEntry.from_json(state_file(store, renamed.id).read_bytes()) == entry
    assert not state_file(store, written.id).exists()
    await store.complete(leases[written.id], leases[written.id].entry)
    clock.advance(60)
    [again] = await store.lease(10)
    await store.complete(again, again.entry)
    for gone in (renamed, written):
        assert not body_file(store, gone).exists() and not state_file(store, gone.id).exists()
    await store.disk.remove(entry, has_state=True)  # a removal that finds nothing is harmless
    assert await node.restart() == []  # nothing left behind to clean up


async def test_a_saved_state_comes_back_whole_after_a_crash(
    node: Node, store: FileStore, clock: ManualClock
) -> None:
    one, other = new_entry(clock), new_entry(clock)
    other.source = "otherspool"
    bodies = {one.id: b"message one\r\n", other.id: b"message two\r\n"}
    await store.accept([Incoming(e, bodies[e.id]) for e in (one, other)])
    saved = {}
    for lease in await store.lease(10):
        entry = lease.entry
        entry.attempts = 3
        entry.recipients[0].status = RcptStatus.DELIVERED
        entry.recipients[0].reply = "250 2.0.0 OK"
        entry.recipients[1].status = RcptStatus.FAILED
        entry.recipients[1].reply = "550 5.1.1 no such user"
        entry.extra = {"provider": {"id": "x-1"}}
        entry.next_attempt_at = clock.time() + 600
        await store.save(lease, entry)
        saved[entry.id] = QueueEntry.from_json(entry.to_json())
    assert await node.restart() == []
    assert node.store is not None
    back = {item.entry.id: item.entry for item in await node.store.entries()}
    assert back == saved
    for entry in back.values():
        assert await node.store.body(entry) == bodies[entry.id]
    assert node.rebuilt == []  # read from their state files


# -- bounces -------------------------------------------------------------------------------------


def failed_first_recipient(lease_entry: QueueEntry) -> tuple[QueueEntry, Bounce]:
    """``lease_entry`` with its first recipient failed and bounced, and the bounce."""
    entry = lease_entry
    entry.recipients[0].status = RcptStatus.FAILED
    entry.recipients[0].reply = "550 5.1.1 no such user"
    entry.recipients[0].notified = True
    entry.bounces = 1
    dsn = QueueEntry(
        id=f"{entry.id}b0",
        sender="",
        recipients=[RecipientState(entry.sender)],
        relay="r1",
        source=DSN_SOURCE,
        created_at=entry.created_at,
        next_attempt_at=entry.created_at,
        is_report=True,
    )
    return entry, Bounce(dsn, b"Subject: undeliverable\r\n\r\nsorry\r\n")


@pytest.mark.parametrize("outcome", ["save", "fail"])
async def test_a_bounce_is_durable_before_its_entry_and_due_only_after(
    store: FileStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    await store.accept([Incoming(e := new_entry(clock), body_for(e))])
    [lease] = await store.lease(10)
    entry, bounce = failed_first_recipient(lease.entry)
    entry.next_attempt_at = clock.time() + 600
    dsn = bounce.entry
    seen: list[tuple[str, bool, bytes, dict[str, str], float | None]] = []
    real_save = store.disk.save

    async def save(saving: QueueEntry) -> None:
        # When the entry's state is written, the bounce is on disk with its state, not due.
        dsn_state = state_file(store, dsn.id)
        seen.append(
            (
                saving.id,
                dsn_state.exists() and QueueEntry.from_json(dsn_state.read_bytes()) == dsn,
                body_file(store, dsn).read_bytes(),
                await store.find([dsn.id]),
                await store.next_due(),
            )
        )
        await real_save(saving)

    monkeypatch.setattr(store.disk, "save", save)
    if outcome == "save":
        await store.save(lease, entry, bounce=bounce)
    else:
        await store.fail(lease, entry, FailureRecord("delivery", "550"), bounce=bounce)
    assert seen == [(entry.id, True, bounce.body, {}, None)]
    if outcome == "fail":
        [failed] = await store.failed.find([entry.id])
        assert failed.reason == "550"
    [due] = await store.lease(10)
    assert due.entry.id == dsn.id
    assert await store.body(due.entry) == bounce.body


async def test_a_crash_after_the_bounce_is_written_notes_it_was_queued(
    node: Node, store: FileStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.accept([Incoming(e := new_entry(clock), body_for(e))])
    [lease] = await store.lease(10)
    lease.entry.recipients[0].status = RcptStatus.FAILED
    await store.checkpoint(lease, lease.entry)  # the failure is durable, not yet bounced
    entry, bounce = failed_first_recipient(lease.entry)
    writing = asyncio.Event()

    async def never(saving: QueueEntry) -> None:  # the crash comes before the entry's write
        writing.set()
        await asyncio.get_running_loop().create_future()

    monkeypatch.setattr(store.disk, "save", never)
    saving = asyncio.ensure_future(store.save(lease, entry, bounce=bounce))
    await asyncio.wait_for(writing.wait(), 10)
    notes = await node.restart()
    saving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await saving
    assert notes == [f"{entry.id}'s bounce was already queued"]
    assert node.store is not None
    back = {item.entry.id: item.entry for item in await node.store.entries()}
    assert set(back) == {entry.id, bounce.entry.id}
    assert back[entry.id].recipients[0].notified and back[entry.id].bounces == 1
    leased = {lease.entry.id for lease in await node.store.lease(10)}
    assert leased == {entry.id, bounce.entry.id}


# -- the failed folder ---------------------------------------------------------------------------


async def test_fail_moves_the_body_with_its_record_and_drops_the_state(
    node: Node, store: FileStore, clock: ManualClock, claims: Path
) -> None:
    entry = new_entry(clock)
    await store.accept([claimed(claims, entry)])
    inode = os.stat(body_file(store, entry)).st_ino
    [lease] = await store.lease(10)
    await store.checkpoint(lease, lease.entry)
    assert state_file(store, entry.id).exists()
    clock.advance(5)
    reason = "<bob@example.net>: 550 5.1.1 no such user"
    record = FailureRecord(
        "delivery",
        reason,
        sender=entry.sender,
        recipients=(FailedRecipient("bob@example.net", "failed", "550 5.1.1 no such user"),),
        attempts=1,
    )
    await store.fail(lease, lease.entry, record)
    failed_dir = store.directory / "failed"
    moved = failed_dir / f"{entry.id}.eml"
    assert os.stat(moved).st_ino == inode and moved.read_bytes() == body_for(entry)
    written = json.loads((failed_dir / f"{entry.id}.json").read_text(encoding="utf-8"))
    assert written["id"] == entry.id and written["stage"] == "delivery"
    assert written["reason"] == reason and written["attempts"] == 1
    assert written["recipients"][0]["reply"] == "550 5.1.1 no such user"
    assert isinstance(written["failed_at"], float)
    assert not body_file(store, entry).exists() and not state_file(store, entry.id).exists()
    assert await node.restart() == []
    assert node.store is not None
    assert await node.store.entries() == [] and node.rebuilt == []
    assert moved.read_bytes() == body_for(entry)  # failed/ is left alone


POLICY = FailureRecord("policy", "sender evil@example.org is not allowed", sender="x")


async def test_refuse_moves_a_claimed_file_in(store: FileStore, claims: Path) -> None:
    file = claims / "r1.eml"
    file.write_bytes(b"spam")
    inode = file.stat().st_ino
    await store.refuse([Refused("r1", POLICY, b"spam", str(file))])
    kept = store.directory / "failed" / "r1.eml"
    assert not file.exists() and kept.stat().st_ino == inode
    record = json.loads((store.directory / "failed" / "r1.json").read_text())
    assert record["id"] == "r1" and record["reason"] == POLICY.reason and "left_at" not in record


async def test_refuse_writes_the_bytes_of_a_file_on_another_filesystem(
    store: FileStore, claims: Path, exdev: None
) -> None:
    file = claims / "r2.eml"
    file.write_bytes(b"spam")
    await store.refuse([Refused("r2", POLICY, b"spam", str(file))])
    assert (store.directory / "failed" / "r2.eml").read_bytes() == b"spam"
    assert not file.exists()
    [message] = await store.failed.find(["r2"])
    assert await store.failed.read(message) == b"spam"


async def test_refuse_records_where_an_odd_file_on_another_filesystem_was_left(
    store: FileStore, claims: Path, exdev: None
) -> None:
    file = claims / "r3.eml"
    os.mkfifo(file)  # claimed, never read: no bytes to write
    await store.refuse([Refused("r3", POLICY, None, str(file))])
    assert file.is_fifo()
    assert not (store.directory / "failed" / "r3.eml").exists()
    record = json.loads((store.directory / "failed" / "r3.json").read_text())
    assert record["left_at"] == str(file) and record["reason"] == POLICY.reason
    [message] = await store.failed.find(["r3"])
    assert message.reason == POLICY.reason and message.location == str(file)


# -- recovery after a crash ----------------------------------------------------------------------


async def test_a_body_without_state_comes_back_through_rebuild_with_its_age(
    node: Node, store: FileStore, clock: ManualClock, claims: Path
) -> None:
    entry = new_entry(clock)
    incoming = claimed(claims, entry)
    await store.accept([incoming])
    notes = await node.restart()
    assert notes == [
        "1 message(s) accepted and never attempted: read from their bodies as deliveries make room"
    ]
    assert node.store is not None and node.rebuilt == []  # not read at start-up
    counts = await node.store.counts()
    assert counts.not_read == 1 and counts.unread_by_source == {SOURCE: 1}
    assert counts.oldest == id_time(entry.id)  # its age, from its id
    [lease] = await node.store.lease(10)
    assert node.rebuilt == [Unread(SOURCE, entry.id, incoming.body)]
    assert lease.entry.id == entry.id
    assert [r.address for r in lease.entry.recipients] == [r.address for r in entry.recipients]
    assert await node.store.body(lease.entry) == incoming.body


@pytest.mark.parametrize("where", ["finished", "failed"])
async def test_a_state_file_whose_body_is_gone_is_cleaned_up(
    node: Node, store: FileStore, clock: ManualClock, where: str
) -> None:
    entry = new_entry(clock)
    await store.accept([Incoming(entry, body_for(entry))])
    [lease] = await store.lease(10)
    await store.checkpoint(lease, lease.entry)
    if where == "finished":  # a crash after the commit point of a removal
        body_file(store, entry).unlink()
    else:  # a crash in the middle of a fail
        os.replace(body_file(store, entry), store.directory / "failed" / f"{entry.id}.eml")
    notes = await node.restart()
    assert node.store is not None
    assert await node.store.entries() == []
    assert not state_file(node.store, entry.id).exists()
    if where == "finished":
        assert notes == [f"{entry.id}: was finished before the restart"]
    else:
        assert notes == [f"{entry.id}: finished moving to failed/"]


async def test_an_orphan_bounce_body_is_deleted(node: Node, store: FileStore) -> None:
    orphan = store.directory / "messages" / DSN_SOURCE / "0000dsnb0.eml"
    orphan.parent.mkdir()
    orphan.write_bytes(b"a bounce whose entry was never written")
    assert await node.restart() == []
    assert node.store is not None
    assert not orphan.exists()
    assert await node.store.entries() == [] and node.rebuilt == []


async def test_interrupted_temp_files_are_deleted(
    node: Node, store: FileStore, clock: ManualClock
) -> None:
    entry = new_entry(clock)
    await store.accept([Incoming(entry, body_for(entry))])
    [lease] = await store.lease(10)
    await store.checkpoint(lease, lease.entry)
    stray_state = store.layout.state_dir / f".{entry.id}.json.123.tmp"
    stray_state.write_bytes(b"{half")
    stray_body = store.directory / "messages" / SOURCE / ".x.eml.123.tmp"
    stray_body.write_bytes(b"half")
    assert await node.restart() == []
    assert node.store is not None
    assert not stray_state.exists() and not stray_body.exists()
    assert [item.entry for item in await node.store.entries()] == [lease.entry]
    assert node.rebuilt == []


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[1, 2]", b'{"version": 1, "id": "x"}', b'{"version": 99}'],
    ids=["zero-length", "corrupt", "not-an-object", "missing-fields", "future-version"],
)
async def test_an_unreadable_state_file_is_quarantined(
    node: Node, store: FileStore, clock: ManualClock, content: bytes
) -> None:
    good, bad = new_entry(clock), new_entry(clock)
    await store.accept([Incoming(e, body_for(e)) for e in (good, bad)])
    for lease in await store.lease(10):
        await store.checkpoint(lease, lease.entry)
    state_file(store, bad.id).write_bytes(content)

    notes = await node.restart()
    assert node.store is not None
    assert not state_file(node.store, bad.id).exists()
    quarantine = store.directory / "quarantine"
    assert (quarantine / f"{bad.id}.json").read_bytes() == content
    reason = (quarantine / f"{bad.id}.reason.txt").read_text(encoding="utf-8")
    assert "unreadable state file" in reason
    assert any(bad.id in note and "quarantine" in note for note in notes)
    # Its body is not lost: it comes back as a message never attempted.
    assert body_file(node.store, bad).read_bytes() == body_for(bad)
    listed = {item.entry.id for item in await node.store.entries()}
    assert listed == {good.id, bad.id}
    leased = await node.store.lease(10)
    assert {lease.entry.id for lease in leased} == {good.id, bad.id}
    assert bad.id in {unread.entry_id for unread in node.rebuilt}
    assert good.id not in {unread.entry_id for unread in node.rebuilt}


# -- hand-over keys (mqd.queue.file.keys) --------------------------------------------------------


def keyed(clock: ManualClock, key: str, keep: float = 3600.0) -> Incoming:
    entry = new_entry(clock)
    return Incoming(entry, body_for(entry), key=HandoverKey("s", key, clock.time() + keep))


async def test_a_crash_mid_accept_keeps_a_key_exactly_when_its_entry_was_queued(node, store, clock):
    """A key is journalled before its entry and confirmed after it: a crash in between keeps
    the key of an entry whose body made it, and forgets one whose body did not."""
    written, lost = keyed(clock, "written"), keyed(clock, "lost")

    async def crash_after_the_first(batch: Sequence[Incoming]) -> None:
        await store._accept(batch[:1])
        raise RuntimeError("the process dies here")

    with pytest.raises(RuntimeError):
        await store.keys.accept([written, lost], crash_after_the_first)
    notes = await node.restart()
    assert any("1 hand-over key(s)" in note for note in notes)
    store = node.store
    assert store is not None
    again, retried = keyed(clock, "written"), keyed(clock, "lost")
    repeats = await store.accept([again, retried])
    assert repeats == {again.entry.id: Handed(written.entry.id, "", replayed=True)}
    queued = {listed.entry.id for listed in await store.entries()}
    assert queued == {written.entry.id, retried.entry.id}


async def test_keyed_batches_are_written_at_once_unless_they_share_a_key(store, clock):
    """A second keyed batch is written while the first is (no wait for its disk), but one that
    holds a key of a batch under way waits for its outcome, and is answered with its entry."""
    gates: list[asyncio.Event] = []

    async def held(batch: Sequence[Incoming]) -> None:
        if not batch:  # (all repeats: nothing to write)
            return
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()
        await store._accept(batch)

    first = asyncio.ensure_future(store.keys.accept([keyed(clock, "a")], held))
    await wait_until(lambda: len(gates) == 1, "the first batch under way")
    second = asyncio.ensure_future(store.keys.accept([keyed(clock, "b")], held))
    await wait_until(lambda: len(gates) == 2, "the second beside it")
    again = keyed(clock, "a")
    third = asyncio.ensure_future(store.keys.accept([again], held))
    gates[1].set()
    assert await second == {}
    assert not third.done() and len(gates) == 2  # it waits for the first, which holds "a"
    gates[0].set()
    assert await first == {}
    repeats = await third
    assert list(repeats) == [again.entry.id] and repeats[again.entry.id].replayed


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names an fd through /proc")
async def test_a_keys_confirmation_is_durable_before_its_entry_leaves_the_queue(
    store, clock, monkeypatch
):
    """The confirming line is written at accept and fsynced only once an entry is to leave the
    queue, before its body does (until then the queued entry makes its record count)."""
    events: list[tuple[str, str]] = []
    real_fsync, real_unlink = os.fsync, os.unlink

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def unlink(path: str | os.PathLike[str], **kwargs: object) -> None:
        events.append(("unlink", os.fspath(path)))
        real_unlink(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    journal = str(store.layout.keys_path)
    item = keyed(clock, "order-9")
    assert await store.accept([item]) == {}
    assert f"= {item.entry.id}" in store.layout.keys_path.read_text()
    assert events.count(("fsync", journal)) == 1  # the record, before the body
    [lease] = await store.lease(1)
    await store.complete(lease, lease.entry)
    body = store.layout.body_path(item.entry.source, item.entry.id)
    assert events.count(("fsync", journal)) == 2
    last_sync = max(n for n, event in enumerate(events) if event == ("fsync", journal))
    assert last_sync < events.index(("unlink", body))
    await store.accept([keyed(clock, "order-10")])
    [lease] = await store.lease(1)
    await store.fail(lease, lease.entry, FailureRecord("test", "refused"))
    assert events.count(("fsync", journal)) == 4  # a record, then its confirmation at the fail


async def test_the_key_journal_is_rewritten_without_expired_keys(node, store, clock, monkeypatch):
    monkeypatch.setattr(mqd.queue.file.keys, "COMPACT_FLOOR", 4)
    await store.accept([keyed(clock, f"old-{n}", keep=60) for n in range(6)])
    clock.advance(PRUNE_EVERY + 1)
    await store.accept([keyed(clock, "new")])
    text = store.layout.keys_path.read_text()
    assert "old-" not in text and "new" in text
    await node.restart()
    assert node.store is not None
    assert len(node.store.keys.index) == 1


async def test_an_older_mqds_key_files_are_carried_over_then_removed(node, store, clock):
    """The submit API's blobs and the mailboxes' id files of the mqd before hand-over keys."""
    directory = store.directory
    lost = keyed(clock, "lost")

    async def crash(batch: Sequence[Incoming]) -> None:
        raise RuntimeError("the process dies before the entry is written")

    with pytest.raises(RuntimeError):
        await store.keys.accept([lost], crash)
    record = [clock.time() + 600, "fp", "first-id", "<m@x>"]
    (directory / "submit-keys.abc.3.json").write_text(json.dumps({"k 1": record}))
    (directory / "mailbox").mkdir()
    expires = clock.time() + 600
    (directory / "mailbox" / "q1.ids").write_text(f"{expires:.0f} order%2F17\n1 gone\n")
    notes = await node.restart()
    assert any("2 hand-over key(s) of an older mqd" in note for note in notes)
    assert not list(directory.glob("submit-keys.*")) and not list(directory.glob("mailbox/*"))
    for _ in range(2):  # the same after another start, from the journal alone
        assert node.store is not None
        submit = keyed(clock, "k 1")
        submit = Incoming(submit.entry, submit.body, key=HandoverKey("submit.abc", "k 1", 1e12))
        mailbox = keyed(clock, "order/17")
        mailbox = Incoming(
            mailbox.entry, mailbox.body, key=HandoverKey("mailbox.q1", "order/17", 1e12)
        )
        repeats = await node.store.accept([submit, mailbox])
        assert repeats[submit.entry.id] == Handed("first-id", "fp <m@x>", replayed=True)
        assert repeats[mailbox.entry.id].replayed
        await node.restart()
    assert node.store is not None
    retried = keyed(clock, "lost")
    assert await node.store.accept([retried]) == {}, "the crashed record stays unconfirmed"


def test_a_key_index_keeps_at_most_max_keys_a_scope_the_oldest_forgotten(monkeypatch):
    monkeypatch.setattr(mqd.queue.keys, "MAX_KEYS", 3)
    index = KeyIndex()
    for n in range(5):
        index.put(HandoverKey("busy", f"k{n}", 100.0 + n), f"id{n}")
    index.put(HandoverKey("quiet", "k0", 100.0), "idq")
    assert index.prune(0.0)
    assert sorted(key for (scope, key), _ in index if scope == "busy") == ["k2", "k3", "k4"]
    assert index.get(HandoverKey("quiet", "k0", 0), 0.0) is not None
