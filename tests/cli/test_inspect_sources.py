"""`gptossctl bundle inspect` on whatever is on the stick: a bundle, a folder of parts, one part, a delta. Read
from the signed manifest and the part headers only (a changed payload byte goes unnoticed: nothing is hashed, and
the output says "not verified"); a damaged part is reported (exit 1), never a crash. Through the installed
console script, --json and human output."""

# ruff: noqa: F811 - fixtures imported from carry_bundles come back as test parameters
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSPHRASE, KeyPair
from tests.integration.carry_bundles import (  # noqa: F401 - fixtures
    carry_model,
    carry_parts,
    carry_v5,
    carry_v6,
    console_script,
    env,
    flip_bit,
    part_files,
)

pytestmark = pytest.mark.integration


def _inspect(path: Path, *extra: str, as_json: bool = True) -> tuple[int, Any, str]:
    res = subprocess.run([console_script(), "bundle", "inspect", str(path), *extra, *(["--json"] if as_json else [])],
                         capture_output=True, text=True, env=env(), timeout=120)
    assert "Traceback" not in res.stderr, res.stderr
    if as_json:
        return res.returncode, json.loads(res.stdout), res.stderr
    return res.returncode, res.stdout, res.stderr


@pytest.fixture(scope="module")
def delta_dir(tmp_path_factory: pytest.TempPathFactory, carry_v5: Path, carry_v6: Path) -> Path:
    from gptossctl.bundle.delta import make_delta

    out = tmp_path_factory.mktemp("inspect-delta") / "d"
    make_delta(carry_v5, carry_v6, out)
    return out


@pytest.fixture(scope="module")
def site_root(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, KeyPair]) -> Path:
    """A signed trust root naming alice: inspect shows her name beside her key id (a name, not a verification)."""
    out = tmp_path_factory.mktemp("root") / "site.json"
    cli = console_script()
    subprocess.run([cli, "trust", "new", "--signer", f"alice={keys['alice'].public}", "--threshold", "1",
                    "--out", str(out), "--json"], check=True, capture_output=True, env=env())
    subprocess.run([cli, "trust", "sign", str(out), "--key", str(keys["alice"].private), "--json"], check=True,
                   capture_output=True, env={**env(), "GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode()})
    return out


def _common(d: dict[str, Any], version: int) -> None:
    assert (d["name"], d["version"], d["verified"], d["hashed"]) == ("tiny-demo", version, False, 0), d
    assert d["expires"] and d["expired"] is False
    paths = {f["path"]: f["size"] for f in d["contents"]}
    assert paths["model/model-extra-0.safetensors"] == 5 << 20 and d["bytes"] == sum(paths.values())
    assert d["sizes"]["model"]["files"] == sum(1 for p in paths if p.startswith("model/"))


def test_inspect_a_bundle(carry_v5: Path, keys: dict[str, KeyPair], site_root: Path) -> None:
    code, doc, _ = _inspect(carry_v5, "--trust-root", str(site_root))
    assert code == 0 and doc["data"]["source"] == "bundle" and doc["data"]["parts"] is None, doc
    _common(doc["data"], 5)
    assert doc["data"]["signers"] == [f"alice ({keys['alice'].keyid[:16]})"]


def test_inspect_a_folder_of_parts_without_hashing_it(carry_parts: Path, keys: dict[str, KeyPair], site_root: Path,
                                                      tmp_path: Path) -> None:
    parts = tmp_path / "stick"
    shutil.copytree(carry_parts, parts)
    files = part_files(parts)
    gone = files[1]
    gone.unlink()  # the second stick has not come yet
    flip_bit(files[0], os.path.getsize(files[0]) - 10)  # a payload byte: only hashing would notice
    code, doc, _ = _inspect(parts, "--trust-root", str(site_root))
    assert code == 0, doc
    d = doc["data"]
    _common(d, 5)
    assert d["source"] == "parts" and d["signers"] == [f"alice ({keys['alice'].keyid[:16]})"]
    p = d["parts"]
    assert (p["kind"], p["base"], p["total"], p["complete"]) == ("split", None, len(files), False)
    assert [m["name"] for m in p["missing"]] == [gone.name] and len(p["present"]) == len(files) - 1
    code, text, _ = _inspect(parts, as_json=False)
    assert code == 0 and "not verified" in text and f"missing  part 2  {gone.name}" in text, text
    assert f"parts here: {len(files) - 1} of {len(files)}" in text


def test_inspect_one_part(carry_parts: Path) -> None:
    files = part_files(carry_parts)
    code, doc, _ = _inspect(files[0])
    assert code == 0, doc
    d = doc["data"]
    _common(d, 5)
    assert d["source"] == "part" and [x["part"] for x in d["parts"]["present"]] == [1]
    assert len(d["parts"]["missing"]) == len(files) - 1
    code, text, _ = _inspect(files[0], as_json=False)
    assert code == 0 and "tiny-demo v5" in text and "not verified" in text and f"parts here: 1 of {len(files)}" in text


def test_inspect_a_delta_names_its_base(delta_dir: Path, carry_v5: Path) -> None:
    code, doc, _ = _inspect(delta_dir)
    assert code == 0, doc
    d = doc["data"]
    _common(d, 6)
    base = json.loads((carry_v5 / "manifest.json").read_text())
    assert d["source"] == "delta" and d["parts"]["base"]["version"] == base["version"] == 5
    assert d["parts"]["base"]["name"] == "tiny-demo" and d["parts"]["complete"] is True
    assert 0 < d["parts"]["carried_bytes"] < d["bytes"]  # the rest comes from the base
    code, text, _ = _inspect(delta_dir, as_json=False)
    assert code == 0 and "delta: applies to tiny-demo v5" in text and "not verified" in text, text


def test_a_truncated_part_is_reported_not_a_crash(carry_parts: Path, tmp_path: Path) -> None:
    parts = tmp_path / "stick"
    shutil.copytree(carry_parts, parts)
    cut = part_files(parts)[2]
    with open(cut, "r+b") as f:
        f.truncate(os.path.getsize(cut) // 2)
    code, doc, _ = _inspect(parts)  # the folder: read, the cut part named as damaged (and so missing)
    assert code == 1 and doc["exit_code"] == 1, doc
    assert [(f["code"], Path(f["subject"]).name) for f in doc["findings"]] == [("parts.damaged", cut.name)]
    assert "truncated" in doc["findings"][0]["message"] and cut.name in [m["name"] for m in
                                                                         doc["data"]["parts"]["missing"]]
    code, text, _ = _inspect(parts, as_json=False)
    assert code == 1 and "parts.damaged" in text and cut.name in text, text
    code, doc, _ = _inspect(cut)  # the part alone
    assert (code, doc["error"]["code"]) == (1, "parts.damaged") and "truncated" in doc["error"]["message"], doc
