"""Pure logic of carrying bundles: sizes, the part plan, part framing, layouts, digest matching, journals."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gptossctl.bundle.dsse import PAYLOAD_TYPE, Envelope
from gptossctl.bundle.manifest import FileEntry, Manifest
from gptossctl.bundle.partfile import (
    ALIGN,
    BundleRef,
    DamagedPart,
    NotAPart,
    layout_problems,
    read_part,
    render_layout,
)
from gptossctl.bundle.parts import FAT32_MAX, header_reserve, parse_size, plan_parts
from gptossctl.bundle.pieces import PieceRef, base_sources, manifest_pieces
from gptossctl.bundle.transfer import JournalRecord
from gptossctl.errors import UsageError

MiB = 1 << 20


def _digest(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()


def _manifest(files: list[tuple[str, int, str]], shard: int = MiB) -> Manifest:
    """A strictly valid manifest whose digests are stand-ins named by `tag` (pure logic: no payload)."""
    entries = []
    for path, size, tag in files:
        n = 0 if size <= shard else -(-size // shard)
        shards = tuple(_digest(f"{tag}:{shard}:{i}") for i in range(n)) if n else None
        entries.append(FileEntry(path=path, size=size, sha256=_digest(tag), component="model", shards=shards))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Manifest(schema="gptossctl.manifest/1", name="t", version=1, created=now,
                    expires=now + timedelta(days=1), min_gptossctl_version="0.0.1", shard_size=shard,
                    components={}, sha256sums=_digest("sums"), files=tuple(entries))


def test_sizes_read_like_people_write_them() -> None:
    assert parse_size("fat32") == FAT32_MAX == 4 * 1024**3 - 1
    assert parse_size("4G") == parse_size("4GiB") == 4 * 1024**3
    assert parse_size("4700MB") == 4_700_000_000
    assert parse_size("700MiB") == 700 * MiB and parse_size("12345") == 12345
    assert parse_size("1.5K") == 1536
    with pytest.raises(UsageError):
        parse_size("four gigs")


def test_plan_fills_parts_first_fit_largest_first_and_never_overflows() -> None:
    pieces = [PieceRef(f"f{i}", -1, 0, size, _digest(str(i))) for i, size in enumerate([700, 300, 600, 100, 400, 50])]
    plan = plan_parts(pieces, 1100, 100)  # 1000 bytes for data per part
    assert all(sum(p.length for p in part) <= 1000 for part in plan)
    assert sorted(p.key for part in plan for p in part) == sorted(p.key for p in pieces)
    assert [[p.path for p in part] for part in plan] == [["f0", "f1"], ["f2", "f4"], ["f3", "f5"]]


def test_a_piece_larger_than_a_part_is_refused_with_the_size_that_would_do() -> None:
    pieces = [PieceRef("big", 0, 0, 5000, _digest("b"))]
    with pytest.raises(UsageError) as exc:
        plan_parts(pieces, 4000, 100)
    assert exc.value.code == "split.part_size_too_small" and "5100" in (exc.value.hint or "")


def _envelope() -> tuple[bytes, BundleRef]:
    env = Envelope(b'{"m": 1}', PAYLOAD_TYPE, ())
    ref = BundleRef(name="t", version=1, manifest_sha256=hashlib.sha256(env.payload).hexdigest())
    return env.to_json(), ref


def _write_part(tmp_path: Path, pieces: list[PieceRef]) -> tuple[Path, bytes, int]:
    env_json, ref = _envelope()
    rendered = render_layout("split", ref, None, env_json, [pieces])
    body = rendered.body
    data = rendered.headers[0] + b"\0" * (body - len(rendered.headers[0])) + b"x" * sum(p.length for p in pieces)
    path = tmp_path / rendered.layout[0].name
    path.write_bytes(data)
    return path, rendered.headers[0], body


def test_a_part_is_framed_page_aligned_and_read_back(tmp_path: Path) -> None:
    pieces = [PieceRef("a", -1, 0, 10, _digest("a")), PieceRef("b", -1, 0, 20, _digest("b"))]
    path, header, body = _write_part(tmp_path, pieces)
    assert body % ALIGN == 0 and len(header) <= body
    part = read_part(path)
    assert part.header.part == 1 and part.header.parts == 1 and part.size == body + 30
    assert part.header.entry.pieces == (("a", -1, body), ("b", -1, body + 10))
    assert layout_problems(part.header, {p.key: p for p in pieces}) == []


@pytest.mark.parametrize("damage, error", [
    (lambda b, body: b[:-1], "truncated"),
    (lambda b, body: b + b"!", "longer"),
    (lambda b, body: b[: body - 1] + b"\1" + b[body:], "padding"),
    (lambda b, body: b[:20] + b"x" + b[21:], "length line"),
    (lambda b, body: b[:40] + b"[" + b[41:], "header"),
])
def test_damaged_framing_is_named(tmp_path: Path, damage, error) -> None:  # type: ignore[no-untyped-def]
    path, _header, body = _write_part(tmp_path, [PieceRef("a", -1, 0, 10, _digest("a"))])
    path.write_bytes(damage(path.read_bytes(), body))
    with pytest.raises(DamagedPart, match=error):
        read_part(path)


def test_a_file_without_the_magic_is_not_a_part(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"hello world, not a part\n")
    with pytest.raises(NotAPart):
        read_part(tmp_path / "x")


def test_layout_problems_name_unknown_repeated_and_shifted_pieces(tmp_path: Path) -> None:
    a, b = PieceRef("a", -1, 0, 10, _digest("a")), PieceRef("b", -1, 0, 20, _digest("b"))
    path, _h, _body = _write_part(tmp_path, [a, b])
    header = read_part(path).header
    assert "does not have" in layout_problems(header, {a.key: a})[0]
    assert "holds 2 of the manifest's 3 pieces" in layout_problems(
        header, {a.key: a, b.key: b, ("c", -1): PieceRef("c", -1, 0, 1, _digest("c"))})[0]
    longer = PieceRef("a", -1, 0, 11, _digest("a"))
    assert any("expected" in p for p in layout_problems(header, {a.key: longer, b.key: b}))


def test_the_header_reserve_bounds_every_real_header() -> None:
    env_json, ref = _envelope()
    pieces = [PieceRef(f"model/file-{i:05d}.safetensors", i % 7, 0, 100 + i, _digest(str(i))) for i in range(300)]
    reserve = header_reserve("split", ref, None, env_json, pieces)
    plan = plan_parts(pieces, reserve + 2000, reserve)
    rendered = render_layout("split", ref, None, env_json, plan)
    assert rendered.body <= reserve and max(e.size for e in rendered.layout) <= reserve + 2000


def test_base_pieces_match_by_digest_anywhere_and_by_whole_file_across_shard_sizes() -> None:
    old = _manifest([("w/a", 3 * MiB, "A"), ("w/b", 100, "B"), ("w/c", 2 * MiB + 5, "C")])
    new = _manifest([("w/renamed-a", 3 * MiB, "A"), ("w/b", 100, "B2"), ("w/d", 100, "B"), ("w/e", 50, "B")])
    found = base_sources(new, old, Path("/base"))
    assert {k: (s.path.name, s.offset) for k, s in found.items()} == {
        ("w/renamed-a", 0): ("a", 0), ("w/renamed-a", 1): ("a", MiB), ("w/renamed-a", 2): ("a", 2 * MiB),
        ("w/d", -1): ("b", 0)}  # w/b changed; w/d has its old bytes; w/e the same digest at another length
    coarse = _manifest([("w/a", 3 * MiB, "A")], shard=2 * MiB)  # another shard size, the same file digest
    found = base_sources(coarse, old, Path("/base"))
    assert {k: s.offset for k, s in found.items()} == {("w/a", 0): 0, ("w/a", 1): 2 * MiB}


def test_manifest_pieces_cover_every_byte_once() -> None:
    m = _manifest([("a", 2 * MiB + 1, "A"), ("b", 0, "B")])
    assert [(p.key, p.offset, p.length) for p in manifest_pieces(m)] == [
        (("a", 0), 0, MiB), (("a", 1), MiB, MiB), (("a", 2), 2 * MiB, 1), (("b", -1), 0, 0)]


def test_a_torn_journal_line_is_not_a_record() -> None:
    rec = JournalRecord("payload/x", 0, 10, _digest("x"))
    assert JournalRecord.from_json(rec.to_json()) == rec
    assert JournalRecord.from_json(rec.to_json()[:-5]) is None
    assert JournalRecord.from_json(json.dumps({"dst": 1, "offset": 0, "length": 1, "sha256": "x"})) is None


def test_a_journal_of_another_format_is_not_trusted(tmp_path: Path) -> None:
    """Only a journal with this format's schema line resumes anything; another one starts over."""
    from gptossctl.bundle.pieces import Source
    from gptossctl.bundle.transfer import JOURNAL_NAME, Job, run_transfer

    src = tmp_path / "src"
    src.write_bytes(b"a" * 1000)
    job = Job("out", 0, 1000, hashlib.sha256(b"a" * 1000).hexdigest(), (Source(src, 0, "src"),), "piece")
    work = tmp_path / "work"
    first = run_transfer(work, [job])
    assert (first.copied_bytes, first.reused_bytes) == (1000, 0)
    again = run_transfer(work, [job])
    assert (again.copied_bytes, again.reused_bytes) == (0, 1000)
    lines = (work / JOURNAL_NAME).read_text().splitlines()
    (work / JOURNAL_NAME).write_text("\n".join(['{"schema": "gptossctl.transfer-journal/0"}', *lines[1:]]) + "\n")
    other = run_transfer(work, [job])
    assert (other.copied_bytes, other.reused_bytes) == (1000, 0)
