"""Signed deltas through the real CLI: one changed shard ships one shard, a vLLM-only upgrade ships no
weights, the rebuilt bundle is byte-identical and verifies, a wrong or damaged base is refused and named."""

# ruff: noqa: F811 - fixtures imported from carry_bundles come back as test parameters
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSPHRASE, KeyPair, finding_codes
from tests.integration.carry_bundles import (  # noqa: F401 - fixtures
    SHARD,
    Cli,
    carry_model,
    carry_v5,
    carry_v6,
    flip_bit,
    part_files,
    tree_bytes,
    trust,
)
from tests.integration.conftest import build_wheel

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def carry_delta(tmp_path_factory: pytest.TempPathFactory, carry_v5: Path, carry_v6: Path) -> Path:
    from gptossctl.bundle.delta import make_delta

    out = tmp_path_factory.mktemp("carry-delta") / "d"
    make_delta(carry_v5, carry_v6, out)
    return out


def _delta_pieces(delta: Path) -> list[tuple[str, int]]:
    index = json.loads((delta / "parts.json").read_text())
    return sorted((path, shard) for e in index["layout"] for path, shard, _at in e["pieces"])


def test_one_changed_shard_ships_that_shard_alone(cli: Cli, carry_v5: Path, carry_v6: Path,
                                                  keys: dict[str, KeyPair], tmp_path: Path) -> None:
    code, doc = cli("bundle", "delta", str(carry_v5), str(carry_v6), "--out", str(tmp_path / "d"), *trust(keys))
    assert code == 0, doc
    d = doc["data"]
    assert d["kind"] == "delta" and d["base"]["version"] == 5 and d["bundle"]["version"] == 6
    # The changed shard, and the SBOM (it names the bundle's version); nothing else.
    assert _delta_pieces(tmp_path / "d") == [("model/model-extra-1.safetensors", 2), ("sbom/bom.cdx.json", -1)]
    assert d["bytes"] < SHARD + 64 * 1024 < d["bundle_bytes"] / 10
    base_digest = json.loads((tmp_path / "d" / "parts.json").read_text())["base"]["manifest_sha256"]
    import hashlib

    assert base_digest == hashlib.sha256((carry_v5 / "manifest.json").read_bytes()).hexdigest()


def test_a_delta_applied_rebuilds_the_new_bundle_byte_for_byte(cli: Cli, carry_delta: Path, carry_v5: Path,
                                                              carry_v6: Path, keys: dict[str, KeyPair],
                                                              tmp_path: Path) -> None:
    out = tmp_path / "v6"
    code, doc = cli("bundle", "apply", str(carry_delta), "--base", str(carry_v5), "--out", str(out), *trust(keys))
    assert code == 0, doc
    assert tree_bytes(out) == tree_bytes(carry_v6)
    assert cli("bundle", "verify", str(out), *trust(keys))[0] == 0


def test_a_delta_is_signed_and_verifiable_on_its_own(cli: Cli, carry_delta: Path, keys: dict[str, KeyPair],
                                                     tmp_path: Path) -> None:
    code, doc = cli("bundle", "verify", str(carry_delta), *trust(keys))
    assert code == 0, doc
    assert doc["data"]["kind"] == "delta" and doc["data"]["base"]["version"] == 5
    code, doc = cli("bundle", "verify", str(carry_delta), *trust(keys, "bob"))
    assert code == 1 and "signature.threshold_not_met" in finding_codes(doc)
    damaged = tmp_path / "d"
    shutil.copytree(carry_delta, damaged)
    part = part_files(damaged)[0]
    flip_bit(part, part.stat().st_size - 100)
    code, doc = cli("bundle", "verify", str(damaged), *trust(keys))
    assert code == 1 and [(f["code"], f["subject"]) for f in doc["findings"]] == [("parts.damaged", str(part))]


