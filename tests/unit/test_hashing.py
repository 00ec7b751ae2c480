from __future__ import annotations

import hashlib
import os
from pathlib import Path

from gptossctl.bundle.hashing import copy_and_hash, hash_pieces, pieces_for, shard_count


def test_shard_count_boundaries() -> None:
    assert shard_count(0, 100) == 0
    assert shard_count(100, 100) == 0  # exactly one shard: whole-file digest only
    assert shard_count(101, 100) == 2
    assert shard_count(300, 100) == 3


def test_copy_and_hash_matches_hashlib_whole_and_shards(tmp_path: Path) -> None:
    data = os.urandom((9 << 20) + 12345)  # several chunks, a ragged last shard
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    shard = 2 << 20
    res = copy_and_hash(src, dst, shard_size=shard)
    assert dst.read_bytes() == data
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert res.shards == tuple(hashlib.sha256(data[i : i + shard]).hexdigest() for i in range(0, len(data), shard))


def test_hash_pieces_of_shards_equal_copy_digests(tmp_path: Path) -> None:
    data = os.urandom(5 << 20)
    f = tmp_path / "f"
    f.write_bytes(data)
    shard = 1 << 20
    digests = hash_pieces(pieces_for(f, "f", len(data), shard), workers=3)
    assert [digests[("f", i)].sha256 for i in range(5)] == list(copy_and_hash(f, tmp_path / "g", shard_size=shard).shards)


def test_short_file_is_reported_not_hashed(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    (d,) = hash_pieces(pieces_for(f, "f", 10, 1 << 20)).values()
    assert d.sha256 is None and "shorter" in (d.error or "")


def test_mmap_and_preadv_paths_give_the_same_digests(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from gptossctl.bundle.hashing import SLICE

    data = os.urandom(SLICE + (3 << 20) + 7)  # crosses a slice boundary, ragged end
    f = tmp_path / "f"
    f.write_bytes(data)
    pieces = pieces_for(f, "f", len(data), 5 << 20)
    mapped = hash_pieces(pieces)
    monkeypatch.setenv("GPTOSSCTL_NO_MMAP", "1")
    read = hash_pieces(pieces)
    assert {k: d.sha256 for k, d in mapped.items()} == {k: d.sha256 for k, d in read.items()}
    assert mapped[("f", 0)].sha256 == hashlib.sha256(data[: 5 << 20]).hexdigest()
    assert mapped[("f", 7)].sha256 == hashlib.sha256(data[7 * (5 << 20):]).hexdigest()


def test_copy_verified_hashes_what_landed_at_any_offsets(tmp_path: Path) -> None:
    from gptossctl.bundle.hashing import copy_verified, open_read, open_write

    data = os.urandom(3 << 20)
    (tmp_path / "src").write_bytes(data)
    s, d = open_read(tmp_path / "src"), open_write(tmp_path / "dst", truncate=True)
    try:
        digest = copy_verified(s, 12345, d, 777, 2 << 20, slice_size=1 << 20)
    finally:
        os.close(s)
        os.close(d)
    assert digest == hashlib.sha256(data[12345 : 12345 + (2 << 20)]).hexdigest()
    assert (tmp_path / "dst").read_bytes()[777:] == data[12345 : 12345 + (2 << 20)]


def test_copy_across_filesystems_falls_back_and_still_verifies(tmp_path: Path) -> None:
    """/dev/shm (tmpfs) to the test's disk: the kernel refuses copy_file_range across filesystem types."""
    from gptossctl.bundle.hashing import copy_verified, open_read, open_write

    shm = Path("/dev/shm") / f"gptossctl-test-{os.getpid()}"
    data = os.urandom(5 << 20)
    shm.write_bytes(data)
    try:
        s, d = open_read(shm), open_write(tmp_path / "dst", truncate=True)
        try:
            assert copy_verified(s, 0, d, 0, len(data)) == hashlib.sha256(data).hexdigest()
        finally:
            os.close(s)
            os.close(d)
        res = copy_and_hash(shm, tmp_path / "dst2", shard_size=2 << 20)
        assert res.sha256 == hashlib.sha256(data).hexdigest() and len(res.shards) == 3
    finally:
        shm.unlink()
    assert (tmp_path / "dst").read_bytes() == data == (tmp_path / "dst2").read_bytes()


def test_a_short_source_is_an_error_not_a_digest(tmp_path: Path) -> None:
    import pytest

    from gptossctl.bundle.hashing import ShortFile, copy_verified, open_read, open_write

    (tmp_path / "src").write_bytes(b"x" * 100)
    s, d = open_read(tmp_path / "src"), open_write(tmp_path / "dst", truncate=True)
    try:
        with pytest.raises(ShortFile):
            copy_verified(s, 50, d, 0, 100)
    finally:
        os.close(s)
        os.close(d)
