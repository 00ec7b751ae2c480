"""Hostile transport data, through the installed console script: what is not signed (a part header's name,
version and layout names, parts.json) never chooses a path or a verdict, and manifest paths that are one file
on another disk (NFC/NFD twins, case-only twins) are refused at pack and at verify.

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
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gptossctl.bundle.dsse import PAYLOAD_TYPE, pae
from gptossctl.bundle.partfile import MAGIC
from tests.conftest import PASSPHRASE, KeyPair
from tests.hostile.test_hostile_inputs import (  # noqa: F401 - `world` is a fixture: importing registers it
    World,
    _delta,
    _run,
    world,
)

pytestmark = pytest.mark.integration
GPTOSSCTL = Path(sys.executable).with_name("gptossctl")
REPO = Path(__file__).resolve().parents[2]
SIGNED_NAME = "tiny-demo"  # bundles/tiny-demo.yaml


def _split(w: World, tmp: Path) -> Path:
    parts = tmp / "parts"
    r = subprocess.run([str(GPTOSSCTL), "bundle", "split", w.paths["bundle"], "--out", str(parts), "--part-size",
                        "1108480"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return parts


def _rewrite_header(part: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit a part's (unsigned) header in place: the JSON between the length line and the body."""
    data = bytearray(part.read_bytes())
    length = int(data[len(MAGIC): len(MAGIC) + 16])
    start = len(MAGIC) + 17
    header = json.loads(bytes(data[start: start + length]))
    edit(header)
    raw = json.dumps(header, separators=(",", ":")).encode()
    body = header["body"]
    assert start + len(raw) <= body, "the edited header must still fit before the body"
    new = MAGIC + b"%016d\n" % len(raw) + raw
    data[: body] = new + b"\0" * (body - len(new))
    part.write_bytes(bytes(data))


def _set_bundle(**fields: Any) -> Callable[[dict[str, Any]], None]:
    def edit(h: dict[str, Any]) -> None:
        h["bundle"].update(fields)
    return edit


