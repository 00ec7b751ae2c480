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
