"""The signed trust root of an instance, through the real CLI into staged trees (no systemd needed): the first
install sets it, later installs may only repeat it, `trust rotate` alone changes it (old threshold AND new, the
next version only), rollback and compliance read it, and nothing else (a *.pub in the old trust directory)
grants trust."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSPHRASE, KeyPair, finding_codes, pack

pytestmark = pytest.mark.integration
INSTANCE = "tiny-gpt-oss"
ENV = {"GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode()}


def _install(cli, bundle: Path, root: Path, *trust: str) -> tuple[int, dict[str, Any]]:  # type: ignore[no-untyped-def]
    return cli("install", str(bundle), *trust, "--root", str(root), "--vllm-python", sys.executable)  # type: ignore[no-any-return]


def _trust(*names: str, keys: dict[str, KeyPair], threshold: int = 1) -> list[str]:
    return [a for n in names for a in ("--trust", str(keys[n].public))] + ["--threshold", str(threshold)]


def _digest_tree(root: Path) -> dict[str, str]:
    """Every file under etc/ and opt/ (the audit log aside: it records refusals by design)."""
    out = {}
    for sub in ("etc", "opt"):
        for p in sorted((root / sub).rglob("*")):
            out[str(p.relative_to(root))] = ("-> " + str(p.readlink())) if p.is_symlink() else \
                hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _root_file(cli, tmp: Path, name: str, signers: list[KeyPair], sign_with: list[KeyPair], *,  # type: ignore[no-untyped-def]
               threshold: int = 1, version: int = 1, expires: str = "365d", extra: tuple[str, ...] = ()) -> Path:
    out = tmp / f"{name}.json"
    args = [a for k in signers for a in ("--signer", f"{k.name}={k.public}")]
    code, doc = cli("trust", "new", *args, "--threshold", str(threshold), "--version", str(version),
                    "--expires", expires, "--out", str(out), *extra)
    assert code == 0, doc
    for k in sign_with:
        code, doc = cli("trust", "sign", str(out), "--key", str(k.private), env=ENV)
        assert code == 0, doc
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, keys: dict[str, KeyPair]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("trust-bundles")
    return {
        "v5-ab": pack(d / "v5-ab", tiny_model, [keys["alice"], keys["bob"]], version=5),
        "v5-a": pack(d / "v5-a", tiny_model, [keys["alice"]], version=5),
        "v6-m": pack(d / "v6-m", tiny_model, [keys["mallory"]], version=6),
        "v6-b": pack(d / "v6-b", tiny_model, [keys["bob"]], version=6),
        "v6-am": pack(d / "v6-am", tiny_model, [keys["alice"], keys["mallory"]], version=6),
    }


def test_a_2_of_2_instance_cannot_become_1_of_1_through_install_trust(cli, bundles, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    code, doc = _install(cli, bundles["v5-ab"], root, *_trust("alice", "bob", keys=keys, threshold=2))
    assert code == 0, doc
    before = _digest_tree(root)
    # The red team's upgrade: signed by one new key, installed naming only that key.
    code, doc = _install(cli, bundles["v6-m"], root, *_trust("mallory", keys=keys))
    assert code == 2 and doc["error"]["code"] == "trust.differs_from_root", doc
    assert "trust rotate" in doc["error"]["hint"]
    assert _digest_tree(root) == before  # nothing changed: release, current, trust root
    code, doc = cli("trust", "show", "--root", str(root))
    assert code == 0 and doc["data"]["roles"]["release"] == {"signers": ["alice", "bob"], "threshold": 2}
    # The same keys again are a no-op; no flags at all means "the instance's root".
    assert _install(cli, bundles["v5-ab"], root, *_trust("bob", "alice", keys=keys, threshold=2))[0] == 0
    code, doc = _install(cli, bundles["v6-m"], root)
    assert code == 1 and "signature.threshold_not_met" in finding_codes(doc), doc


def test_rotation_needs_the_old_threshold_and_the_new_one(cli, bundles, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    assert _install(cli, bundles["v5-ab"], root, *_trust("alice", "bob", keys=keys, threshold=2))[0] == 0
    a, b, m = keys["alice"], keys["bob"], keys["mallory"]
    one_old = _root_file(cli, tmp_path, "one-old", [b, m], [a, m], threshold=1, version=2)
    code, doc = cli("trust", "rotate", str(one_old), "--root", str(root), "--yes")
    assert code == 1 and doc["error"]["code"] == "trust.rotation_refused", doc
    assert "trust.threshold_not_met" in finding_codes(doc)
    no_new = _root_file(cli, tmp_path, "no-new", [m], [a, b], threshold=1, version=2)
    code, doc = cli("trust", "rotate", str(no_new), "--root", str(root), "--yes")
    assert code == 1 and doc["error"]["code"] == "trust.rotation_refused", doc
    good = _root_file(cli, tmp_path, "good", [b, m], [a, b, m], threshold=1, version=2)
    code, doc = cli("trust", "rotate", str(good), "--root", str(root), "--yes")
    assert code == 0, doc
    assert (doc["data"]["before"]["version"], doc["data"]["after"]["version"]) == (1, 2)
    code, doc = cli("trust", "show", "--root", str(root))
    assert doc["data"]["version"] == 2 and doc["data"]["roles"]["release"]["signers"] == ["bob", "mallory"]
    last = json.loads((root / "var/log/gptoss/audit.jsonl").read_text().splitlines()[-1])
    assert last["command"][:2] == ["trust", "rotate"] and last["result"] == "ok"
    assert "root v1" in last["detail"] and "root v2" in last["detail"] and "bob, mallory" in last["detail"]
    # Now mallory's release installs without naming any key: the root decides.
    assert _install(cli, bundles["v6-m"], root)[0] == 0


@pytest.mark.parametrize("version", [1, 3])
def test_a_root_that_rolls_back_or_skips_a_version_is_refused(cli, bundles, keys, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                              version: int) -> None:
    root = tmp_path / "root"
    assert _install(cli, bundles["v5-a"], root, *_trust("alice", keys=keys))[0] == 0
    before = _digest_tree(root)
    new = _root_file(cli, tmp_path, "v", [keys["alice"], keys["bob"]], [keys["alice"], keys["bob"]], version=version)
    code, doc = cli("trust", "rotate", str(new), "--root", str(root), "--yes")
    assert code == 1 and "trust.version_not_next" in finding_codes(doc), doc
    assert _digest_tree(root) == before


def test_rollback_to_a_release_signed_only_by_a_removed_key_is_refused(cli, bundles, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    assert _install(cli, bundles["v5-a"], root, *_trust("alice", keys=keys))[0] == 0
    # alice is retired: the root now trusts bob alone (signed by alice, the old threshold, and bob, the new).
    new = _root_file(cli, tmp_path, "bob-only", [keys["bob"]], [keys["alice"], keys["bob"]], version=2)
    assert cli("trust", "rotate", str(new), "--root", str(root), "--yes")[0] == 0
    assert _install(cli, bundles["v6-b"], root)[0] == 0
    before = _digest_tree(root)
    code, doc = cli("rollback", "--root", str(root), "--to", "5")
    assert code == 1 and doc["error"]["code"] == "rollback.untrusted", doc
    assert _digest_tree(root) == before


def test_rollback_to_an_expired_release_needs_allow_expired(bundles, keys, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    from gptossctl.errors import CheckFailed
    from gptossctl.install.operations import rollback

    root = tmp_path / "root"
    assert _install(cli, bundles["v5-ab"], root, *_trust("alice", keys=keys))[0] == 0
    assert _install(cli, bundles["v6-am"], root)[0] == 0
    later = datetime.now(UTC) + timedelta(days=3650)  # both bundles have expired by then
    with pytest.raises(CheckFailed) as exc:
        rollback(root, INSTANCE, to=5, now=later)
    assert exc.value.code == "rollback.expired" and "--allow-expired" in exc.value.hint
    assert (root / "opt/gptoss" / INSTANCE / "current").readlink() == Path("releases/6")
    r = rollback(root, INSTANCE, to=5, now=later, allow_expired=True)
    assert r.version == 5
    last = json.loads((root / "var/log/gptoss/audit.jsonl").read_text().splitlines()[-1])
    assert "--allow-expired" in last["command"] and "EXPIRED" in last["detail"]


def test_an_expired_root_refuses_install_and_names_trust_rotate(cli, bundles, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    assert _install(cli, bundles["v5-a"], root, *_trust("alice", keys=keys))[0] == 0
    short = _root_file(cli, tmp_path, "short", [keys["alice"]], [keys["alice"]], version=2, expires="1s")
    assert cli("trust", "rotate", str(short), "--root", str(root), "--yes")[0] == 0
    time.sleep(1.5)
    before = _digest_tree(root)
    code, doc = _install(cli, bundles["v6-am"], root)
    assert code == 1 and doc["error"]["code"] == "trust.root_expired" and "trust rotate" in doc["error"]["hint"], doc
    assert _digest_tree(root) == before
    renewed = _root_file(cli, tmp_path, "renewed", [keys["alice"]], [keys["alice"]], version=3)
    assert cli("trust", "rotate", str(renewed), "--root", str(root), "--yes")[0] == 0  # an expired root still rotates
    assert _install(cli, bundles["v6-am"], root)[0] == 0


def test_an_unknown_co_signer_is_a_note_unless_the_root_requires_known_signers(cli, bundles, keys,  # type: ignore[no-untyped-def]
                                                                                tmp_path: Path) -> None:
    code, doc = cli("bundle", "verify", str(bundles["v6-am"]), "--trust", str(keys["alice"].public))
    assert code == 0, doc
    assert doc["data"]["signed_by"] == [{"name": "alice", "keyid": keys["alice"].keyid}]
    assert [n["code"] for n in doc["data"]["notes"]] == ["signature.unknown_signer"]
    lax = _root_file(cli, tmp_path, "lax", [keys["alice"]], [keys["alice"]])
    assert cli("bundle", "verify", str(bundles["v6-am"]), "--trust-root", str(lax))[0] == 0
    strict = _root_file(cli, tmp_path, "strict", [keys["alice"]], [keys["alice"]], extra=("--require-known-signers",))
    code, doc = cli("bundle", "verify", str(bundles["v6-am"]), "--trust-root", str(strict))
    assert code == 1 and "signature.unknown_signer" in finding_codes(doc), doc


def test_a_trusted_key_whose_signature_does_not_verify_still_fails(cli, bundles, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    b = tmp_path / "b"
    shutil.copytree(bundles["v6-am"], b)
    env = json.loads((b / "manifest.dsse.json").read_text())
    for s in env["signatures"]:
        if s["keyid"] == keys["alice"].keyid:
            s["sig"] = env["signatures"][1 - env["signatures"].index(s)]["sig"]  # mallory's bytes under alice's id
    (b / "manifest.dsse.json").write_text(json.dumps(env))
    code, doc = cli("bundle", "verify", str(b), "--trust", str(keys["alice"].public))
    assert code == 1 and "signature.invalid" in finding_codes(doc), doc


def _make_legacy(root: Path, keys: dict[str, KeyPair]) -> Path:
    """The /etc/gptoss/<instance>/trust an older gptossctl wrote (alice listed), with no trust root."""
    etc = root / "etc/gptoss" / INSTANCE
    (etc / "trust-root.json").unlink(missing_ok=True)
    shutil.rmtree(etc / "trust", ignore_errors=True)
    trust = etc / "trust"
    trust.mkdir()
    shutil.copy(keys["alice"].public, trust / f"{keys['alice'].keyid}.pub")
    (trust / "policy.json").write_text(json.dumps({"threshold": 1, "revoked": [], "keys": [keys["alice"].keyid]}))
    return trust


def test_a_pub_dropped_into_the_old_trust_directory_grants_nothing(cli, bundles, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    assert _install(cli, bundles["v5-a"], root, *_trust("alice", keys=keys))[0] == 0
    trust = _make_legacy(root, keys)
    shutil.copy(keys["mallory"].public, trust / f"{keys['mallory'].keyid}.pub")  # not listed in policy.json
    code, doc = cli("compliance", "check", "--root", str(root))
    checks = {c["id"]: c for c in doc["data"]["checks"]}
    assert checks["bundle.signatures"]["status"] == "warn", checks["bundle.signatures"]  # legacy: reinstall
    code, doc = _install(cli, bundles["v6-m"], root)
    assert code == 1 and "signature.threshold_not_met" in finding_codes(doc), doc
    # The next successful install migrates the listed keys only, audited; the directory is gone.
    code, doc = _install(cli, bundles["v5-a"], root, *_trust("alice", keys=keys))
    assert code == 0, doc
    assert not trust.exists() and (root / "etc/gptoss" / INSTANCE / "trust-root.json").is_file()
    last = json.loads((root / "var/log/gptoss/audit.jsonl").read_text().splitlines()[-1])
    assert "migrated" in last["detail"] and "root v1" in last["detail"]
    code, doc = cli("compliance", "check", "--root", str(root))
    sig = {c["id"]: c for c in doc["data"]["checks"]}["bundle.signatures"]
    assert sig["status"] == "pass" and any("signed by alice (" in e for e in sig["evidence"]), sig["evidence"]


def test_compliance_fails_when_the_release_no_longer_meets_the_root(cli, bundles, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    assert _install(cli, bundles["v5-a"], root, *_trust("alice", keys=keys))[0] == 0
    new = _root_file(cli, tmp_path, "bob-only", [keys["bob"]], [keys["alice"], keys["bob"]], version=2)
    assert cli("trust", "rotate", str(new), "--root", str(root), "--yes")[0] == 0
    code, doc = cli("compliance", "check", "--root", str(root))
    assert code == 1 and {c["id"]: c["status"] for c in doc["data"]["checks"]}["bundle.signatures"] == "fail"
    # An auditor's --trust is checked beside the root, never instead of it.
    code, doc = cli("compliance", "check", "--root", str(root), "--trust", str(keys["alice"].public))
    assert code == 1 and {c["id"]: c["status"] for c in doc["data"]["checks"]}["bundle.signatures"] == "fail"


def test_a_first_install_takes_a_signed_root_file(cli, bundles, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    unsigned = _root_file(cli, tmp_path, "unsigned", [keys["alice"], keys["bob"]], [keys["alice"]], threshold=2)
    code, doc = _install(cli, bundles["v5-ab"], tmp_path / "r1", "--trust-root", str(unsigned))
    assert code == 1 and doc["error"]["code"] == "trust.root_unsigned", doc
    assert not (tmp_path / "r1/etc/gptoss").exists()
    signed = _root_file(cli, tmp_path, "signed", [keys["alice"], keys["bob"]], [keys["alice"], keys["bob"]], threshold=2)
    code, doc = _install(cli, bundles["v5-ab"], tmp_path / "r2", "--trust-root", str(signed))
    assert code == 0 and doc["data"]["trust"]["threshold"] == 2, doc
    assert [s["name"] for s in doc["data"]["signed_by"]] == ["alice", "bob"]


def test_a_second_instance_cannot_open_a_weaker_door_on_the_same_host(cli, bundles, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Red-team case 28: one key holder installs their own model as a second instance under their own trust."""
    root = tmp_path / "root"
    assert _install(cli, bundles["v5-ab"], root, *_trust("alice", "bob", keys=keys, threshold=2))[0] == 0
    before = _digest_tree(root)
    for trust in (_trust("mallory", keys=keys), _trust("alice", keys=keys),  # other keys; a lower threshold
                  _trust("alice", "mallory", keys=keys, threshold=2)):  # a key the host's signers do not include
        code, doc = cli("install", str(bundles["v6-am"]), *trust, "--instance", "second", "--root", str(root),
                        "--vllm-python", sys.executable)
        assert code == 2 and doc["error"]["code"] == "trust.weaker_than_host", doc
        assert "instance tiny-gpt-oss requires 2 of alice, bob" in doc["error"]["message"], doc["error"]
    assert _digest_tree(root) == before
    # The site's own signers and threshold are accepted for a second instance ...
    code, doc = cli("install", str(bundles["v5-ab"]), *_trust("alice", "bob", keys=keys, threshold=2), "--instance",
                    "second", "--port", "8100", "--root", str(root), "--vllm-python", sys.executable)
    assert code == 0, doc
    # ... and a weaker root written by hand for it is a compliance failure of that instance.
    weak = _root_file(cli, tmp_path, "weak", [keys["alice"]], [keys["alice"]])
    shutil.copyfile(weak, root / "etc/gptoss/second/trust-root.json")
    code, doc = cli("compliance", "check", "--root", str(root), "--instance", "second")
    checks = {c["id"]: c for c in doc["data"]["checks"]}
    assert code == 1 and checks["bundle.signatures"]["status"] == "fail", checks["bundle.signatures"]
    assert any("instance tiny-gpt-oss requires 2 of alice, bob" in e for e in checks["bundle.signatures"]["evidence"])