def _doc(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return json.loads(r.stdout)


def _codes(doc: dict[str, Any]) -> list[str]:
    return [(doc.get("error") or {}).get("code")] + [f["code"] for f in doc.get("findings", [])]


# ---------------------------------------------------------------- 1. part headers are hints, never paths

@pytest.mark.parametrize("name", ["../../../../evil", "evil"])
def test_verify_of_parts_with_a_renamed_header_fails_and_reports_the_signed_name(name: str, world: World,
                                                                                tmp_path: Path) -> None:
    parts = _split(world, tmp_path)
    for p in sorted(parts.glob("*.part")):
        _rewrite_header(p, _set_bundle(name=name))
    doc = _doc(r := _run(["bundle", "verify", str(parts), "--trust", world.paths["pub"]], {}))
    assert r.returncode == 1, doc
    assert "parts.header_mismatch" in _codes(doc), doc
    text = json.dumps(doc)
    assert SIGNED_NAME in text  # the finding says what the signed manifest calls it
    one = sorted(parts.glob("*.part"))[0]
    doc = _doc(r := _run(["bundle", "verify", str(one), "--trust", world.paths["pub"]], {}))
    assert r.returncode == 1 and "parts.header_mismatch" in _codes(doc), doc


def test_verify_of_parts_reports_the_signed_name_and_version(world: World, tmp_path: Path) -> None:
    parts = _split(world, tmp_path)
    doc = _doc(r := _run(["bundle", "verify", str(parts), "--trust", world.paths["pub"]], {}))
    assert r.returncode == 0, doc
    assert doc["data"]["name"] == SIGNED_NAME and doc["data"]["version"] == 5


@pytest.mark.parametrize("edit", [_set_bundle(version=6), _set_bundle(version="1/../.."),
                                  _set_bundle(name="tiny-gpt-oss/../../x")],
                         ids=["other-version", "path-version", "path-name"])
def test_a_header_disagreeing_with_the_signed_manifest_is_refused(edit: Callable[[dict[str, Any]], None],
                                                                  world: World, tmp_path: Path) -> None:
    parts = _split(world, tmp_path)
    victim = sorted(parts.glob("*.part"))[0]
    _rewrite_header(victim, edit)
    doc = _doc(r := _run(["bundle", "verify", str(parts), "--trust", world.paths["pub"]], {}))
    assert r.returncode == 1, doc
    bad = [f for f in doc["findings"] if f["subject"] == str(victim)]
    assert bad and bad[0]["code"] in ("parts.header_mismatch", "parts.damaged"), doc


def test_a_renamed_layout_entry_is_refused(world: World, tmp_path: Path) -> None:
    """Part names in the layout are derived from the signed name: `bundle copy` names the files it writes
    after them, so a header naming its part `parts.json` or another bundle's part is a finding."""
    parts = _split(world, tmp_path)
    for p in sorted(parts.glob("*.part")):
        _rewrite_header(p, lambda h: h["layout"][0].update(name="evil.001-of-002.part"))
    doc = _doc(r := _run(["bundle", "verify", str(parts), "--trust", world.paths["pub"]], {}))
    assert r.returncode == 1 and "parts.header_mismatch" in _codes(doc), doc


def test_install_from_parts_with_a_path_in_the_header_writes_nothing_outside_the_root(world: World,
                                                                                     tmp_path: Path) -> None:
    """Install rebuilds parts in opt/gptoss/.incoming/<name>-<version>-<digest>: the name is the signed one.
    With every header naming `../../../../evil`, nothing may appear beside the root, and the install fails."""
    parts = _split(world, tmp_path)
    for p in sorted(parts.glob("*.part")):
        _rewrite_header(p, _set_bundle(name="../../../../evil"))
    root = tmp_path / "stage" / "root"
    root.mkdir(parents=True)
    r = _run(["install", str(parts), "--trust", world.paths["pub"], "--root", str(root), "--vllm-python",
              sys.executable], {})
    doc = _doc(r)
    assert r.returncode == 1, doc
    escaped = sorted(str(p) for p in tmp_path.rglob("*evil*"))
    assert not escaped, escaped
    assert not (root / "opt" / "gptoss" / "tiny-gpt-oss").exists()


def test_copy_leaves_behind_a_parts_json_that_is_not_this_set(world: World, tmp_path: Path) -> None:
    parts = _split(world, tmp_path)
    idx = json.loads((parts / "parts.json").read_text())
    idx["bundle"]["name"] = "evil"
    (parts / "parts.json").write_text(json.dumps(idx))
    dst = tmp_path / "dst"
    doc = _doc(r := _run(["bundle", "copy", str(parts), str(dst), "--trust", world.paths["pub"]], {}))
    assert r.returncode == 0, doc
    assert sorted(p.name for p in dst.glob("*.part")) == sorted(p.name for p in parts.glob("*.part"))
    assert not (dst / "parts.json").exists()


def test_a_delta_whose_unsigned_base_name_is_a_path_is_refused(world: World, tmp_path: Path) -> None:
    """A delta's base ref is never signed: its name only says which base to bring, so it must be a bundle
    name; `../../x` makes the part damaged (exit 1) rather than a message or a path."""
    d = Path(_delta(world, tmp_path)["d"])
    for p in sorted(d.glob("*.part")):
        _rewrite_header(p, lambda h: h["base"].update(name="../../x"))
    doc = _doc(r := _run(["bundle", "verify", str(d), "--trust", world.paths["pub"]], {}))
    assert r.returncode == 1 and "parts.damaged" in _codes(doc), doc


# ---------------------------------------------------------------- 2. one file on another disk

def _signer(w: World) -> KeyPair:
    return KeyPair("alice", Path(w.paths["key"]), Path(w.paths["pub"]), "")


def _resign(w: World, tmp: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    b = tmp / "b"
    shutil.copytree(w.paths["bundle"], b, symlinks=True)
    doc = json.loads((b / "manifest.json").read_bytes())
    edit(doc)
    raw = json.dumps(doc, indent=1).encode()
    key = _signer(w).signer()
    sig = key.sign(pae(PAYLOAD_TYPE, raw))
    env = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(raw).decode(),
           "signatures": [{"keyid": key.keyid, "sig": base64.b64encode(sig).decode()}]}
    (b / "manifest.json").write_bytes(raw)
    (b / "manifest.dsse.json").write_text(json.dumps(env))
    return b


def test_verify_refuses_case_twins_as_a_collision(world: World, tmp_path: Path) -> None:
    def edit(doc: dict[str, Any]) -> None:
        first = next(f for f in doc["files"] if f["path"] != f["path"].upper())
        doc["files"].append({**first, "path": first["path"].upper()})
    b = _resign(world, tmp_path, edit)
    doc = _doc(r := _run(["bundle", "verify", str(b), "--trust", world.paths["pub"]], {}))
    assert r.returncode == 1 and "bundle.path_collision" in _codes(doc), doc


def test_verify_refuses_nfc_nfd_twins(world: World, tmp_path: Path) -> None:
    def edit(doc: dict[str, Any]) -> None:
        first = dict(doc["files"][0])
        head = first["path"].rsplit("/", 1)[0]
        doc["files"][0] = {**first, "path": f"{head}/{unicodedata.normalize('NFC', 'café.bin')}"}
        doc["files"].append({**first, "path": f"{head}/{unicodedata.normalize('NFD', 'café.bin')}"})
    b = _resign(world, tmp_path, edit)
    doc = _doc(r := _run(["bundle", "verify", str(b), "--trust", world.paths["pub"]], {}))
    assert r.returncode == 1, doc
    codes = _codes(doc)
    assert "bundle.path_collision" in codes and "manifest.unsafe_path" in codes, doc  # NFD: not NFC either


def _pack(w: World, model: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """Pack the demo recipe with every *.json of the model directory included."""
    recipe = out.parent / "recipe.yaml"
    text = Path(w.paths["recipe"]).read_text()
    recipe.write_text(text.replace("  license: Apache-2.0\n", "  license: Apache-2.0\n  include: ['*.json', "
                                   "'model-*.safetensors', 'chat_template.jinja', 'LICENSE', 'USAGE_POLICY']\n"))
    env = {"GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode()}
    return _run(["bundle", "pack", str(recipe), "--model-dir", str(model), "--out", str(out), "--key",
                 w.paths["key"], "--version", "9"], env)


@pytest.mark.parametrize("names", [
    (unicodedata.normalize("NFC", "café.json"), unicodedata.normalize("NFD", "café.json")),
    ("notes.json", "NOTES.json"),
], ids=["nfc-nfd", "case"])
def test_pack_refuses_names_that_are_one_file_on_another_disk(names: tuple[str, str], world: World,
                                                              tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(world.paths["model"], model)
    for n in names:
        (model / n).write_text(json.dumps({"name": n}) + "\n")  # *.json: the recipe's include patterns take it
    if len({p.name for p in model.iterdir()} & set(names)) < 2:
        pytest.fail("this filesystem folds the names itself: the case cannot be built here")
    out = tmp_path / "out"
    doc = _doc(r := _pack(world, model, out))
    assert r.returncode == 2 and _codes(doc)[0] == "bundle.path_collision", doc
    assert not out.exists() and not os.path.exists(str(out) + ".partial")


def test_pack_refuses_a_name_that_is_not_nfc(world: World, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(world.paths["model"], model)
    (model / unicodedata.normalize("NFD", "café.json")).write_text("{}\n")
    out = tmp_path / "out"
    doc = _doc(r := _pack(world, model, out))
    assert r.returncode == 2 and _codes(doc)[0] == "pack.unsafe_path", doc
    assert not out.exists()


# ---------------------------------------------------------------- 3. no value breaks a unit's line

@pytest.mark.parametrize("flag", ["--api-key-file", "--compare-api-key-file"])
@pytest.mark.parametrize("brk", ["\n", "\r", "\u2028"], ids=["lf", "cr", "ls"])
def test_canary_schedule_refuses_a_line_break_in_a_key_file_path(flag: str, brk: str, world: World,
                                                                 tmp_path: Path) -> None:
    """A key file named `k<LF>User=root` exists and holds a key: the drop-in would carry the
    directive. Refused exit 2 before anything is written (staged: the whole root stays empty)."""
    keydir = tmp_path / "keys"
    keydir.mkdir()
    key = keydir / f"k{brk}User=root"
    key.write_text("canary-schedule-key-0123456789abcdef\n")
    key.chmod(0o600)
    root = tmp_path / "root"
    root.mkdir()
    argv = ["canary", "schedule", "--name", "wk", "--root", str(root), "--url", f"http://127.0.0.1:{world.paths['port']}",
            "--every", "1h", "--for", "1d"]
    if flag == "--compare-api-key-file":
        argv += ["--compare-url", f"http://127.0.0.1:{world.paths['port']}"]
    doc = _doc(r := _run([*argv, flag, str(key)], {}))
    assert r.returncode == 2 and _codes(doc)[0] == "service.unsafe_unit_value", doc
    assert not any(root.rglob("*")), sorted(map(str, root.rglob("*")))
