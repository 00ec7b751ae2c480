"""Every refusal of `bundle verify`, against real bundles, real Ed25519 keys and real file damage.

Each case asserts the exit code and the finding code of the one JSON document the CLI prints.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gptossctl.bundle.dsse import PAYLOAD_TYPE, Envelope, Signature
from tests.conftest import KeyPair, finding_codes, pack

pytestmark = pytest.mark.integration
WEIGHTS = "payload/model/model-00000-of-00001.safetensors"
Cli = Callable[..., tuple[int, dict[str, Any]]]


def verify(cli: Cli, bundle: Path, keys: dict[str, KeyPair], *extra: str,
           trust: tuple[str, ...] = ("alice",)) -> tuple[int, dict[str, Any]]:
    args = ["bundle", "verify", str(bundle)]
    for name in trust:
        args += ["--trust", str(keys[name].public)]
    return cli(*args, *extra)


def resign(bundle: Path, edit: Callable[[dict[str, Any]], None], signer: KeyPair) -> None:
    """Rewrite the manifest and sign it with a trusted key: the attacker who holds a key, or a
    buggy packer. Path safety must hold even for a validly signed manifest."""
    doc = json.loads((bundle / "manifest.json").read_bytes())
    edit(doc)
    payload = (json.dumps(doc, indent=1) + "\n").encode()
    env = Envelope(payload, PAYLOAD_TYPE, ())
    env = env.with_signature(Signature(signer.keyid, signer.signer().sign(env.signed_message())))
    (bundle / "manifest.json").write_bytes(payload)
    (bundle / "manifest.dsse.json").write_bytes(env.to_json())


def test_verify_accepts_untouched_bundle(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    code, doc = verify(cli, bundle, keys)
    assert code == 0, doc
    assert doc["status"] == "ok" and doc["findings"] == []
    assert doc["data"]["signers"] == [keys["alice"].keyid]
    assert doc["data"]["bytes_hashed"] == doc["data"]["bytes"] > 1_000_000


def test_verify_rejects_bit_flip(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    w = bundle / WEIGHTS
    data = bytearray(w.read_bytes())
    data[12345] ^= 0x80
    w.write_bytes(bytes(data))
    code, doc = verify(cli, bundle, keys)
    assert code == 1
    assert finding_codes(doc) == ["bundle.digest_mismatch"]
    assert doc["findings"][0]["subject"] == WEIGHTS
    assert doc["error"]["code"] == "bundle.verify_failed"


def test_verify_rejects_truncated_file(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    w = bundle / WEIGHTS
    os.truncate(w, w.stat().st_size - 1)
    code, doc = verify(cli, bundle, keys)
    assert (code, finding_codes(doc)) == (1, ["bundle.size_mismatch"])
    assert "truncated" in doc["findings"][0]["message"]


def test_verify_rejects_missing_file(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    (bundle / "payload/model/tokenizer.json").unlink()
    code, doc = verify(cli, bundle, keys)
    assert (code, finding_codes(doc)) == (1, ["bundle.missing_file"])


def test_verify_rejects_extra_file(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    (bundle / "payload/model/evil.py").write_text("import os\n")
    (bundle / "README.txt").write_text("hi\n")
    code, doc = verify(cli, bundle, keys)
    assert code == 1
    assert finding_codes(doc) == ["bundle.extra_file", "bundle.extra_file"]
    assert {f["subject"] for f in doc["findings"]} == {"payload/model/evil.py", "README.txt"}


def test_verify_rejects_symlink_in_place_of_file(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    target = bundle / "payload/model/config.json"
    shutil.copy(target, bundle.parent / "outside.json")
    target.unlink()
    target.symlink_to(bundle.parent / "outside.json")  # same bytes, but a link out of the tree
    code, doc = verify(cli, bundle, keys)
    assert code == 1
    assert "bundle.symlink" in finding_codes(doc)


def test_verify_rejects_special_file(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    os.mkfifo(bundle / "payload/model/pipe")
    code, doc = verify(cli, bundle, keys)
    assert (code, finding_codes(doc)) == (1, ["bundle.special_file"])


@pytest.mark.parametrize("bad", ["/etc/passwd", "../../etc/passwd", "model/../../x", "model//x", "./model/x"])
def test_verify_rejects_unsafe_manifest_path(cli: Cli, bundle: Path, keys: dict[str, KeyPair], bad: str) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["files"][0]["path"] = bad

    resign(bundle, edit, keys["alice"])
    code, doc = verify(cli, bundle, keys)
    assert code == 1
    assert "manifest.unsafe_path" in finding_codes(doc)
    assert not any(f["code"] == "bundle.digest_mismatch" and f["subject"].endswith("passwd") for f in doc["findings"])


def test_verify_rejects_duplicate_path(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    resign(bundle, lambda doc: doc["files"].append(dict(doc["files"][0])), keys["alice"])
    code, doc = verify(cli, bundle, keys)
    assert code == 1 and "manifest.duplicate_path" in finding_codes(doc)


def test_verify_rejects_edited_manifest_copy(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    m = bundle / "manifest.json"
    m.write_bytes(m.read_bytes().replace(b'"version": 5', b'"version": 6'))
    code, doc = verify(cli, bundle, keys)
    assert (code, finding_codes(doc)) == (1, ["manifest.edited"])


def test_verify_rejects_edited_signed_payload(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    env_path = bundle / "manifest.dsse.json"
    env = json.loads(env_path.read_bytes())
    payload = base64.b64decode(env["payload"]).replace(b'"version": 5', b'"version": 9')
    env["payload"] = base64.b64encode(payload).decode()
    env_path.write_text(json.dumps(env))
    (bundle / "manifest.json").write_bytes(payload)
    code, doc = verify(cli, bundle, keys)
    assert code == 1
    assert finding_codes(doc) == ["signature.invalid", "signature.threshold_not_met"]


def test_verify_rejects_untrusted_signer(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    code, doc = verify(cli, bundle, keys, trust=("bob",))
    assert code == 1
    assert finding_codes(doc) == ["signature.threshold_not_met", "signature.unknown_signer"]


def test_verify_notes_an_extra_unknown_cosigner_and_counts_the_trusted_ones(cli: Cli, bundle: Path,
                                                                              keys: dict[str, KeyPair]) -> None:
    # Vendor signature + site co-signature: a key the verifier does not know is reported, not counted, and
    # does not block a threshold the trusted keys meet (it failed before trust roots: the brief's bug).
    code, _ = cli("bundle", "sign", str(bundle), "--key", str(keys["mallory"].private),
                  env={"GPTOSSCTL_KEY_PASSPHRASE": "correct horse battery staple"})
    assert code == 0
    code, doc = verify(cli, bundle, keys)
    assert code == 0, doc
    assert [n["code"] for n in doc["data"]["notes"]] == ["signature.unknown_signer"]


def test_verify_rejects_revoked_key(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    code, doc = verify(cli, bundle, keys, "--revoked", keys["alice"].keyid, trust=("alice", "bob"))
    assert code == 1
    assert finding_codes(doc) == ["signature.revoked_key", "signature.threshold_not_met"]


def test_verify_needs_k_of_n(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    code, doc = verify(cli, bundle, keys, "--threshold", "2", trust=("alice", "bob"))
    assert (code, finding_codes(doc)) == (1, ["signature.threshold_not_met"])
    code, _ = cli("bundle", "sign", str(bundle), "--key", str(keys["bob"].private),
                  env={"GPTOSSCTL_KEY_PASSPHRASE": "correct horse battery staple"})
    assert code == 0
    code, doc = verify(cli, bundle, keys, "--threshold", "2", trust=("alice", "bob"))
    assert code == 0 and sorted(doc["data"]["signers"]) == sorted([keys["alice"].keyid, keys["bob"].keyid])


def test_same_key_twice_counts_once(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    env_path = bundle / "manifest.dsse.json"
    env = json.loads(env_path.read_bytes())
    env["signatures"].append(dict(env["signatures"][0]))
    env_path.write_text(json.dumps(env))
    code, doc = verify(cli, bundle, keys, "--threshold", "2", trust=("alice", "bob"))
    # One signature per key id: a repeat is refused outright (F22), so it can never count twice.
    assert (code, finding_codes(doc)) == (1, ["envelope.malformed"])


def test_verify_rejects_expired_bundle(cli: Cli, tmp_path: Path, tiny_model: Path, keys: dict[str, KeyPair]) -> None:
    old = pack(tmp_path / "old", tiny_model, [keys["alice"]], expires_in="1h",
               now=datetime.now(UTC) - timedelta(hours=2))
    code, doc = verify(cli, old, keys)
    assert (code, finding_codes(doc)) == (1, ["bundle.expired"])
    # The clock-skew allowance is honoured: 2 h of skew covers an expiry 1 h ago.
    code, _ = verify(cli, old, keys, "--clock-skew", "2h")
    assert code == 0


def test_verify_rejects_bundle_from_the_future(cli: Cli, tmp_path: Path, tiny_model: Path, keys: dict[str, KeyPair]) -> None:
    future = pack(tmp_path / "future", tiny_model, [keys["alice"]], now=datetime.now(UTC) + timedelta(days=1))
    code, doc = verify(cli, future, keys)
    assert (code, finding_codes(doc)) == (1, ["bundle.not_yet_valid"])


def test_verify_rejects_downgrade(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    code, doc = verify(cli, bundle, keys, "--min-version", "6")
    assert (code, finding_codes(doc)) == (1, ["bundle.downgrade"])
    assert verify(cli, bundle, keys, "--min-version", "5")[0] == 0


def test_verify_rejects_malformed_envelope(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    (bundle / "manifest.dsse.json").write_bytes(b'{"payloadType": "x", "payl')
    code, doc = verify(cli, bundle, keys)
    assert (code, finding_codes(doc)) == (1, ["envelope.malformed"])


def test_verify_rejects_malformed_manifest(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    resign(bundle, lambda doc: doc.update(version="5"), keys["alice"])  # a string, not an int
    code, doc = verify(cli, bundle, keys)
    assert (code, finding_codes(doc)) == (1, ["manifest.malformed"])
    assert "version" in doc["findings"][0]["message"]


def test_verify_rejects_empty_manifest(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    def empty(doc: dict[str, Any]) -> None:
        doc["files"] = []

    resign(bundle, empty, keys["alice"])
    shutil.rmtree(bundle / "payload")
    (bundle / "payload").mkdir()
    code, doc = verify(cli, bundle, keys)
    assert code == 1 and "manifest.empty" in finding_codes(doc)


def test_verify_rejects_edited_checksum_list(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    sums = bundle / "SHA256SUMS"
    sums.write_text(sums.read_text().replace("payload/model/config.json", "payload/model/other.json"))
    code, doc = verify(cli, bundle, keys)
    assert (code, finding_codes(doc)) == (1, ["bundle.sha256sums_mismatch"])


def test_verify_lists_every_finding_sorted(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    (bundle / "payload/model/tokenizer.json").unlink()
    (bundle / "payload/model/extra.bin").write_bytes(b"x")
    w = bundle / WEIGHTS
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    code, doc = verify(cli, bundle, keys)
    assert code == 1
    codes = finding_codes(doc)
    assert codes == sorted(codes) == ["bundle.digest_mismatch", "bundle.extra_file", "bundle.missing_file"]


def test_verify_without_trusted_keys_is_a_usage_error(cli: Cli, bundle: Path, keys: dict[str, KeyPair]) -> None:
    code, doc = verify(cli, bundle, keys, trust=())
    assert code == 2 and doc["error"]["code"] == "verify.no_trusted_keys"


def test_verify_of_a_missing_directory_is_a_usage_error(cli: Cli, tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    code, doc = verify(cli, tmp_path / "nope", keys)
    assert code == 2 and doc["error"]["code"] == "bundle.not_found"


def test_verify_of_a_directory_that_is_not_a_bundle(cli: Cli, tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    code, doc = verify(cli, tmp_path, keys)
    assert code == 1 and doc["error"]["code"] == "bundle.not_a_bundle"
