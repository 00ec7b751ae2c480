"""Hostile carriers and signers, through the installed console script (red-team findings 26, 32, 02, 07, 05):
a planted work directory (OUT.partial, the incoming directory of a part copy) that is a link or someone else's,
an envelope stuffed with signatures, a second build under an installed version, degenerate Ed25519 keys, and
an audit trail that must not take its user from the environment.

Each case was run against the code before its fix and failed there (see the commit messages).
"""

# ruff: noqa: F811 - `world` is the fixture imported from test_hostile_inputs, taken as a parameter
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.test_hostile_inputs import (  # noqa: F401 - `world` is a fixture: importing registers it
    World,
    _run,
    _state,
    world,
)

pytestmark = pytest.mark.integration
GPTOSSCTL = Path(sys.executable).with_name("gptossctl")
NOBODY = 65534


def _doc(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    doc: dict[str, Any] = json.loads(r.stdout)  # exactly one document
    assert doc["schema"] == "gptossctl.result/1" and doc["exit_code"] == r.returncode
    return doc


def _codes(doc: dict[str, Any]) -> list[str]:
    return [(doc.get("error") or {}).get("code", "")] + [f.get("code", "") for f in doc.get("findings", [])]


# ---------------------------------------------------------------- 26: planted work directories

def _victim(tmp: Path) -> Path:
    victim = tmp / "victim"
    victim.mkdir()
    (victim / "policy.json").write_text("keep-me\n")
    (victim / "approver.pub").write_text("keep-me\n")
    return victim


def _link(victim: Path, work: Path) -> None:
    work.symlink_to(victim, target_is_directory=True)


def _foreign(victim: Path, work: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a directory another user owns needs root")
    victim.rename(work)  # the planted directory itself, owned by someone else
    os.chown(work, NOBODY, NOBODY)


def _split_parts(w: World, tmp: Path) -> Path:
    parts = tmp / "parts"
    r = subprocess.run([str(GPTOSSCTL), "bundle", "split", w.paths["bundle"], "--out", str(parts), "--part-size",
                        "1108480"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return parts


def _copy(w: World, tmp: Path, out: Path) -> list[str]:
    return ["bundle", "copy", w.paths["bundle"], str(out)]


def _split(w: World, tmp: Path, out: Path) -> list[str]:
    return ["bundle", "split", w.paths["bundle"], "--out", str(out), "--part-size", "1108480"]


def _join(w: World, tmp: Path, out: Path) -> list[str]:
    return ["bundle", "join", str(_split_parts(w, tmp)), "--out", str(out)]


def _copy_parts(w: World, tmp: Path, out: Path) -> list[str]:
    return ["bundle", "copy", str(_split_parts(w, tmp)), str(out)]


COMMANDS: dict[str, tuple[Callable[[World, Path, Path], list[str]], str]] = {
    "copy": (_copy, "new.partial"),
    "split": (_split, "new.partial"),
    "join": (_join, "new.partial"),
    "copy-parts": (_copy_parts, "new/.gptossctl-incoming"),
}


@pytest.mark.parametrize("plant", [_link, _foreign], ids=["link", "foreign-owner"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_planted_work_directory_is_refused_before_anything_is_touched(command: str, plant: Callable[[Path, Path],
                                                                        None], world: World, tmp_path: Path) -> None:
    make_argv, work_rel = COMMANDS[command]
    inbox = tmp_path / "inbox"
    work = inbox / work_rel
    work.parent.mkdir(parents=True)
    victim = _victim(tmp_path)
    argv = make_argv(world, tmp_path, inbox / "new")
    plant(victim, work)
    watched = work if work.is_dir() and not work.is_symlink() else victim
    before = _state(watched)
    doc = _doc(r := _run(argv, {}))
    assert r.returncode == 2, doc
    code = "output.work_is_link" if plant is _link else "output.work_not_owned"
    assert code in _codes(doc) and str(work) in doc["error"]["message"], doc["error"]
    assert doc["error"]["hint"]
    assert _state(watched) == before, "the planted directory's content changed"
    assert not (inbox / "new").exists() or command == "copy-parts"
    if command == "copy-parts":
        assert sorted(p.name for p in (inbox / "new").iterdir()) == [".gptossctl-incoming"]
    shutil.rmtree(tmp_path / "inbox", ignore_errors=True)


# ---------------------------------------------------------------- 32: an envelope stuffed with signatures

def _stuffed(w: World, tmp: Path, extra: int) -> Path:
    bundle = tmp / "bundle"
    shutil.copytree(w.paths["bundle"], bundle, symlinks=True)
    env_path = bundle / "manifest.dsse.json"
    env = json.loads(env_path.read_text())
    junk = base64.b64encode(bytes(64)).decode()
    env["signatures"] += [{"keyid": f"{i:064x}", "sig": junk} for i in range(extra)]
    env_path.write_text(json.dumps(env))
    return bundle


@pytest.mark.parametrize("extra", [64, 100_000])
def test_an_envelope_with_more_than_64_signatures_is_malformed_with_one_finding(extra: int, world: World,
                                                                                tmp_path: Path) -> None:
    bundle = _stuffed(world, tmp_path, extra)  # the real one plus `extra`: always more than 64
    started = time.monotonic()
    r = _run(["bundle", "verify", str(bundle), "--trust", world.paths["pub"]], {})
    doc = _doc(r)
    assert r.returncode == 1 and time.monotonic() - started < 30, (r.returncode, doc.get("error"))
    assert [f["code"] for f in doc["findings"]] == ["envelope.malformed"], doc["findings"][:3]
    assert len(r.stdout) + len(r.stderr) < 64 << 10


def test_an_envelope_with_64_signatures_is_still_read(world: World, tmp_path: Path) -> None:
    bundle = _stuffed(world, tmp_path, 63)  # the cap itself: parsed, and each junk signature is untrusted
    doc = _doc(r := _run(["bundle", "verify", str(bundle), "--trust", world.paths["pub"]], {}))
    assert r.returncode == 1 and "envelope.malformed" not in _codes(doc), doc.get("error")
    assert "signature.untrusted_key" in _codes(doc)
