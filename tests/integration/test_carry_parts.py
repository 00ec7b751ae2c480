"""Parts for removable media and data diodes, through the real CLI: split smaller than a file, each part
verified alone, a flipped bit or a missing part named, joined from two places in any order, byte for byte."""

# ruff: noqa: F811 - fixtures imported from carry_bundles come back as test parameters
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from tests.conftest import KeyPair, finding_codes
from tests.integration.carry_bundles import (  # noqa: F401 - fixtures
    Cli,
    MiB,
    carry_model,
    carry_parts,
    carry_v5,
    carry_v6,
    flip_bit,
    part_files,
    tree_bytes,
    trust,
)

pytestmark = pytest.mark.integration


@pytest.fixture()
def parts(carry_parts: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "parts"
    shutil.copytree(carry_parts, dst)
    return dst


def test_split_at_a_size_smaller_than_a_file(cli: Cli, carry_v5: Path, keys: dict[str, KeyPair],
                                             tmp_path: Path) -> None:
    biggest = max(p.stat().st_size for p in (carry_v5 / "payload").rglob("*") if p.is_file())
    assert biggest > 5 * MiB
    code, doc = cli("bundle", "split", str(carry_v5), "--out", str(tmp_path / "p"), "--part-size", "3MiB",
                    *trust(keys))
    assert code == 0, doc
    files = part_files(tmp_path / "p")
    assert len(files) == len(doc["data"]["parts"]) >= 6
    assert all(f.stat().st_size <= 3 * MiB for f in files)  # smaller than the 5 MiB files they carry
    assert doc["data"]["signatures"] == "checked"
    index = json.loads((tmp_path / "p" / "parts.json").read_text())
    assert index["schema"] == "gptossctl.parts/1" and index["kind"] == "split"
    assert [e["name"] for e in index["layout"]] == [f.name for f in files]
    assert not (tmp_path / "p.partial").exists()


def test_a_part_size_below_one_signed_piece_is_refused(cli: Cli, carry_v5: Path, tmp_path: Path) -> None:
    code, doc = cli("bundle", "split", str(carry_v5), "--out", str(tmp_path / "p"), "--part-size", "1MiB")
    assert code == 2 and doc["error"]["code"] == "split.part_size_too_small"
    assert "shard" in doc["error"]["message"] and "--part-size" in doc["error"]["hint"]
    assert not (tmp_path / "p").exists()


def test_every_part_verifies_on_its_own(cli: Cli, parts: Path, keys: dict[str, KeyPair]) -> None:
    files = part_files(parts)
    for f in files:
        code, doc = cli("bundle", "verify", str(f), *trust(keys))
        assert code == 0, doc
        assert doc["data"]["present"] == [f.name] and doc["data"]["total"] == len(files)
        assert doc["data"]["complete"] is False and doc["data"]["signers"] == [keys["alice"].keyid]
    code, doc = cli("bundle", "verify", str(parts), *trust(keys))
    assert code == 0, doc
    assert doc["data"]["complete"] is True and len(doc["data"]["present"]) == len(files)


def test_one_part_alone_is_refused_for_an_untrusted_signer(cli: Cli, parts: Path, keys: dict[str, KeyPair]) -> None:
    code, doc = cli("bundle", "verify", str(part_files(parts)[0]), *trust(keys, "bob"))
    assert code == 1
    assert set(finding_codes(doc)) == {"signature.unknown_signer", "signature.threshold_not_met"}


def test_a_flipped_bit_in_one_part_is_refused_naming_that_part(cli: Cli, parts: Path, keys: dict[str, KeyPair],
                                                              tmp_path: Path) -> None:
    victim = part_files(parts)[3]
    header = json.loads((parts / "parts.json").read_text())
    body = header["body"]
    flip_bit(victim, body + 1000)
    code, doc = cli("bundle", "verify", str(parts), *trust(keys))
    assert code == 1
    assert finding_codes(doc) == ["parts.damaged"] and doc["findings"][0]["subject"] == str(victim)
    assert "SHA-256 differs" in doc["findings"][0]["message"]
    code, doc = cli("bundle", "verify", str(victim), *trust(keys))  # alone, too
    assert code == 1 and finding_codes(doc) == ["parts.damaged"]
    code, doc = cli("bundle", "join", str(parts), "--out", str(tmp_path / "j"), *trust(keys))
    assert code == 1 and doc["error"]["code"] == "join.incomplete"
    assert [f["subject"] for f in doc["findings"]] == [str(victim)]
    assert not (tmp_path / "j").exists()


def test_a_flipped_bit_in_a_part_header_is_refused_naming_that_part(cli: Cli, parts: Path,
                                                                   keys: dict[str, KeyPair]) -> None:
    victim = part_files(parts)[1]
    flip_bit(victim, 200)  # inside the JSON header
    code, doc = cli("bundle", "verify", str(parts), *trust(keys))
    assert code == 1
    assert "parts.damaged" in finding_codes(doc)
    assert str(victim) in [f["subject"] for f in doc["findings"] if f["code"] == "parts.damaged"]


def test_a_missing_part_is_named(cli: Cli, parts: Path, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    gone = part_files(parts)[2]
    gone.unlink()
    code, doc = cli("bundle", "verify", str(parts), *trust(keys))
    assert code == 1
    assert finding_codes(doc) == ["parts.missing"] and doc["findings"][0]["subject"] == gone.name
    assert "part 3 of" in doc["findings"][0]["message"]
    code, doc = cli("bundle", "join", str(parts), "--out", str(tmp_path / "j"), *trust(keys))
    assert code == 1 and doc["error"]["code"] == "join.missing_parts"
    assert [f["subject"] for f in doc["findings"]] == [gone.name]
    assert not (tmp_path / "j").exists() and not (tmp_path / "j.partial").exists()


def test_parts_join_from_two_directories_in_shuffled_order(cli: Cli, parts: Path, carry_v5: Path,
                                                           keys: dict[str, KeyPair], tmp_path: Path) -> None:
    files = part_files(parts)
    rng = random.Random(1)
    rng.shuffle(files)
    stick1, stick2 = tmp_path / "stick1", tmp_path / "stick2"
    stick1.mkdir()
    stick2.mkdir()
    for i, f in enumerate(files):
        # Renamed on the way: a part is known by its header, not by its file name.
        shutil.move(f, (stick1 if i % 2 else stick2) / f"x{rng.randrange(10**6)}-{i}.bin")
    out = tmp_path / "joined"
    code, doc = cli("bundle", "join", str(stick2), str(stick1), "--out", str(out), *trust(keys))
    assert code == 0, doc
    assert doc["data"]["bytes_copied"] == sum(len(b) for b in tree_bytes(carry_v5 / "payload").values())
    assert tree_bytes(out) == tree_bytes(carry_v5)  # byte for byte, manifest and envelope included
    code, doc = cli("bundle", "verify", str(out), *trust(keys))
    assert code == 0, doc


def test_a_damaged_copy_is_replaced_by_its_twin(cli: Cli, parts: Path, carry_v5: Path, keys: dict[str, KeyPair],
                                                tmp_path: Path) -> None:
    """Repeat-tolerant: the same part twice, one copy damaged; the join takes the intact one."""
    victim = part_files(parts)[0]
    twin = tmp_path / "stick2"
    twin.mkdir()
    shutil.copyfile(victim, twin / victim.name)
    flip_bit(victim, victim.stat().st_size - 10)
    out = tmp_path / "joined"
    code, doc = cli("bundle", "join", str(parts), str(twin), "--out", str(out), *trust(keys))
    assert code == 0, doc
    assert tree_bytes(out) == tree_bytes(carry_v5)
    code, doc = cli("bundle", "verify", str(parts), *trust(keys))
    assert code == 1 and [f["subject"] for f in doc["findings"]] == [str(victim)]


def test_join_resumes_once_the_damaged_part_is_replaced(cli: Cli, parts: Path, carry_parts: Path, carry_v5: Path,
                                                        keys: dict[str, KeyPair], tmp_path: Path) -> None:
    victim = part_files(parts)[1]
    flip_bit(victim, victim.stat().st_size - 1)
    out = tmp_path / "joined"
    code, doc = cli("bundle", "join", str(parts), "--out", str(out))
    assert code == 1 and [f["subject"] for f in doc["findings"]] == [str(victim)]
    shutil.copyfile(carry_parts / victim.name, victim)  # a fresh copy from the medium
    code, doc = cli("bundle", "join", str(parts), "--out", str(out))
    assert code == 0, doc
    assert doc["data"]["signatures"] == "not checked (no --trust)"
    total = sum(len(b) for b in tree_bytes(carry_v5 / "payload").values())
    assert 0 < doc["data"]["bytes_copied"] <= 2 * MiB  # only the pieces of the replaced part
    assert doc["data"]["bytes_copied"] + doc["data"]["bytes_resumed"] == total
    assert tree_bytes(out) == tree_bytes(carry_v5)


def test_extra_files_and_parts_of_another_bundle_are_named(cli: Cli, parts: Path, carry_v6: Path,
                                                           keys: dict[str, KeyPair], tmp_path: Path) -> None:
    from gptossctl.bundle.parts import split_bundle

    other = tmp_path / "other"
    split_bundle(carry_v6, other, part_size=3 * MiB)
    foreign = part_files(other)[0]
    shutil.copyfile(foreign, parts / "stray.part")
    (parts / "notes.txt").write_text("hello\n")
    code, doc = cli("bundle", "verify", str(parts), *trust(keys))
    assert code == 1
    assert sorted((f["code"], Path(f["subject"]).name) for f in doc["findings"]) == [
        ("parts.extra_file", "notes.txt"), ("parts.foreign", "stray.part")]
    assert "v6" in next(f for f in doc["findings"] if f["code"] == "parts.foreign")["message"]
    code, doc = cli("bundle", "join", str(parts), "--out", str(tmp_path / "j"), *trust(keys))
    assert code == 0, doc  # not needed, so not fatal to the join, but named
    assert sorted(Path(f["subject"]).name for f in doc["data"]["ignored"]) == ["notes.txt", "stray.part"]


def test_a_data_diode_receiver_knows_exactly_what_is_still_missing(cli: Cli, carry_parts: Path,
                                                                  keys: dict[str, KeyPair], tmp_path: Path) -> None:
    """Parts arrive one way, in any order, some twice; after each, verify names exactly the rest."""
    files = part_files(carry_parts)
    rng = random.Random(5)
    arrivals = files + rng.sample(files, 3)
    rng.shuffle(arrivals)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    received: set[str] = set()
    for n, f in enumerate(arrivals):
        shutil.copyfile(f, inbox / f"{n:03d}-{f.name}")
        received.add(f.name)
        code, doc = cli("bundle", "verify", str(inbox), *trust(keys))
        missing = sorted(f["subject"] for f in doc["findings"] if f["code"] == "parts.missing")
        assert missing == sorted({p.name for p in files} - received)
        assert code == (0 if not missing else 1)
        assert set(finding_codes(doc)) <= {"parts.missing"}


def test_an_interrupted_split_resumes_and_leaves_nothing_else(cli: Cli, carry_v5: Path, keys: dict[str, KeyPair],
                                                              tmp_path: Path) -> None:
    """A split killed half-way is run again: its verified pieces are kept, what else is there is dropped."""
    from gptossctl.bundle.parts import split_bundle
    from gptossctl.bundle.transfer import JOURNAL_NAME

    out = tmp_path / "p"
    split_bundle(carry_v5, tmp_path / "first", part_size=3 * MiB)
    (tmp_path / "first").rename(tmp_path / "p.partial")  # as a run that stopped before the rename
    (tmp_path / "p.partial" / JOURNAL_NAME).write_text('{"schema": "gptossctl.transfer-journal/1"}\n')
    (tmp_path / "p.partial" / "leftover.part").write_bytes(b"old")
    code, doc = cli("bundle", "split", str(carry_v5), "--out", str(out), "--part-size", "3MiB")
    assert code == 0, doc
    assert sorted(p.name for p in out.iterdir()) == sorted([*(e["name"] for e in doc["data"]["parts"]), "parts.json"])
    assert cli("bundle", "verify", str(out), *trust(keys))[0] == 0
