"""mqd.intake.spool: scanning, atomic claims (also across filesystems), and the safe open."""

from __future__ import annotations

import errno
import os
import threading
from collections import Counter
from pathlib import Path

import pytest

import mqd.intake.spool
from mqd.config.schema import SpoolConfig
from mqd.errors import SpoolError
from mqd.intake.spool import Claimed, Spool, read_claimed

QUEUE_KEY = "q0123456789abcde"


@pytest.fixture
def staging_root(tmp_path: Path) -> Path:
    """Intake's claim area (node-local, beside the queue)."""
    return tmp_path / "queue" / "claim"


@pytest.fixture
def make_spool(spool: Path, staging_root: Path):
    def make() -> Spool:
        s = Spool(
            SpoolConfig(path=spool, relays=("r",), allowed_senders=("app@example.com",)),
            QUEUE_KEY,
            staging_root,
        )
        s.prepare()
        return s

    return make


def staged(staging_root: Path, s: Spool, entry_id: str) -> str:
    return str(staging_root / s.config.key / f"{entry_id}.eml")


# -- scan ----------------------------------------------------------------------------------------


def test_scan_lists_only_eml_non_dotfiles_sorted(make_spool, spool: Path) -> None:
    s = make_spool()
    for name in (
        "b.eml",
        "a.eml",
        ".hidden.eml",
        ".a.eml.tmp",
        "c.tmp",
        "d.eml.tmp",
        "e.EML.part",
        "noext",
    ):
        (spool / name).write_bytes(b"x")
    (spool / "f.eml").mkdir()  # scan lists names; read_claimed refuses the directory later
    assert s.scan() == ["a.eml", "b.eml", "f.eml"]


def test_scan_ignores_its_own_claim_dir(make_spool, spool: Path) -> None:
    s = make_spool()
    s.beside_dir.mkdir()
    (s.beside_dir / "x.eml").write_bytes(b"x")
    assert s.beside_dir.name.startswith(".mqd-claim-")
    assert s.scan() == []


def test_scan_recreates_a_missing_spool(make_spool, spool: Path) -> None:
    s = make_spool()
    spool.rmdir()
    assert s.scan() == []
    assert spool.is_dir()


# -- claim ---------------------------------------------------------------------------------------


def test_claim_renames_into_staging(make_spool, spool: Path, staging_root: Path) -> None:
    s = make_spool()
    source = spool / "m1.eml"
    source.write_bytes(b"Subject: one\r\n\r\nbody\r\n")
    inode = source.stat().st_ino
    claimed = s.claim("m1.eml", "id1")
    assert isinstance(claimed, Claimed)
    assert claimed.path == staged(staging_root, s, "id1")
    assert claimed.entry_id == "id1"
    assert claimed.original_name == "m1.eml"
    assert claimed.spool == s.config
    assert not source.exists()
    assert Path(claimed.path).read_bytes() == b"Subject: one\r\n\r\nbody\r\n"
    assert Path(claimed.path).stat().st_ino == inode  # a rename, not a copy


def test_claim_of_a_file_already_gone_returns_none(make_spool, spool: Path) -> None:
    s = make_spool()
    (spool / "m1.eml").write_bytes(b"x")
    first = s.claim("m1.eml", "id1")
    assert first is not None
    # The loser of a race: the name is gone by the time it renames.
    assert s.claim("m1.eml", "id2") is None
    assert Path(first.path).read_bytes() == b"x"


def test_claim_of_a_name_that_never_existed_returns_none(make_spool) -> None:
    assert make_spool().claim("nope.eml", "id1") is None