def test_a_delta_on_the_wrong_base_is_refused_naming_the_base(cli: Cli, carry_delta: Path, carry_v5: Path,
                                                             carry_v6: Path, tmp_path: Path) -> None:
    out = tmp_path / "v6"
    code, doc = cli("bundle", "apply", str(carry_delta), "--base", str(carry_v6), "--out", str(out))
    assert code == 1 and doc["error"]["code"] == "apply.wrong_base"
    import hashlib

    needed = hashlib.sha256((carry_v5 / "manifest.json").read_bytes()).hexdigest()
    assert needed in doc["error"]["message"] and "tiny-demo v5" in doc["error"]["hint"]
    assert finding_codes(doc) == ["delta.wrong_base"]
    assert not out.exists() and not (tmp_path / "v6.partial").exists()
    code, doc = cli("bundle", "apply", str(carry_delta), "--base", str(tmp_path), "--out", str(out))
    assert code == 2 and doc["error"]["code"] == "delta.base_not_found" and needed in doc["error"]["message"]


def test_a_damaged_base_file_is_named(cli: Cli, carry_delta: Path, carry_v5: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(carry_v5, base)
    flip_bit(base / "payload/model/model-extra-0.safetensors", SHARD + 3)
    code, doc = cli("bundle", "apply", str(carry_delta), "--base", str(base), "--out", str(tmp_path / "v6"))
    assert code == 1 and doc["error"]["code"] == "apply.incomplete"
    assert [f["subject"] for f in doc["findings"]] == [str(base / "payload/model/model-extra-0.safetensors")]
    assert "shard 1" in doc["findings"][0]["message"]
    assert not (tmp_path / "v6").exists()


def test_parts_of_a_delta_are_not_joined_as_a_bundle(cli: Cli, carry_delta: Path, tmp_path: Path) -> None:
    code, doc = cli("bundle", "join", str(carry_delta), "--out", str(tmp_path / "x"))
    assert code == 2 and doc["error"]["code"] == "join.is_delta" and "apply" in doc["error"]["hint"]


# ---- a vLLM-only upgrade: new wheels, the same weights


def _recipe(d: Path, house: Path, kernels: Path) -> Path:
    doc: dict[str, Any] = {
        "schema": "gptossctl.bundle-spec/1", "name": "tiny-real", "expires_in": "30d",
        "model": {"name": "gptossctl/tiny-gpt-oss", "repo": "gptossctl/tiny-gpt-oss", "revision": "main"},
        "vllm": {"version": "0.33.0"}, "wheels": {"include_gptossctl": False, "include_uv": False, "dir": str(house)},
        "kernels": {"dir": str(kernels)}}
    path = d / "recipe.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def test_a_vllm_only_upgrade_ships_no_weights(cli: Cli, hf_model: Path, wheelhouse: Path, kernels_dir: Path,
                                             keys: dict[str, KeyPair], tmp_path: Path) -> None:
    house2 = tmp_path / "house2"
    shutil.copytree(wheelhouse, house2)
    for old in house2.glob("tinydep-1.2.0-*.whl"):
        old.unlink()
    build_wheel(tmp_path / "proj", house2, "tinydep", "1.3.0", requires=("copyleftdep",))  # the upgrade
    env = {"GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode()}
    for name, house, version in (("old", wheelhouse, "5"), ("new", house2, "6")):
        (tmp_path / name).mkdir()
        code, doc = cli("bundle", "pack", str(_recipe(tmp_path / name, house, kernels_dir)), "--out",
                        str(tmp_path / f"b-{name}"), "--key", str(keys["alice"].private), "--model-dir",
                        str(hf_model), "--version", version, env=env)
        assert code == 0, doc
    code, doc = cli("bundle", "delta", str(tmp_path / "b-old"), str(tmp_path / "b-new"), "--out",
                    str(tmp_path / "d"), *trust(keys))
    assert code == 0, doc
    shipped = _delta_pieces(tmp_path / "d")
    assert not [p for p, _s in shipped if p.startswith("model/")], shipped  # no weights, no model file at all
    assert [Path(p).name.split("-")[:2] for p, _s in shipped if p.startswith("wheels/")] == [["tinydep", "1.3.0"]]
    weights = sum(p.stat().st_size for p in (tmp_path / "b-new/payload/model").rglob("*.safetensors"))
    assert doc["data"]["reused_bytes"] >= weights > doc["data"]["bytes"]
    code, doc = cli("bundle", "apply", str(tmp_path / "d"), "--base", str(tmp_path / "b-old"), "--out",
                    str(tmp_path / "rebuilt"), *trust(keys))
    assert code == 0, doc
    assert tree_bytes(tmp_path / "rebuilt") == tree_bytes(tmp_path / "b-new")
