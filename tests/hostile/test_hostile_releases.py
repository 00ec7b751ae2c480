"""`releases list | prune` through the installed console script, on a staged root with four releases: what prune
removes and keeps, what it frees (against du), refusals that change nothing, a foreign folder left alone, and a
release record forged by root flagged, never chosen.

The harness is tests/hostile/test_hostile_inputs.py's: exit code, exactly one result document, no traceback, and
the tree compared byte for byte before and after (`_state`)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KeyPair, pack
from tests.hostile.test_hostile_inputs import GPTOSSCTL, _run, _state

pytestmark = pytest.mark.integration
INSTANCE = "tiny-gpt-oss"
REL = f"opt/gptoss/{INSTANCE}/releases"


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, keys: dict[str, KeyPair]) -> Path:
    """Releases 1-4 installed in turn (4 current, 3 the rollback target), and someone's folder among them."""
    base = tmp_path_factory.mktemp("releases")
    root = base / "root"
    for v in (1, 2, 3, 4):
        b = pack(base / f"b{v}", tiny_model, [keys["alice"]], version=v)
        r = subprocess.run([str(GPTOSSCTL), "install", str(b), "--trust", str(keys["alice"].public), "--root",
                            str(root), "--vllm-python", sys.executable, "--json"], capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (root / REL / "backup-before-upgrade").mkdir()
    (root / REL / "backup-before-upgrade/notes.txt").write_text("the site's own copy\n")
    return root


@pytest.fixture()
def root(four: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "root"
    shutil.copytree(four, dst, symlinks=True)
    return dst


def _cli(*argv: str) -> tuple[int, dict[str, Any]]:
    r = _run(list(argv), {})
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    doc = json.loads(r.stdout)  # exactly one document
    assert doc["schema"] == "gptossctl.result/1" and doc["exit_code"] == r.returncode
    err = doc.get("error")
    if r.returncode and err:  # refused: the error says what and what to do
        assert err["code"] and err["message"] and err["hint"] and "internal error" not in err["message"], err
    elif r.returncode:  # checked and failed: every finding says what to do
        assert doc["findings"] and all(f.get("hint") for f in doc["findings"]), doc
    return r.returncode, doc


def _du(path: Path) -> int:
    return int(subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True)
               .stdout.split()[0])


def _whole(root: Path) -> dict[str, tuple[int, int, str]]:
    """Everything under the root, the audit log included (_state leaves it aside)."""
    return {**_state(root), **{f"audit/{k}": v for k, v in _state(root / "var/log/gptoss").items()}}


def _versions(doc: dict[str, Any], key: str = "releases") -> list[tuple[Any, str]]:
    return [(r.get("version") if r.get("version") is not None else r["name"], r["state"]) for r in doc["data"][key]]


def test_list_shows_current_rollback_target_retired_and_the_foreign_folder(root: Path) -> None:
    code, doc = _cli("releases", "list", "--root", str(root), "--instance", INSTANCE)
    assert code == 0, doc
    assert _versions(doc) == [(4, "current"), (3, "rollback target"), (2, "retired"), (1, "retired"),
                              ("backup-before-upgrade", "foreign")]
    assert [f["code"] for f in doc["findings"]] == ["releases.foreign"]


def test_prune_keeps_current_and_rollback_target_and_frees_what_du_measures(root: Path) -> None:
    rel = root / REL
    sizes = {v: _du(rel / str(v)) for v in (1, 2, 3)}
    foreign = _state(rel / "backup-before-upgrade")
    entries = len((root / "var/log/gptoss/audit.jsonl").read_text().splitlines())
    # --keep 1 still keeps the rollback target (3): whatever N is.
    code, doc = _cli("releases", "prune", "--root", str(root), "--instance", INSTANCE, "--keep", "1")
    assert code == 0, doc
    d = doc["data"]
    assert [(r["version"], r["state"]) for r in d["removed"]] == [(1, "retired"), (2, "retired")]
    assert [r["bytes_freed"] for r in d["removed"]] == [sizes[1], sizes[2]]
    assert d["bytes_freed"] == sizes[1] + sizes[2] > 0
    assert sorted(p.name for p in rel.iterdir()) == ["3", "4", "backup-before-upgrade"]  # no trash left behind
    assert os.readlink(root / f"opt/gptoss/{INSTANCE}/current") == "releases/4"
    assert _state(rel / "backup-before-upgrade") == foreign
    # One audit entry per release removed, in an intact chain.
    log = [json.loads(ln) for ln in (root / "var/log/gptoss/audit.jsonl").read_text().splitlines()]
    assert [(e["result"], e["prune"]["version"], e["prune"]["bytes_freed"]) for e in log[entries:]] == \
        [("ok", 1, sizes[1]), ("ok", 2, sizes[2])]
    assert all(e["prune"]["schema"] == "gptossctl.release-prune/1" for e in log[entries:])
    assert _cli("audit", "verify", "--root", str(root))[0] == 0
    code, doc = _cli("releases", "list", "--root", str(root), "--instance", INSTANCE)
    assert code == 0 and _versions(doc)[:2] == [(4, "current"), (3, "rollback target")]
    # Nothing more to remove: current and rollback target stay whatever --keep says.
    code, doc = _cli("releases", "prune", "--root", str(root), "--instance", INSTANCE, "--keep", "1")
    assert code == 0 and doc["data"]["removed"] == [] and doc["data"]["bytes_freed"] == 0


def test_prune_dry_run_says_what_would_go_and_changes_nothing(root: Path) -> None:
    before = _whole(root)
    code, doc = _cli("releases", "prune", "--root", str(root), "--keep", "3", "--dry-run")
    assert code == 0 and [r["version"] for r in doc["data"]["removed"]] == [1], doc
    assert doc["data"]["bytes_freed"] == _du(root / REL / "1")
    assert _whole(root) == before


@pytest.mark.parametrize("keep,code", [("0", "releases.bad_keep"), ("-1", "releases.bad_keep")])
def test_keep_below_one_is_usage_and_changes_nothing(root: Path, keep: str, code: str) -> None:
    before = _whole(root)
    rc, doc = _cli("releases", "prune", "--root", str(root), "--instance", INSTANCE, "--keep", keep)
    assert rc == 2 and doc["error"]["code"] == code, doc
    assert "--keep" in doc["error"]["hint"]
    assert _whole(root) == before


def test_prune_is_refused_while_another_gptossctl_holds_the_lock(root: Path) -> None:
    before = _state(root)
    fd = os.open(root / "opt/gptoss/.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as an install in progress holds it
        rc, doc = _cli("releases", "prune", "--root", str(root), "--instance", INSTANCE, "--keep", "1")
    finally:
        os.close(fd)
    assert rc == 2 and doc["error"]["code"] == "lock.busy", doc
    assert _state(root) == before
    assert json.loads((root / "var/log/gptoss/audit.jsonl").read_text().splitlines()[-1])["result"] == \
        "failed: lock.busy"  # the refusal is on record


def _forge_in_place(root: Path) -> str:
    """Root edits release 2's record to claim it is release 9."""
    p = root / REL / "2/release.json"
    doc = json.loads(p.read_text())
    doc["version"] = 9
    p.write_text(json.dumps(doc, indent=2) + "\n")
    return "2"


def _forge_copy(root: Path) -> str:
    """Root copies release 3 as release 9 with a record to match (version 9): the newest number on disk."""
    shutil.copytree(root / REL / "3", root / REL / "9", symlinks=True)
    p = root / REL / "9/release.json"
    doc = json.loads(p.read_text())
    doc["version"] = 9
    p.write_text(json.dumps(doc, indent=2) + "\n")
    return "9"


@pytest.mark.parametrize("forge", [_forge_in_place, _forge_copy], ids=["record-edited", "release-copied"])
def test_a_forged_release_record_is_flagged_never_current_and_never_pruned(root: Path,
                                                                           forge: Callable[[Path], str]) -> None:
    name = forge(root)
    code, doc = _cli("releases", "list", "--root", str(root), "--instance", INSTANCE)
    assert code == 1, doc
    states = {r["name"]: r["state"] for r in doc["data"]["releases"]}
    assert states[name] == "unaudited" and states["4"] == "current" and doc["data"]["current"] == 4
    flagged = [f for f in doc["findings"] if f["code"] == "releases.unaudited"]
    assert [f["subject"] for f in flagged] == [f"/{REL}/{name}"] and flagged[0]["hint"]
    forged = _state(root / REL / name)
    code, doc = _cli("releases", "prune", "--root", str(root), "--instance", INSTANCE, "--keep", "1")
    assert code == 0, doc
    assert name not in [r["name"] for r in doc["data"]["removed"]]
    assert _state(root / REL / name) == forged  # evidence kept


def test_current_pointed_at_a_forged_release_is_never_chosen_and_prune_refuses(root: Path) -> None:
    _forge_copy(root)
    link = root / f"opt/gptoss/{INSTANCE}/current"
    link.unlink()
    link.symlink_to("releases/9")
    code, doc = _cli("releases", "list", "--root", str(root), "--instance", INSTANCE)
    assert code == 1 and doc["data"]["current"] is None, doc
    assert "releases.current_unaudited" in [f["code"] for f in doc["findings"]]
    assert "current" not in [r["state"] for r in doc["data"]["releases"]]
    before = _state(root)
    code, doc = _cli("releases", "prune", "--root", str(root), "--instance", INSTANCE, "--keep", "1")
    assert code == 1 and doc["error"]["code"] == "releases.current_unaudited", doc
    assert _state(root) == before


def test_a_prune_interrupted_after_the_rename_never_leaves_a_release_that_looks_whole(root: Path) -> None:
    """What a crash between the rename and the delete leaves: `.1.pruning`, not `1`; the next prune removes it."""
    rel = root / REL
    os.rename(rel / "1", rel / ".1.pruning")
    (rel / ".1.pruning/payload").chmod(0o755)
    code, doc = _cli("releases", "list", "--root", str(root), "--instance", INSTANCE)
    assert code == 0 and (".1.pruning", "leftover") in [(r["name"], r["state"]) for r in doc["data"]["releases"]]
    assert 1 not in [r["version"] for r in doc["data"]["releases"] if r["state"] != "leftover"]
    left = _du(rel / ".1.pruning")
    code, doc = _cli("releases", "prune", "--root", str(root), "--instance", INSTANCE, "--keep", "3")
    assert code == 0 and [(r["name"], r["bytes_freed"]) for r in doc["data"]["removed"]] == [(".1.pruning", left)]
    assert sorted(p.name for p in rel.iterdir()) == ["2", "3", "4", "backup-before-upgrade"]


def test_a_drifted_copy_set_aside_by_repair_is_evidence_listed_and_never_pruned(root: Path) -> None:
    """`.N.replaced` is the drifted copy `install --repair` set aside (tampering evidence): `releases list` shows
    it as `evidence`, prune leaves it, and it is not mistaken for a release or a leftover."""
    rel = root / REL
    shutil.copytree(rel / "1", rel / ".1.replaced", symlinks=True)
    (rel / ".1.replaced/payload").chmod(0o755)
    drifted = _state(rel / ".1.replaced")
    code, doc = _cli("releases", "list", "--root", str(root), "--instance", INSTANCE)
    assert code == 0 and (".1.replaced", "evidence") in [(r["name"], r["state"]) for r in doc["data"]["releases"]]
    for keep in ("1", "3"):
        code, doc = _cli("releases", "prune", "--root", str(root), "--instance", INSTANCE, "--keep", keep)
        assert code == 0 and ".1.replaced" not in [r["name"] for r in doc["data"]["removed"]], doc
        assert _state(rel / ".1.replaced") == drifted
