"""Hostile carriers and signers, through the installed console script (red-team findings 26, 32, 02, 07, 05):
a planted work directory (OUT.partial, the incoming directory of a part copy) that is a link or someone else's,
an envelope stuffed with signatures, a second build under an installed version, degenerate Ed25519 keys, and
an audit trail that must not take its user from the environment.

Each case was run against the code before its fix and failed there (see the commit messages).
"""

# ruff: noqa: F811 - `world` is the fixture imported from test_hostile_inputs, taken as a parameter
from __future__ import annotations

import base64
import hashlib
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

from gptossctl.bundle.keys import SMALL_ORDER_ENCODINGS, PublicKey, weak_key_reason
from tests.conftest import PASSPHRASE
from tests.hostile.test_hostile_inputs import (  # noqa: F401 - `world` is a fixture: importing registers it
    World,
    _root_copy,
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


def test_copy_of_parts_never_writes_parts_json_through_a_planted_link(world: World, tmp_path: Path) -> None:
    parts = _split_parts(world, tmp_path)
    dst = tmp_path / "inbox"
    dst.mkdir()
    target = tmp_path / "elsewhere" / "planted"
    target.parent.mkdir()
    (dst / "parts.json").symlink_to(target)  # dangling: "missing" to exists(), yet a write would land there
    doc = _doc(r := _run(["bundle", "copy", str(parts), str(dst)], {}))
    assert r.returncode == 0, doc.get("error")
    assert not target.exists() and (dst / "parts.json").is_symlink()


def test_a_work_directory_swapped_for_a_link_mid_run_receives_nothing(tmp_path: Path) -> None:
    """Whoever can write the inbox renames OUT.partial away while pieces are copied and puts a link to a
    victim directory in its place: every write goes on into the directory first opened, none through the link."""
    from gptossctl.bundle.pieces import Source
    from gptossctl.bundle.transfer import Job, TransferOptions, run_transfer

    data = b"x" * (3 << 20)
    src = tmp_path / "src"
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    jobs = [Job(f"payload/d{i}/f", 0, len(data), digest, (Source(src, 0, "src"),), f"piece {i}") for i in range(3)]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    work, moved, victim = inbox / "new.partial", inbox / "moved", _victim(tmp_path)
    before = _state(victim)

    def swap(_n: int) -> None:
        if not moved.exists():
            work.rename(moved)
            work.symlink_to(victim, target_is_directory=True)

    report = run_transfer(work, jobs, TransferOptions(workers=1, progress=swap))
    assert not report.failures and _state(victim) == before
    assert all((moved / j.dst).read_bytes() == data for j in jobs)


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
    bundle = _stuffed(world, tmp_path, 63)  # the cap itself: parsed, and each junk signature is an unknown signer
    doc = _doc(r := _run(["bundle", "verify", str(bundle), "--trust", world.paths["pub"]], {}))
    # The trusted key's own signature meets the threshold; the 63 others are notes, never counted (trust root).
    assert r.returncode == 0 and "envelope.malformed" not in _codes(doc), doc.get("error")
    assert {n["code"] for n in doc["data"]["notes"]} == {"signature.unknown_signer"} and len(doc["data"]["notes"]) == 63


# ---------------------------------------------------------------- 07: degenerate Ed25519 public keys

AUDIT_SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "audit-verify.sh"
_P = 2**255 - 19
NON_CANONICAL = [(_P + 1).to_bytes(32, "little"),  # y = 1 again, above p
                 (_P + 5).to_bytes(32, "little"),
                 ((1 << 255) - 1).to_bytes(32, "little"),
                 ((1 << 256) - 1).to_bytes(32, "little")]
WEAK = [*SMALL_ORDER_ENCODINGS, *NON_CANONICAL]


def _pem(raw: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw).public_bytes(serialization.Encoding.PEM,
                                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def _mul8_is_identity(raw: bytes) -> bool:
    """[8]P == identity for the point raw encodes (plain Edwards arithmetic; x = 0 with the sign bit set
    decodes to x = 0, as lax decoders do)."""
    p, d = _P, (-121665 * pow(121666, _P - 2, _P)) % _P
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    u, v = (y * y - 1) % p, (d * y * y + 1) % p
    x2 = u * pow(v, p - 2, p) % p
    x = pow(x2, (p + 3) // 8, p)
    if (x * x - x2) % p:
        x = x * pow(2, (p - 1) // 4, p) % p
    assert (x * x - x2) % p == 0, "not a point"
    if x % 2 != raw[31] >> 7:
        x = (p - x) % p
    pt = (x, y)
    for _ in range(3):
        (x1, y1) = pt
        t = d * x1 * x1 * y1 * y1 % p
        pt = ((2 * x1 * y1) * pow(1 + t, p - 2, p) % p, (y1 * y1 + x1 * x1) * pow(1 - t, p - 2, p) % p)
    return pt == (0, 1)


def test_the_small_order_list_is_exactly_the_eight_points_with_both_sign_bits() -> None:
    assert len(set(SMALL_ORDER_ENCODINGS)) == 10 and all(_mul8_is_identity(r) for r in SMALL_ORDER_ENCODINGS)
    ys = {int.from_bytes(r, "little") & ((1 << 255) - 1) for r in SMALL_ORDER_ENCODINGS}
    assert len(ys) == 5  # 0, 1, p - 1 and the two y of the order-8 points: each with both sign bits
    shell = AUDIT_SCRIPT.read_text()
    assert all(r.hex() in shell for r in SMALL_ORDER_ENCODINGS)  # the auditor's list is the same list
    assert weak_key_reason(b"\x05" + bytes(31)) is None  # an ordinary y is not refused by accident


@pytest.mark.parametrize("raw", WEAK, ids=[r.hex()[:6] + ".." + r.hex()[-2:] for r in WEAK])
def test_keys_show_refuses_a_weak_public_key(raw: bytes, tmp_path: Path) -> None:
    pub = tmp_path / "bob.pub"
    pub.write_bytes(_pem(raw))
    doc = _doc(r := _run(["keys", "show", str(pub)], {}))
    assert r.returncode == 2 and doc["error"]["code"] == "key.weak" and str(pub) in doc["error"]["message"], doc


def _forged_cosignature(w: World, tmp: Path) -> tuple[Path, Path]:
    """The bundle with a second 'signature' (R = identity, S = 0) under the identity key, and that key."""
    bundle = tmp / "bundle"
    shutil.copytree(w.paths["bundle"], bundle, symlinks=True)
    raw = SMALL_ORDER_ENCODINGS[2]
    pub = tmp / "bob.pub"
    pub.write_bytes(_pem(raw))
    env_path = bundle / "manifest.dsse.json"
    env = json.loads(env_path.read_text())
    env["signatures"].append({"keyid": hashlib.sha256(raw).hexdigest(),
                              "sig": base64.b64encode(raw + bytes(32)).decode()})
    env_path.write_text(json.dumps(env, indent=1) + "\n")
    return bundle, pub


def test_a_forged_cosignature_under_a_small_order_key_never_counts(world: World, tmp_path: Path) -> None:
    bundle, pub = _forged_cosignature(world, tmp_path)
    root = tmp_path / "root"
    for argv in (["bundle", "verify", str(bundle)],
                 ["install", str(bundle), "--root", str(root), "--yes", "--vllm-python", sys.executable]):
        doc = _doc(r := _run([*argv, "--trust", world.paths["pub"], "--trust", str(pub), "--threshold", "2"], {}))
        assert r.returncode == 2 and doc["error"]["code"] == "key.weak", doc
    assert not (root / "opt").exists()
    # Loaded some other way, the key's signature still does not verify.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = PublicKey("x", Ed25519PublicKey.from_public_bytes(SMALL_ORDER_ENCODINGS[2]))
    assert not key.verify(SMALL_ORDER_ENCODINGS[2] + bytes(32), b"any message")


def test_the_auditor_script_refuses_a_weak_key(world: World, tmp_path: Path) -> None:
    bundle, pub = _forged_cosignature(world, tmp_path)
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    for raw in (SMALL_ORDER_ENCODINGS[2], SMALL_ORDER_ENCODINGS[5], NON_CANONICAL[1]):
        pub.write_bytes(_pem(raw))
        r = subprocess.run(["sh", str(AUDIT_SCRIPT), str(bundle), "--threshold", "2", world.paths["pub"], str(pub)],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "weak" in r.stderr, (raw.hex(), r.stdout, r.stderr)
    good = subprocess.run(["sh", str(AUDIT_SCRIPT), str(bundle), world.paths["pub"]], env=env,
                          capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr  # the real key alone still passes


# ---------------------------------------------------------------- 02: another build under an installed version

def _second_build(w: World, tmp: Path, version: str) -> Path:
    model = tmp / "model"
    shutil.copytree(w.paths["model"], model, symlinks=True)
    with (model / "USAGE_POLICY").open("a") as f:
        f.write("changed policy text\n")
    out = tmp / f"b{version}"
    r = _run(["bundle", "pack", w.paths["recipe"], "--model-dir", str(model), "--out", str(out), "--key",
              w.paths["key"], "--version", version], {"GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode()})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out


def _audit_last(root: Path) -> dict[str, Any]:
    last: dict[str, Any] = json.loads((root / "var/log/gptoss/audit.jsonl").read_text().splitlines()[-1])
    return last


def test_another_build_with_the_installed_version_is_refused_and_repair_installs_it(world: World,
                                                                                      tmp_path: Path) -> None:
    root = _root_copy(world, tmp_path)
    release = root / "opt/gptoss/tiny-gpt-oss/releases/5"
    installed = hashlib.sha256((release / "manifest.json").read_bytes()).hexdigest()
    b = _second_build(world, tmp_path, "5")
    other = hashlib.sha256((b / "manifest.json").read_bytes()).hexdigest()
    assert other != installed
    install = ["install", str(b), "--trust", world.paths["pub"], "--root", str(root), "--yes",
               "--vllm-python", sys.executable]
    before = _state(root)
    doc = _doc(r := _run(install, {}))
    assert r.returncode == 1 and doc["error"]["code"] == "install.version_conflict", doc.get("error")
    assert installed in doc["error"]["message"] and other in doc["error"]["message"]
    assert "--version" in doc["error"]["hint"] and "--repair" in doc["error"]["hint"]
    assert _state(root) == before, "a refused install changed the root"
    assert _audit_last(root)["result"] == "failed: install.version_conflict"
    # On purpose: --repair unpacks this bundle again, and the audit entry names the digest that now runs.
    doc = _doc(r := _run([*install, "--repair"], {}))
    assert r.returncode == 0, doc.get("error")
    runs = hashlib.sha256((release / "manifest.json").read_bytes()).hexdigest()
    assert runs == other and _audit_last(root)["bundle_sha256"] == runs


# ---------------------------------------------------------------- 05: the audit user is not the environment's

def test_the_audit_user_comes_from_the_uid_and_login_uid_never_the_environment(world: World,
                                                                                 tmp_path: Path) -> None:
    import pwd

    root = _root_copy(world, tmp_path)
    claimed = {"USER": "sec-officer", "LOGNAME": "sec-officer", "SUDO_USER": "sec-officer"}
    doc = _doc(r := _run(["install", world.paths["bundle"], "--trust", world.paths["pub"], "--root", str(root),
                          "--yes", "--vllm-python", sys.executable], claimed))
    assert r.returncode == 0, doc.get("error")
    entry = _audit_last(root)
    me = pwd.getpwuid(os.getuid()).pw_name
    assert "sec-officer" not in entry["user"] and entry["user"].startswith(me), entry["user"]
    assert entry["uid"] == os.getuid() and entry["claimed_sudo_user"] == "sec-officer"
    login = Path("/proc/self/loginuid").read_text().strip()
    assert entry["login_uid"] == (None if login in ("", "4294967295") else int(login))
    assert _run(["audit", "verify", "--root", str(root)], {}).returncode == 0  # the new fields are chained


# ---------------------------------------------------------------- 01, 20: the version high-water mark in the chain

def test_the_sealed_high_water_mark_holds_after_a_manual_switch_and_after_uninstall(world: World,
                                                                                     tmp_path: Path) -> None:
    """Red-team 01: `current` and the unit moved back by hand fail compliance (record.sealed); 20: after
    `uninstall` (the chain is kept) an older still-valid bundle is refused without --allow-downgrade."""
    root = _root_copy(world, tmp_path)
    inst = root / "opt/gptoss/tiny-gpt-oss"
    unit = root / "etc/systemd/system/gptoss@tiny-gpt-oss-r0.service"
    install = ["--trust", world.paths["pub"], "--root", str(root), "--yes", "--vllm-python", sys.executable]
    doc = _doc(r := _run(["install", str(_second_build(world, tmp_path, "6")), *install], {}))
    assert r.returncode == 0, doc.get("error")
    (inst / "current").unlink()
    (inst / "current").symlink_to("releases/5")
    shutil.copyfile(inst / "releases/5/unit-r0.service", unit)
    doc = _doc(r := _run(["compliance", "check", "--root", str(root)], {}))
    failed = {c["id"]: c for c in doc["data"]["checks"] if c["status"] == "fail"}
    assert r.returncode == 1 and set(failed) == {"record.sealed"}, failed
    assert "sealed release 6" in failed["record.sealed"]["evidence"][0]
    (inst / "current").unlink()
    (inst / "current").symlink_to("releases/6")
    shutil.copyfile(inst / "releases/6/unit-r0.service", unit)
    assert _run(["uninstall", "--root", str(root), "--instance", "tiny-gpt-oss", "--yes"], {}).returncode == 0
    before = _state(root)
    doc = _doc(r := _run(["install", world.paths["bundle"], *install], {}))
    assert r.returncode == 1 and doc["error"]["code"] == "install.downgrade", doc.get("error")
    assert "release 6" in doc["error"]["message"] and "--allow-downgrade" in doc["error"]["hint"]
    assert _state(root) == before, "a refused install changed the root"
    assert _audit_last(root)["result"] == "failed: install.downgrade"
    doc = _doc(r := _run(["install", world.paths["bundle"], *install, "--allow-downgrade"], {}))
    assert r.returncode == 0, doc.get("error")
    assert _doc(_run(["compliance", "check", "--root", str(root)], {}))["exit_code"] == 0
