"""The documented auditor path (docs/audit-verify.sh: openssl + sha256sum only) on real bundles."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import KeyPair

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "audit-verify.sh"


def audit(bundle: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    # A PATH without the virtualenv: the auditor has no Python tooling of ours.
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    return subprocess.run(["sh", str(SCRIPT), str(bundle), str(pub)], env=env, capture_output=True, text=True)


def test_auditor_script_accepts_a_good_bundle(bundle: Path, keys: dict[str, KeyPair]) -> None:
    res = audit(bundle, keys["alice"].public)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith(f"OK: signed by {keys['alice'].keyid}")


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
    assert res.returncode != 0 and "signature does not match" in res.stdout


def test_auditor_script_rejects_other_signer(bundle: Path, keys: dict[str, KeyPair]) -> None:
    res = audit(bundle, keys["bob"].public)
    assert res.returncode != 0 and "no signature by key" in res.stdout


def test_auditor_script_rejects_extra_file_and_symlink(bundle: Path, keys: dict[str, KeyPair]) -> None:
    (bundle / "payload/model/x.bin").write_bytes(b"x")
    assert "differ from the list" in audit(bundle, keys["alice"].public).stdout
    (bundle / "payload/model/x.bin").unlink()
    os.symlink("/etc/passwd", bundle / "payload/model/link")
    assert "links or special files" in audit(bundle, keys["alice"].public).stdout