def test_inspect_names_the_signers_a_trust_root_names(cli, bundles, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root_file = _root_file(cli, tmp_path, "site", [keys["alice"], keys["bob"]], [keys["alice"], keys["bob"]],
                           threshold=2)
    code, doc = cli("bundle", "inspect", str(bundles["v6-am"]))
    assert code == 0 and set(doc["data"]["signers"]) == {keys["alice"].keyid, keys["mallory"].keyid}, doc
    code, doc = cli("bundle", "inspect", str(bundles["v6-am"]), "--trust-root", str(root_file))
    assert code == 0 and doc["data"]["verified"] is False
    # alice is named by the root; mallory is not in it and stays a bare key id (a name is no verification).
    assert set(doc["data"]["signers"]) == {f"alice ({keys['alice'].keyid[:16]})", keys["mallory"].keyid}, doc


def test_an_older_instance_migrates_to_a_signed_root_naming_the_same_keys(cli, bundles, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An instance installed by an older gptossctl (policy.json: alice, 1) takes a signed --trust-root with the
    same release keys and threshold; one with other keys is refused as a change of trust."""
    root = tmp_path / "root"
    assert _install(cli, bundles["v5-a"], root, *_trust("alice", keys=keys))[0] == 0
    _make_legacy(root, keys)
    other = _root_file(cli, tmp_path, "other", [keys["bob"]], [keys["bob"]])
    code, doc = _install(cli, bundles["v5-a"], root, "--trust-root", str(other))
    assert code == 2 and doc["error"]["code"] == "trust.differs_from_root", doc
    same = _root_file(cli, tmp_path, "same", [keys["alice"]], [keys["alice"]])
    code, doc = _install(cli, bundles["v5-a"], root, "--trust-root", str(same))
    assert code == 0, doc
    code, doc = cli("trust", "show", "--root", str(root))
    assert code == 0 and doc["data"]["roles"]["release"] == {"signers": ["alice"], "threshold": 1}, doc["data"]
