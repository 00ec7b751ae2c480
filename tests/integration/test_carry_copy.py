"""`bundle copy` through the real console script: killed mid-file and resumed, interrupted with Ctrl-C, a disk
too small, a disk that fills up mid-copy (a real tmpfs), damaged sources, parts collected from two media."""

# ruff: noqa: F811 - fixtures imported from carry_bundles come back as test parameters
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gptossctl.bundle.keys import load_public_key
from gptossctl.bundle.verify import TrustPolicy, verify_bundle
from tests.conftest import KeyPair, pack
from tests.integration.carry_bundles import (  # noqa: F401 - fixtures
    Cli,
    MiB,
    big_model,
    carry_model,
    carry_parts,
    carry_v5,
    console_script,
    env,
    flip_bit,
    part_files,
    tree_bytes,
    trust,
)

pytestmark = pytest.mark.integration
JOURNAL = ".gptossctl-transfer.jsonl"


@pytest.fixture(scope="session")
def big_bundle(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, KeyPair]) -> Path:
    """About 300 MiB in three 100 MiB files, 16 MiB shards: long enough to be caught mid-file."""
    model = big_model(tmp_path_factory.mktemp("big-model") / "m", [100 * MiB] * 3, seed=11)
    return pack(tmp_path_factory.mktemp("big") / "bundle", model, [keys["alice"]], version=7, shard_size=16 * MiB)