def test_two_threads_claim_each_file_exactly_once(
    make_spool, spool: Path, staging_root: Path
) -> None:
    first, second = make_spool(), make_spool()  # two claimers (think: two daemons)
    names = [f"{i:04d}.eml" for i in range(200)]
    for i, name in enumerate(names):
        (spool / name).write_bytes(f"message {i}\n".encode())
    won: dict[str, list[tuple[str, Claimed]]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def claimer(tag: str, s: Spool, order: list[str]) -> None:
        try:
            barrier.wait(10)
            for name in order:
                claimed = s.claim(name, f"{tag}-{name[:-4]}")
                if claimed is not None:
                    won[tag].append((name, claimed))
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=claimer, args=("a", first, names)),
        threading.Thread(target=claimer, args=("b", second, list(names))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert errors == []
    counts = Counter(name for tag in won for name, _ in won[tag])
    assert set(counts) == set(names)
    assert all(n == 1 for n in counts.values()), [n for n, c in counts.items() if c != 1]
    assert list(spool.glob("*.eml")) == []
    for tag in won:
        for name, claimed in won[tag]:
            index = int(name[:-4])
            assert Path(claimed.path).read_bytes() == f"message {index}\n".encode()
    assert len(list((staging_root / first.config.key).glob("*.eml"))) == 200


def test_claim_error_other_than_enoent_is_a_spool_error(
    make_spool, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_spool()
    (spool / "m.eml").write_bytes(b"x")

    def refuse(src, dst, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(mqd.intake.spool.os, "rename", refuse)
    with pytest.raises(SpoolError, match="cannot claim"):
        s.claim("m.eml", "id1")
    monkeypatch.undo()
    assert (spool / "m.eml").exists()


# -- claim across filesystems (EXDEV) ------------------------------------------------------------


@pytest.fixture
def exdev_into_queue(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, str]]:
    """os.rename fails with EXDEV when the destination is inside the queue dir."""
    queue_dir = (tmp_path / "queue").resolve()
    real_rename = os.rename
    calls: list[tuple[str, str]] = []

    def rename(src, dst, *args, **kwargs):
        calls.append((str(src), str(dst)))
        if Path(os.path.abspath(dst)).resolve().is_relative_to(queue_dir):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(mqd.intake.spool.os, "rename", rename)
    return calls


def test_cross_filesystem_claims_go_into_the_spools_own_claim_dir(
    make_spool, spool: Path, exdev_into_queue: list[tuple[str, str]]
) -> None:
    s = make_spool()
    content = b"Subject: far away\r\n\r\n" + os.urandom(3000).hex().encode() + b"\r\n"
    (spool / "m1.eml").write_bytes(content)
    claimed = s.claim("m1.eml", "id1")
    assert claimed is not None and s.claims_across
    # Renamed into the spool's own hidden directory (same filesystem): the store copies it.
    assert claimed.path == str(s.beside_dir / "id1.eml")
    assert Path(claimed.path).read_bytes() == content
    assert claimed.original_name == "m1.eml"
    assert not (spool / "m1.eml").exists()
    # Later claims go straight there, and a lost race is still None.
    (spool / "m2.eml").write_bytes(b"two")
    second = s.claim("m2.eml", "id2")
    assert second is not None and Path(second.path).read_bytes() == b"two"
    assert s.claim("m2.eml", "id3") is None
    assert s.scan() == []  # the hidden directory is not a spool file


def test_cross_filesystem_claim_leaves_a_symlink_for_read_claimed_to_refuse(
    make_spool, spool: Path, tmp_path: Path, exdev_into_queue: list[tuple[str, str]]
) -> None:
    s = make_spool()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"From: x@example.com\r\n\r\nsecret\r\n")
    (spool / "evil.eml").symlink_to(secret)
    claimed = s.claim("evil.eml", "id1")
    assert claimed is not None
    assert Path(claimed.path).parent == s.beside_dir  # renamed, never followed
    with pytest.raises(SpoolError, match="symbolic link"):
        read_claimed(claimed.path, 1 << 20)


def test_waiting_lists_what_a_crash_left_in_both_claim_dirs(make_spool, staging_root: Path) -> None:
    s = make_spool()
    s.beside_dir.mkdir()
    (s.beside_dir / "0190abcdef012345.eml").write_bytes(b"left behind")
    (s.beside_dir / ".partial.tmp").write_bytes(b"not a claim")
    (s.claim_dir / "0190abcdef012300.eml").write_bytes(b"claimed here")
    found = s.waiting()
    assert [c.entry_id for c in found] == ["0190abcdef012300", "0190abcdef012345"]
    assert Path(found[1].path).read_bytes() == b"left behind"
    assert s.unclaim(found[0])
    assert (s.path / "0190abcdef012300.eml").read_bytes() == b"claimed here"
    assert [c.entry_id for c in s.waiting()] == ["0190abcdef012345"]


def test_waiting_without_claim_dirs_is_empty(make_spool) -> None:
    assert make_spool().waiting() == []


# -- read_claimed --------------------------------------------------------------------------------


def test_read_claimed_returns_the_bytes_of_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    data = b"From: a@example.com\r\n\r\n" + bytes(range(256)) * 10
    path.write_bytes(data)
    assert read_claimed(path, len(data)) == data  # exactly at the limit is fine


def test_read_claimed_refuses_a_symlink_to_a_readable_file(tmp_path: Path) -> None:
    target = tmp_path / "target.eml"
    target.write_bytes(b"From: a@example.com\r\n\r\nhi\r\n")
    link = tmp_path / "link.eml"
    link.symlink_to(target)
    with pytest.raises(SpoolError, match="symbolic link"):
        read_claimed(link, 1 << 20)


def test_read_claimed_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    fifo = tmp_path / "pipe.eml"
    os.mkfifo(fifo)
    outcome: list[BaseException | bytes] = []

    def read() -> None:
        try:
            outcome.append(read_claimed(fifo, 1 << 20))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)  # a safety net: a correct read_claimed returns at once
    if reader.is_alive():
        # Unblock the stuck open so the thread can end, then fail.
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        reader.join(10)
        pytest.fail("read_claimed blocked on a FIFO")
    [result] = outcome
    assert isinstance(result, SpoolError)
    assert "FIFO" in str(result)


def test_read_claimed_refuses_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "dir.eml"
    directory.mkdir()
    with pytest.raises(SpoolError, match="directory"):
        read_claimed(directory, 1 << 20)


def test_read_claimed_refuses_a_file_with_two_hard_links(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(b"From: a@example.com\r\n\r\nhi\r\n")
    os.link(path, tmp_path / "other-name")
    with pytest.raises(SpoolError, match="2 hard links"):
        read_claimed(path, 1 << 20)


def test_read_claimed_refuses_a_file_over_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.eml"
    path.write_bytes(b"x" * 1001)
    with pytest.raises(SpoolError, match=r"1001 bytes, more than .*1000 bytes"):
        read_claimed(path, 1000)


def test_read_claimed_of_a_missing_file_is_a_spool_error(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="cannot open"):
        read_claimed(tmp_path / "gone.eml", 1000)
