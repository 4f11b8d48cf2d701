"""The queue's speed-ups keep its guarantees: grouped saves are each durable and share one
directory fsync, grouped removals and reads serve each caller, a failure stays with its own
caller, a body kept from intake is the body on disk, and the hand-built state JSON is what
dataclasses.asdict gave."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import mqd.queue.file.store as filestore
from mqd.queue.entry import STATE_VERSION, QueueEntry, RcptStatus, RecipientState, new_message_id
from mqd.queue.file.store import KEEP_BODIES_BYTES, KEEP_BODY_MAX, FileStore

SOURCE = "0123456789ab"


def make_entry(**kwargs: object) -> QueueEntry:
    now = time.time()
    fields: dict[str, object] = {
        "id": new_message_id(),
        "sender": "app@example.com",
        "recipients": [RecipientState("alice@example.net")],
        "relay": "main",
        "source": SOURCE,
        "created_at": now,
        "next_attempt_at": now,
        "size": 5,
    }
    fields.update(kwargs)
    return QueueEntry(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def store(queue_dir: Path) -> AsyncIterator[FileStore]:
    s = FileStore(queue_dir)
    await s.open()
    yield s
    await s.close()


def body_of(store: FileStore, entry: QueueEntry, data: bytes = b"hello") -> Path:
    path = store.body_path(entry)
    store.ensure_source_dir(entry.source)
    path.write_bytes(data)
    return path


def test_state_json_is_what_asdict_gave() -> None:
    entry = make_entry(
        recipients=[
            RecipientState("a@example.net", RcptStatus.DELIVERED, "250 ok", "2.0.0", "mx", "r1"),
            RecipientState("b@example.net", RcptStatus.FAILED, "550 no", "5.1.1", notified=True),
        ],
        route=["r1", "r2"],
        history=[{"at": 1.5, "relay": "r1", "reply": "250 ok"}],
        extra={"provider": {"id": "x-1", "tags": ["a", "b"]}},
        held=True,
        message_id="<m@example.com>",
        last_reply="550 no",
    )
    expected = {**dataclasses.asdict(entry), "version": STATE_VERSION}
    assert json.loads(entry.to_json()) == expected
    assert list(json.loads(entry.to_json())) == list(expected)  # same key order
    assert QueueEntry.from_json(entry.to_json()) == entry


async def test_concurrent_saves_share_one_directory_fsync(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[list[Path]] = []
    real = filestore.fsync_dirs
    monkeypatch.setattr(
        filestore, "fsync_dirs", lambda dirs: (synced.append(list(dirs)), real(dirs))
    )
    entries = [make_entry(attempts=n) for n in range(20)]
    await asyncio.gather(*(store.save(e) for e in entries))
    for entry in entries:  # each one is on disk, whole, when its save returned
        assert QueueEntry.from_json(store.state_path(entry.id).read_bytes()) == entry
    assert synced == [[store.state_dir]]


async def test_a_failing_write_fails_only_its_own_save(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad, good = make_entry(), make_entry()
    real = filestore.atomic_write

    def failing(path: Path, *args: object, **kwargs: object) -> None:
        if bad.id in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(filestore, "atomic_write", failing)
    results = await asyncio.gather(store.save(bad), store.save(good), return_exceptions=True)
    assert isinstance(results[0], OSError) and results[0].errno == errno.ENOSPC
    assert results[1] is None
    assert not store.state_path(bad.id).exists() and store.state_path(good.id).exists()


async def test_a_failing_directory_fsync_fails_every_save_of_the_group(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(dirs: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(filestore, "fsync_dirs", broken)
    results = await asyncio.gather(
        *(store.save(make_entry()) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, OSError) and r.errno == errno.EIO for r in results)


async def test_grouped_removals_and_reads(store: FileStore) -> None:
    entries = [make_entry() for _ in range(10)]
    for n, entry in enumerate(entries):
        body_of(store, entry, f"body {n}".encode())
        await store.save(entry)
    bodies = await asyncio.gather(*(store.load_body(e) for e in entries))
    assert bodies == [f"body {n}".encode() for n in range(10)]
    await asyncio.gather(*(store.remove(e) for e in entries))
    assert not list(store.state_dir.iterdir())
    assert not list((store.messages_dir / SOURCE).iterdir())
    with pytest.raises(FileNotFoundError):
        await store.load_body(entries[0])


async def test_removals_asked_for_a_moment_apart_share_a_hop() -> None:
    hops: list[list[int]] = []

    def work(items: list[int]) -> list[int | BaseException]:
        hops.append(items)
        return [item * 10 for item in items]

    async def ask(grouped: filestore._Grouped[int, int], item: int) -> int:
        await asyncio.sleep(item * 0.002)  # callers of different turns, within the window
        return await grouped.run(item)

    gathering = filestore._Grouped(work, gather=0.05)
    assert await asyncio.gather(*(ask(gathering, n) for n in range(4))) == [0, 10, 20, 30]
    assert hops == [[0, 1, 2, 3]]
    hops.clear()
    eager = filestore._Grouped(work)  # what loads and saves use: the first caller goes at once
    assert await asyncio.gather(*(ask(eager, n) for n in range(4))) == [0, 10, 20, 30]
    assert len(hops) > 1 and sorted(item for hop in hops for item in hop) == [0, 1, 2, 3]


async def test_a_body_larger_than_its_recorded_size_is_read_whole(store: FileStore) -> None:
    entry = make_entry(size=3)  # a state from an older mqd may say anything
    data = os.urandom(200_000)
    body_of(store, entry, data)
    assert await store.load_body(entry) == data


async def test_a_kept_body_serves_the_first_load_only(store: FileStore) -> None:
    entry = make_entry()
    path = body_of(store, entry, b"on disk")
    store.keep_body(entry.id, b"on disk")
    path.write_bytes(b"changed")  # (never happens: it shows where the bytes come from)
    assert await store.load_body(entry) == b"on disk"
    assert await store.load_body(entry) == b"changed"


async def test_kept_bodies_are_bounded(store: FileStore) -> None:
    big = b"x" * KEEP_BODY_MAX
    ids = [new_message_id() + str(n) for n in range(2 * KEEP_BODIES_BYTES // len(big))]
    for entry_id in ids:
        store.keep_body(entry_id, big)
    assert store._kept_bytes <= KEEP_BODIES_BYTES
    assert ids[0] not in store._kept and ids[-1] in store._kept  # the oldest went first
    store.keep_body("too-big", b"x" * (KEEP_BODY_MAX + 1))
    assert "too-big" not in store._kept


async def test_removing_or_failing_forgets_a_kept_body(store: FileStore) -> None:
    entry = make_entry()
    body_of(store, entry)
    store.keep_body(entry.id, b"hello")
    await store.remove(entry)
    assert entry.id not in store._kept and store._kept_bytes == 0


def test_the_store_works_across_event_loops(queue_dir: Path) -> None:
    """Tests and embedders run one store under several loops in turn."""
    store = FileStore(queue_dir)
    entry = make_entry()

    async def first() -> None:
        await store.open()
        body_of(store, entry)
        await store.save(entry)

    async def second() -> bytes:
        body = await store.load_body(entry)
        await store.remove(entry)
        await store.close()
        return body

    asyncio.run(first())
    assert asyncio.run(second()) == b"hello"
    assert not store.state_path(entry.id).exists()
