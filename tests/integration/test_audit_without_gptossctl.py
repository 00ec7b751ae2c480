"""The documented auditor path (docs/audit-verify.sh: openssl + sha256sum only) on real bundles.
Its k-of-n verdict against bootstrap-verify.sh and gptossctl: tests/integration/test_fleet_scripts.py."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gptossctl.bundle.sign import cosign_bundle
from tests.conftest import KeyPair

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "audit-verify.sh"


def audit(bundle: Path, *args: Path | str) -> subprocess.CompletedProcess[str]:
    # A PATH without the virtualenv: the auditor has no Python tooling of ours.
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    return subprocess.run(["sh", str(SCRIPT), str(bundle), *map(str, args)], env=env, capture_output=True, text=True)


def test_auditor_script_accepts_a_good_bundle(bundle: Path, keys: dict[str, KeyPair]) -> None:
    res = audit(bundle, keys["alice"].public)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[-1].startswith(f"OK: signed by {keys['alice'].keyid} (alice.pub) (1 required)")


def test_auditor_script_rejects_bit_flip(bundle: Path, keys: dict[str, KeyPair]) -> None:
    w = bundle / "payload/model/model-00000-of-00001.safetensors"
    data = bytearray(w.read_bytes())
    data[100] ^= 4
    w.write_bytes(bytes(data))
    res = audit(bundle, keys["alice"].public)
    assert res.returncode != 0 and "does not match" in res.stdout


def test_auditor_script_rejects_edited_manifest(bundle: Path, keys: dict[str, KeyPair]) -> None:
    m = bundle / "manifest.json"
    m.write_bytes(m.read_bytes().replace(b'"version": 5', b'"version": 7'))
    res = audit(bundle, keys["alice"].public)
    assert res.returncode == 1 and "signature does not match" in res.stdout


def test_auditor_script_rejects_other_signer(bundle: Path, keys: dict[str, KeyPair]) -> None:
    res = audit(bundle, keys["bob"].public)
    assert res.returncode == 1 and f"no signature by key {keys['bob'].keyid} (bob.pub)" in res.stdout
    assert f"unknown signer {keys['alice'].keyid}: not one of the given keys, ignored" in res.stdout
    assert "FAIL: 0 of the given keys signed, 1 required" in res.stdout


def test_auditor_script_rejects_extra_file_and_symlink(bundle: Path, keys: dict[str, KeyPair]) -> None:
    (bundle / "payload/model/x.bin").write_bytes(b"x")
    assert "differ from the list" in audit(bundle, keys["alice"].public).stdout
    (bundle / "payload/model/x.bin").unlink()
    os.symlink("/etc/passwd", bundle / "payload/model/link")
    assert "links or special files" in audit(bundle, keys["alice"].public).stdout


# ---------------------------------------------------------------- k of n
def test_auditor_script_names_every_signer_by_key_id_and_file(bundle: Path, keys: dict[str, KeyPair]) -> None:
    cosign_bundle(bundle, keys["bob"].signer())
    res = audit(bundle, "--threshold", "2", keys["alice"].public, keys["bob"].public)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"signed by key {keys['alice'].keyid} (alice.pub)" in res.stdout.splitlines()
    assert f"signed by key {keys['bob'].keyid} (bob.pub)" in res.stdout.splitlines()
    # --threshold may also come after the keys, or as --threshold=N.
    assert audit(bundle, keys["alice"].public, keys["bob"].public, "--threshold=2").returncode == 0
    assert audit(bundle, keys["alice"].public, "--threshold", "2", keys["mallory"].public).returncode == 1


def test_auditor_script_counts_one_key_given_twice_once(bundle: Path, keys: dict[str, KeyPair],
                                                        tmp_path: Path) -> None:
    twin = tmp_path / "alice-again.pub"
    shutil.copy(keys["alice"].public, twin)
    res = audit(bundle, "--threshold", "2", keys["alice"].public, twin)
    assert res.returncode == 2 and "needs at least 2 distinct keys; 1 given" in res.stderr, res.stdout + res.stderr
    res = audit(bundle, keys["alice"].public, twin)  # one vote, both names shown
    assert res.returncode == 0 and f"signed by key {keys['alice'].keyid} (alice.pub, alice-again.pub)" in res.stdout


@pytest.mark.parametrize("args, why", [
    (["--threshold", "3", "alice", "bob"], "needs at least 3 distinct keys; 2 given"),
    (["--threshold", "0", "alice"], "not a whole number of at least 1"),
    (["--threshold", "two", "alice"], "not a whole number of at least 1"),
    (["--threshold"], "usage:"),
    (["alice", "missing.pub"], "cannot read it"),
    (["alice", "not-a-key"], "not a public key this script can check"),
])
def test_auditor_script_usage_errors_exit_2(bundle: Path, keys: dict[str, KeyPair], tmp_path: Path,
                                            args: list[str], why: str) -> None:
    (tmp_path / "not-a-key").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    given = {n: str(k.public) for n, k in keys.items()} | {"missing.pub": str(tmp_path / "missing.pub"),
                                                          "not-a-key": str(tmp_path / "not-a-key")}
    res = audit(bundle, *(given.get(a, a) for a in args))
    assert res.returncode == 2 and why in res.stderr and "OK" not in res.stdout, res.stdout + res.stderr


def _envelope(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.dsse.json").read_text())  # type: ignore[no-any-return]


def test_auditor_script_reads_the_envelope_as_json_not_by_lines(bundle: Path, keys: dict[str, KeyPair]) -> None:
    # The same envelope re-serialised: one line, keys in another order, \/ for / (gptossctl reads all three).
    env = _envelope(bundle)
    env = {"signatures": [{"sig": s["sig"], "keyid": s["keyid"]} for s in env["signatures"]],
           "payload": env["payload"], "payloadType": env["payloadType"]}
    (bundle / "manifest.dsse.json").write_text(json.dumps(env, separators=(",", ":")).replace("/", "\\/"))
    res = audit(bundle, keys["alice"].public)
    assert res.returncode == 0 and f"signed by key {keys['alice'].keyid} (alice.pub)" in res.stdout, res.stdout


@pytest.mark.parametrize("change, why", [
    ("duplicate_signature", "signs twice"),
    ("extra_key", "unexpected key"),
    ("other_payload_type", "payloadType is not"),
    ("other_payload", "manifest.json is not the payload of manifest.dsse.json"),
    ("sig_not_base64", "is not base64"),
    ("trailing_text", "text after the envelope"),
    ("oversized", "larger than any real manifest"),  # valid JSON padded past gptossctl's 64 MiB limit
])
def test_auditor_script_refuses_an_envelope_gptossctl_refuses(bundle: Path, keys: dict[str, KeyPair],
                                                              change: str, why: str) -> None:
    env = _envelope(bundle)
    sigs: list[dict[str, str]] = env["signatures"]
    tail = ""
    if change == "duplicate_signature":
        sigs.append(dict(sigs[0]))
    elif change == "extra_key":
        env["signed"] = "yes"
    elif change == "other_payload_type":
        env["payloadType"] = "application/json"
    elif change == "other_payload":  # a payload no one signed, beside the signed manifest.json
        env["payload"] = base64.b64encode(b'{"name": "evil"}').decode()
    elif change == "sig_not_base64":
        sigs.append({"keyid": keys["mallory"].keyid, "sig": "abc"})
    elif change == "trailing_text":
        tail = '{"signatures": []}'
    elif change == "oversized":
        tail = " " * (64 << 20)
    (bundle / "manifest.dsse.json").write_text(json.dumps(env, indent=1) + "\n" + tail)
    res = audit(bundle, keys["alice"].public)
    assert res.returncode == 1 and why in res.stdout, res.stdout + res.stderr