def _start(*args: str) -> subprocess.Popen[str]:
    # Ctrl-C as a terminal delivers it: a runner started in the background (SIGINT ignored, inherited
    # through exec) must not make the copy deaf to it.
    return subprocess.Popen([console_script(), "bundle", "copy", *args, "--json"], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _records(work: Path) -> int:
    try:
        return max(0, (work / JOURNAL).read_text().count("\n") - 1)  # minus the schema line
    except FileNotFoundError:
        return 0


def _wait_for(proc: subprocess.Popen[str], ready: Any, what: str) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, f"copy ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _run(*args: str) -> tuple[int, dict[str, Any]]:
    res = subprocess.run([console_script(), "bundle", "copy", *args, "--json"], env=env(), capture_output=True,
                         text=True, check=False)
    return res.returncode, json.loads(res.stdout)


def _growing_file(work: Path) -> bool:
    """Some payload file exists and is not yet at its journaled end: the copy is inside a file."""
    return any(p.stat().st_size % (16 * MiB) for p in (work / "payload").rglob("*.safetensors")
               if p.name.startswith("model-extra")) if (work / "payload").exists() else False


def test_copy_killed_mid_file_resumes_from_what_is_verified(big_bundle: Path, keys: dict[str, KeyPair],
                                                            tmp_path: Path) -> None:
    dst = tmp_path / "copy"
    work = tmp_path / "copy.partial"
    proc = _start(str(big_bundle), str(dst), "--limit-rate", "60M", "--workers", "1")
    _wait_for(proc, lambda: _records(work) >= 4 and _growing_file(work), "four verified pieces and a file mid-way")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the copy finished before it could be killed"
    assert not dst.exists(), "a killed copy must not leave a destination that looks complete"
    journaled = _records(work)
    code, doc = _run(str(big_bundle), str(dst))
    assert code == 0, doc
    total = sum(p.stat().st_size for p in (big_bundle / "payload").rglob("*") if p.is_file())
    assert journaled >= 4 and doc["data"]["bytes_resumed"] >= journaled * 16 * MiB
    assert doc["data"]["bytes_copied"] < total
    assert doc["data"]["bytes_copied"] + doc["data"]["bytes_resumed"] == total
    assert not work.exists()
    verify_bundle(dst, TrustPolicy((load_public_key(keys["alice"].public),)))
    assert tree_bytes(dst) == tree_bytes(big_bundle)


def test_ctrl_c_stops_the_copy_and_the_next_run_resumes(carry_v5: Path, tmp_path: Path) -> None:
    dst, work = tmp_path / "copy", tmp_path / "copy.partial"
    # 1 MiB/s: the 16 MiB copy takes about 16 s, so a test process starved for seconds on busy cores still
    # interrupts it mid-way (at 4 MiB/s a loaded CI finished the copy before the signal landed).
    proc = _start(str(carry_v5), str(dst), "--limit-rate", "1M", "--workers", "1")
    _wait_for(proc, lambda: _records(work) >= 2, "two verified pieces")
    proc.send_signal(signal.SIGINT)
    out, _err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert json.loads(out)["error"]["code"] == "transfer.interrupted"
    assert not dst.exists()
    code, doc = _run(str(carry_v5), str(dst))
    assert code == 0 and doc["data"]["bytes_resumed"] >= 2 * MiB
    assert tree_bytes(dst) == tree_bytes(carry_v5)


@pytest.fixture()
def mounts() -> Iterator[list[Path]]:
    """Real small filesystems (tmpfs); tests run as root, so this is never skipped."""
    made: list[Path] = []
    yield made
    for m in made:
        subprocess.run(["umount", "-l", str(m)], check=True)


def _tmpfs(path: Path, size: int, mounts: list[Path]) -> Path:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    mounts.append(path)
    return path


def test_a_disk_too_small_is_refused_before_anything_is_written(carry_v5: Path, tmp_path: Path,
                                                                mounts: list[Path]) -> None:
    disk = _tmpfs(tmp_path / "small", 8 * MiB, mounts)
    code, doc = _run(str(carry_v5), str(disk / "copy"))
    assert code == 1 and doc["error"]["code"] == "transfer.insufficient_disk"
    msg = doc["error"]["message"]
    assert ("MiB free" in msg or "GiB free" in msg) and "0.00 GiB" not in msg and "free" in doc["error"]["hint"]
    assert list(disk.iterdir()) == []


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush (and fail) on close
        try:
            while True:
                f.write(b"\xff" * MiB)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_disk_that_fills_mid_copy_exits_4_and_the_copy_resumes(carry_v5: Path, keys: dict[str, KeyPair],
                                                                  tmp_path: Path, mounts: list[Path]) -> None:
    disk = _tmpfs(tmp_path / "stick", 48 * MiB, mounts)  # the bundle (16 MiB) and the margin fit
    dst, work = disk / "copy", disk / "copy.partial"
    proc = _start(str(carry_v5), str(dst), "--limit-rate", "2M", "--workers", "1")
    _wait_for(proc, lambda: _records(work) >= 2, "two verified pieces")
    proc.send_signal(signal.SIGSTOP)  # past the space check: now something else fills the disk
    filler = _fill(disk)
    proc.send_signal(signal.SIGCONT)
    out, _err = proc.communicate(timeout=120)
    doc = json.loads(out)
    assert proc.returncode == 4, doc["error"]
    assert doc["error"]["code"] == "transfer.disk_full" and "run the same command again" in doc["error"]["hint"]
    assert not dst.exists()
    filler.unlink()
    code, doc = _run(str(carry_v5), str(dst))
    assert code == 0, doc
    assert doc["data"]["bytes_resumed"] >= 2 * MiB
    verify_bundle(dst, TrustPolicy((load_public_key(keys["alice"].public),)))


def test_a_damaged_source_is_named_and_nothing_complete_is_left(cli: Cli, carry_v5: Path,
                                                                tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(carry_v5, src)
    flip_bit(src / "payload/model/model-extra-2.safetensors", 3 * MiB + 17)
    code, doc = cli("bundle", "copy", str(src), str(tmp_path / "dst"))
    assert code == 1 and doc["error"]["code"] == "copy.incomplete"
    assert [(f["code"], f["subject"]) for f in doc["findings"]] == [
        ("bundle.digest_mismatch", "model/model-extra-2.safetensors (shard 3)")]
    assert not (tmp_path / "dst").exists()


def test_copy_refuses_an_existing_destination(cli: Cli, carry_v5: Path) -> None:
    code, doc = cli("bundle", "copy", str(carry_v5), str(carry_v5))
    assert code == 2 and doc["error"]["code"] == "copy.out_inside_source"  # the same place: never a copy onto itself


def test_parts_collected_from_two_media_into_one_directory(cli: Cli, carry_parts: Path, keys: dict[str, KeyPair],
                                                           tmp_path: Path) -> None:
    files = part_files(carry_parts)
    stick1, stick2, inbox = tmp_path / "stick1", tmp_path / "stick2", tmp_path / "inbox"
    stick1.mkdir()
    stick2.mkdir()
    for i, f in enumerate(files):
        shutil.copyfile(f, (stick1 if i < 4 else stick2) / f.name)
    code, doc = cli("bundle", "copy", str(stick1), str(inbox), *trust(keys))
    assert code == 0, doc
    assert doc["data"]["parts_copied"] == [f.name for f in files[:4]]
    code, doc = cli("bundle", "verify", str(inbox), *trust(keys))
    assert code == 1 and sorted(f["subject"] for f in doc["findings"]) == [f.name for f in files[4:]]
    code, doc = cli("bundle", "copy", str(stick2), str(inbox))
    assert code == 0 and doc["data"]["parts_copied"] == [f.name for f in files[4:]]
    code, doc = cli("bundle", "copy", str(stick1), str(inbox))  # the same stick again: nothing to do
    assert code == 0 and doc["data"]["parts_already_there"] == [f.name for f in files[:4]]
    assert doc["data"]["bytes_copied"] == 0
    assert not (inbox / ".gptossctl-incoming").exists()
    assert cli("bundle", "verify", str(inbox), *trust(keys))[0] == 0
    assert sorted(p.name for p in part_files(inbox)) == sorted(f.name for f in files)
    for f in files:
        assert (inbox / f.name).read_bytes() == f.read_bytes()


def test_a_damaged_part_is_not_copied_in(cli: Cli, carry_parts: Path, tmp_path: Path) -> None:
    stick = tmp_path / "stick"
    shutil.copytree(carry_parts, stick)
    victim = part_files(stick)[2]
    flip_bit(victim, victim.stat().st_size - 3)
    code, doc = cli("bundle", "copy", str(stick), str(tmp_path / "inbox"))
    assert code == 1 and doc["error"]["code"] == "copy.incomplete"
    assert [f["subject"] for f in doc["findings"]] == [str(victim)]
    assert not (tmp_path / "inbox" / victim.name).exists()
    assert len(part_files(tmp_path / "inbox")) == len(part_files(stick)) - 1
    os.sync()


def test_part_files_named_one_by_one_are_copied_like_cp(cli: Cli, carry_parts: Path, tmp_path: Path) -> None:
    files = part_files(carry_parts)
    stick = tmp_path / "stick"
    code, doc = cli("bundle", "copy", str(files[0]), str(files[2]), str(stick))
    assert code == 0, doc
    assert sorted(p.name for p in part_files(stick)) == [files[0].name, files[2].name]
    code, doc = cli("bundle", "copy", str(carry_parts), str(files[0]), str(stick))
    assert code == 0 and doc["data"]["parts_already_there"] == [files[0].name, files[2].name]
    assert len(part_files(stick)) == len(files)
