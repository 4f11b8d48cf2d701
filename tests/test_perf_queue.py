"""The file store's speed-ups keep its guarantees: grouped saves are each durable and share one
directory fsync, grouped removals and reads serve each caller, a failure stays with its own
caller, a body kept from intake is the body on disk, and the hand-built state JSON is what
dataclasses.asdict gave.

Nothing here is left to the contract suite (tests/test_queue_contract.py): it knows no fsync, no
worker-thread hop and no kept body. The saves, reads and removals are asked for through the
store's own methods (``save``, ``body``, ``complete``); hops are counted where ``Disk`` hands
its groups to ``mqd.queue.file.io.each``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from queue_stores import body_for, new_entry, rebuild

import mqd.fsutil
import mqd.queue.file.disk
from mqd.clock import ManualClock
from mqd.queue.entry import STATE_VERSION, QueueEntry, RcptStatus, RecipientState, new_message_id
from mqd.queue.failed import FailureRecord
from mqd.queue.file.io import KEEP_BODIES_BYTES, KEEP_BODY_MAX, BodyCache
from mqd.queue.file.store import FileStore
from mqd.queue.store import Incoming, Lease


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def store(queue_dir: Path, clock: ManualClock) -> AsyncIterator[FileStore]:
    store = FileStore(queue_dir, rebuild=rebuild, clock=clock)
    await store.open()
    yield store
    await store.close()


async def leased(store: FileStore, clock: ManualClock, bodies: list[bytes]) -> list[Lease]:
    """Accept a message per body and lease them all (in the order of ``bodies``)."""
    entries = [new_entry(clock) for _ in bodies]
    for entry, body in zip(entries, bodies, strict=True):
        entry.size = len(body)
    await store.accept([Incoming(e, b) for e, b in zip(entries, bodies, strict=True)])
    leases = {lease.entry.id: lease for lease in await store.lease(len(entries))}
    return [leases[entry.id] for entry in entries]


def body_path(store: FileStore, entry: QueueEntry) -> Path:
    return Path(store.layout.body_path(entry.source, entry.id))


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Callable[..., Any], int]]:
    """Each group ``Disk`` runs in a worker thread: (its operation, how many items)."""
    seen: list[tuple[Callable[..., Any], int]] = []
    real = mqd.queue.file.disk.each

    def each(operation: Callable[..., Any], items: list[Any]) -> list[Any]:
        seen.append((operation, len(items)))
        return real(operation, items)

    monkeypatch.setattr(mqd.queue.file.disk, "each", each)
    return seen


def test_state_json_is_what_asdict_gave() -> None:
    entry = new_entry(ManualClock())
    entry.recipients = [
        RecipientState("a@example.net", RcptStatus.DELIVERED, "250 ok", "2.0.0", "mx", "r1"),
        RecipientState("b@example.net", RcptStatus.FAILED, "550 no", "5.1.1", notified=True),
    ]
    entry.route = ["r1", "r2"]
    entry.history = [{"at": 1.5, "relay": "r1", "reply": "250 ok"}]
    entry.extra = {"provider": {"id": "x-1", "tags": ["a", "b"]}}
    entry.held = True
    entry.message_id = "<m@example.com>"
    entry.last_reply = "550 no"
    expected = {**dataclasses.asdict(entry), "version": STATE_VERSION}
    assert json.loads(entry.to_json()) == expected
    assert list(json.loads(entry.to_json())) == list(expected)  # same key order
    assert QueueEntry.from_json(entry.to_json()) == entry


# -- saves ---------------------------------------------------------------------------------------


async def test_concurrent_saves_share_one_directory_fsync(
    store: FileStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases = await leased(store, clock, [b"x\r\n"] * 20)
    synced: list[list[Any]] = []
    real = mqd.fsutil.fsync_dirs

    def fsync_dirs(dirs: Any) -> None:
        synced.append(list(dirs))
        real(dirs)

    # Grouped ones, and those an ``atomic_write`` of its own would make.
    monkeypatch.setattr(mqd.queue.file.disk, "fsync_dirs", fsync_dirs)
    monkeypatch.setattr(mqd.fsutil, "fsync_dirs", fsync_dirs)

    async def save(lease: Lease, attempts: int) -> None:
        lease.entry.attempts = attempts
        lease.entry.next_attempt_at = clock.time() + 60
        await store.save(lease, lease.entry)
        # On disk, whole, when its own save returned.
        on_disk = QueueEntry.from_json(store.layout.state_path(lease.entry.id).read_bytes())
        assert on_disk == lease.entry

    await asyncio.gather(*(save(lease, n + 1) for n, lease in enumerate(leases)))
    assert synced == [[store.layout.state_dir]]


async def test_a_failing_write_fails_only_its_own_save(
    store: FileStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad, good = await leased(store, clock, [b"bad\r\n", b"good\r\n"])
    real = mqd.queue.file.disk.atomic_write

    def failing(path: Path, *args: object, **kwargs: object) -> None:
        if bad.entry.id in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mqd.queue.file.disk, "atomic_write", failing)
    results = await asyncio.gather(
        store.save(bad, bad.entry), store.save(good, good.entry), return_exceptions=True
    )
    assert isinstance(results[0], OSError) and results[0].errno == errno.ENOSPC
    assert results[1] is None
    assert not store.layout.state_path(bad.entry.id).exists()
    assert store.layout.state_path(good.entry.id).exists()


async def test_a_failing_directory_fsync_fails_every_save_of_the_group(
    store: FileStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases = await leased(store, clock, [b"x\r\n"] * 3)

    def broken(dirs: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(mqd.queue.file.disk, "fsync_dirs", broken)
    results = await asyncio.gather(
        *(store.save(lease, lease.entry) for lease in leases), return_exceptions=True
    )
    assert len(results) == 3
    assert all(isinstance(r, OSError) and r.errno == errno.EIO for r in results)


# -- reads and removals --------------------------------------------------------------------------


async def test_grouped_reads_and_removals_serve_each_caller(
    store: FileStore, clock: ManualClock, hops: list[tuple[Callable[..., Any], int]]
) -> None:
    # Larger than a kept body may be: every read goes to the disk.
    bodies = [f"body {n}\r\n".encode() * (KEEP_BODY_MAX // 8 + 1) for n in range(10)]
    leases = await leased(store, clock, bodies)
    for lease in leases:  # each with a state file too
        await store.checkpoint(lease, lease.entry)
    hops.clear()
    read = await asyncio.gather(*(store.body(lease.entry) for lease in leases))
    assert read == bodies
    assert hops == [(mqd.queue.file.disk.read_body, 10)]
    hops.clear()
    await asyncio.gather(*(store.complete(lease, lease.entry) for lease in leases))
    assert hops == [(store.disk._remove, 10)]
    assert list(store.layout.state_dir.iterdir()) == []
    assert list(Path(store.layout.source_dir(leases[0].entry.source)).iterdir()) == []
    with pytest.raises(FileNotFoundError):
        await store.body(leases[0].entry)


async def turns(count: int) -> None:
    """Let ``count`` turns of the event loop go by."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_removals_asked_for_a_moment_apart_share_a_hop(
    queue_dir: Path,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    hops: list[tuple[Callable[..., Any], int]],
) -> None:
    # A window no loaded test machine overruns between loop turns (the real one is 5 ms).
    window = 0.2
    monkeypatch.setattr(mqd.queue.file.disk, "REMOVAL_GATHER", window)
    store = FileStore(queue_dir, rebuild=rebuild, clock=clock)
    await store.open()
    try:
        leases = await leased(store, clock, [f"{n}\r\n".encode() for n in range(4)])

        async def complete(lease: Lease, wait: int) -> None:
            await turns(wait)  # a caller of a later turn, within the window
            await store.complete(lease, lease.entry)

        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(complete(lease, 3 * n) for n, lease in enumerate(leases)))
        assert loop.time() - started >= window  # the first one waited for company
        assert hops == [(store.disk._remove, 4)]
        assert await store.entries() == []

        # Reads do not wait: a caller of a later turn goes in a hop of its own.
        big = [bytes([65 + n]) * (KEEP_BODY_MAX + 1) for n in range(4)]
        leases = await leased(store, clock, big)
        hops.clear()

        async def read(lease: Lease, wait: int) -> bytes:
            await turns(wait)
            return await store.body(lease.entry)

        assert await asyncio.gather(*(read(lease, 3 * n) for n, lease in enumerate(leases))) == big
        reads = [count for operation, count in hops if operation is mqd.queue.file.disk.read_body]
        assert len(reads) > 1 and sum(reads) == 4
    finally:
        await store.close()


async def test_a_body_larger_than_its_recorded_size_is_read_whole(
    store: FileStore, clock: ManualClock
) -> None:
    data = os.urandom(200_000)  # more than is kept from intake: read from the disk
    entry = new_entry(clock)
    entry.size = 3  # a state from an older mqd may say anything
    await store.accept([Incoming(entry, data)])
    [lease] = await store.lease(1)
    assert lease.entry.size == 3
    assert await store.body(lease.entry) == data


# -- bodies kept from intake ---------------------------------------------------------------------


async def test_a_kept_body_serves_the_first_load_only(store: FileStore, clock: ManualClock) -> None:
    [lease] = await leased(store, clock, [b"on disk"])
    # (Never happens: it shows where the bytes come from.)
    body_path(store, lease.entry).write_bytes(b"changed")
    assert await store.body(lease.entry) == b"on disk"
    assert await store.body(lease.entry) == b"changed"


def test_kept_bodies_are_bounded() -> None:
    kept = BodyCache()
    big = b"x" * KEEP_BODY_MAX
    ids = [new_message_id() + str(n) for n in range(2 * KEEP_BODIES_BYTES // len(big))]
    for entry_id in ids:
        kept.keep(entry_id, big)
    left = {entry_id: kept.take(entry_id) for entry_id in ids}
    still = [entry_id for entry_id, body in left.items() if body is not None]
    assert 0 < len(still) * len(big) <= KEEP_BODIES_BYTES
    assert still == ids[-len(still) :]  # the oldest went first
    kept.keep("too-big", b"x" * (KEEP_BODY_MAX + 1))
    assert kept.take("too-big") is None


async def test_completing_or_failing_forgets_a_kept_body(
    store: FileStore, clock: ManualClock
) -> None:
    completed, failed, untouched = await leased(store, clock, [b"1\r\n", b"2\r\n", b"3\r\n"])
    await store.complete(completed, completed.entry)
    await store.fail(failed, failed.entry, FailureRecord("delivery", "550 no such user"))
    assert store.kept.take(completed.entry.id) is None
    assert store.kept.take(failed.entry.id) is None
    assert store.kept.take(untouched.entry.id) == b"3\r\n"  # what would have been kept


# -- event loops ---------------------------------------------------------------------------------


def test_the_store_works_across_event_loops(queue_dir: Path) -> None:
    """Tests and embedders run one store under several loops in turn: each grouped operation
    (reads, saves, removals) runs under both."""
    clock = ManualClock()
    store = FileStore(queue_dir, rebuild=rebuild, clock=clock)
    first, second = new_entry(clock), new_entry(clock)

    async def one() -> None:
        await store.open()
        await store.accept([Incoming(e, body_for(e)) for e in (first, second)])
        done, kept = await store.lease(2)
        await store.complete(done, done.entry)
        assert await store.body(kept.entry) == body_for(second)  # kept from intake
        assert await store.body(kept.entry) == body_for(second)  # read from disk
        await store.save(kept, kept.entry)

    async def two() -> bytes:
        [lease] = await store.lease(1)
        body = await store.body(lease.entry)
        lease.entry.attempts = 1
        await store.checkpoint(lease, lease.entry)
        await store.complete(lease, lease.entry)
        await store.close()
        return body

    asyncio.run(one())
    assert asyncio.run(two()) == body_for(second)
    assert not store.layout.state_path(second.id).exists()
    assert not body_path(store, second).exists()


def test_a_loop_that_ends_while_claims_are_synced_leaves_the_store_usable(
    queue_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    store = FileStore(queue_dir, rebuild=rebuild, clock=clock)
    entry = new_entry(clock)
    claim = tmp_path / f"{entry.id}.eml"
    claim.write_bytes(body_for(entry))

    async def under_way(sources: object) -> None:  # still syncing when the loop ends
        await asyncio.get_running_loop().create_future()

    async def one() -> None:
        await store.open()
        monkeypatch.setattr(store.disk, "_sync_dirs", under_way)
        await store.accept([Incoming(entry, body_for(entry), file=str(claim))])

    async def two() -> None:
        [lease] = await store.lease(1)
        await store.complete(lease, lease.entry)
        await store.close()

    asyncio.run(one())
    try:
        asyncio.run(two())
    except asyncio.CancelledError:
        pytest.fail("the store's close() raised the old loop's CancelledError")
    finally:
        store.layout.unlock()
    assert not body_path(store, entry).exists()
