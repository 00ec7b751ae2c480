"""Pack from real local sources: selection, resume after SIGKILL, disk space, atomic appearance."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptossctl.bundle.keys import load_public_key
from gptossctl.bundle.verify import TrustPolicy, verify_bundle
from gptossctl.demo.tinymodel import write_tiny_model
from tests.conftest import PASSPHRASE, KeyPair, finding_codes

pytestmark = pytest.mark.integration
RECIPE = str(Path(__file__).resolve().parents[2] / "bundles" / "tiny-demo.yaml")
ENV = {**os.environ, "GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode()}


def test_pack_takes_only_what_vllm_reads(packed: Path) -> None:
    files = {p.relative_to(packed / "payload").as_posix() for p in (packed / "payload").rglob("*") if p.is_file()}
    model = {f for f in files if f.startswith("model/")}
    assert "model/config.json" in model and "model/LICENSE" in model and "model/USAGE_POLICY" in model
    assert not any(f.startswith(("model/original/", "model/metal/")) for f in model)
    assert {"profiles/cpu-tiny.yaml", "systemd/gptoss@.service"} <= files
    manifest = json.loads((packed / "manifest.json").read_bytes())
    assert manifest["components"]["model"]["revision"] == "embedded"
    assert sorted(f["path"] for f in manifest["files"]) == sorted(files)
    assert not list(packed.parent.glob("*.partial"))


def test_pack_refuses_existing_output(cli, packed: Path, keys: dict[str, KeyPair], tiny_model: Path) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("bundle", "pack", RECIPE, "--out", str(packed), "--key", str(keys["alice"].private),
                    "--model-dir", str(tiny_model), env={"GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode()})
    assert code == 2 and doc["error"]["code"] == "pack.exists"


def test_bad_recipe_points_at_the_line(cli, tmp_path: Path, keys: dict[str, KeyPair]) -> None:  # type: ignore[no-untyped-def]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("schema: gptossctl.bundle-spec/1\nname: ok\nmodel:\n  name: m\n  repo: r\n  revison: x\n")
    code, doc = cli("bundle", "pack", str(recipe), "--out", str(tmp_path / "o"), "--key", str(keys["alice"].private))
    assert code == 2 and doc["error"]["code"] == "spec.invalid"
    assert "line 6: model.revison" in doc["error"]["hint"] and "line 3: model.revision" in doc["error"]["hint"]


def _big_model(root: Path, shards: int, size: int) -> Path:
    write_tiny_model(root)
    for i in range(shards):
        (root / f"model-{i + 1:05d}-of-{shards:05d}.safetensors").write_bytes(os.urandom(size))
    return root


def test_interrupted_pack_resumes_without_recopying(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    model = _big_model(tmp_path / "m", shards=48, size=4 << 20)
    out = tmp_path / "bundle"
    journal = tmp_path / "bundle.partial" / ".gptossctl-pack.jsonl"
    cmd = [sys.executable, "-m", "gptossctl", "bundle", "pack", RECIPE, "--out", str(out), "--key",
           str(keys["alice"].private), "--model-dir", str(model), "--workers", "1", "--json"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_text().count("\n") >= 5:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "pack finished before it could be interrupted"
    assert not out.exists(), "an interrupted pack must not leave a bundle that looks complete"
    done_before = journal.read_text().count("\n")
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)["data"]
    assert doc["reused"] >= done_before >= 5
    assert doc["copied"] + doc["reused"] + 1 == doc["files"]  # + the SBOM, generated, not copied
    assert not (tmp_path / "bundle.partial").exists()
    verify_bundle(out, TrustPolicy((load_public_key(keys["alice"].public),)))


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB filesystem (tmpfs); CI runs as root so this is never skipped."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_pack_refuses_when_disk_is_too_small(cli, small_disk: Path, tmp_path: Path, keys: dict[str, KeyPair]) -> None:  # type: ignore[no-untyped-def]
    model = _big_model(tmp_path / "m", shards=3, size=8 << 20)
    code, doc = cli("bundle", "pack", RECIPE, "--out", str(small_disk / "b"), "--key", str(keys["alice"].private),
                    "--model-dir", str(model), env={"GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode()})
    assert code == 1 and doc["error"]["code"] == "pack.insufficient_disk"
    assert "MiB free" in doc["error"]["message"]  # a small disk in MiB, not "0.01 GiB"
    assert not (small_disk / "b").exists()


def test_cosign_refuses_a_bundle_whose_files_changed(cli, bundle: Path, keys: dict[str, KeyPair]) -> None:  # type: ignore[no-untyped-def]
    (bundle / "payload/model/config.json").write_text("{}")
    code, doc = cli("bundle", "sign", str(bundle), "--key", str(keys["bob"].private),
                    env={"GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode()})
    assert code == 1 and "bundle.size_mismatch" in finding_codes(doc)


def test_inspect_reads_without_hashing(cli, bundle: Path, keys: dict[str, KeyPair]) -> None:  # type: ignore[no-untyped-def]
    (bundle / "payload/model/config.json").write_text("{}")  # inspect does not vouch, so it still reads
    code, doc = cli("bundle", "inspect", str(bundle))
    assert code == 0
    d = doc["data"]
    assert d["name"] == "tiny-demo" and d["version"] == 5 and d["verified"] is False
    assert d["signers"] == [keys["alice"].keyid] and set(d["components"]) == {"model", "profiles", "units", "sbom"}


def _pack(cli, keys: dict[str, KeyPair], model: Path, out: Path):  # type: ignore[no-untyped-def]
    return cli("bundle", "pack", RECIPE, "--out", str(out), "--key", str(keys["alice"].private), "--model-dir",
               str(model), env={"GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode()})


def test_pack_refuses_links_that_leave_the_model_directory(cli, keys: dict[str, KeyPair], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = write_tiny_model(tmp_path / "model")
    secret = tmp_path / "root-only.txt"
    secret.write_text("not for the bundle\n")
    secret.chmod(0o600)
    (model / "tokenizer.json").unlink()
    (model / "tokenizer.json").symlink_to(secret)
    code, doc = _pack(cli, keys, model, tmp_path / "out")
    assert code == 2 and doc["error"]["code"] == "pack.link_escapes", doc
    assert str(model / "tokenizer.json") in doc["error"]["message"] and str(secret) in doc["error"]["message"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_pack_follows_links_inside_the_model_directory_and_detects_loops(cli, keys: dict[str, KeyPair],  # type: ignore[no-untyped-def]
                                                                        tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "model")
    (model / "store").mkdir()
    (model / "config.json").rename(model / "store" / "config.json")
    (model / "config.json").symlink_to("store/config.json")  # a link that stays inside: fine
    code, doc = _pack(cli, keys, model, tmp_path / "ok")
    assert code == 0, doc
    assert not (tmp_path / "ok/payload/model/config.json").is_symlink()
    (model / "store" / "again").symlink_to("..")  # a directory reached twice: a loop
    code, doc = _pack(cli, keys, model, tmp_path / "loop")
    assert code == 2 and doc["error"]["code"] == "pack.link_loop", doc


def test_a_second_pack_to_the_same_out_copies_no_byte(cli, keys: dict[str, KeyPair], tiny_model: Path,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "b"
    partial = tmp_path / "b.partial"
    (partial / "payload").mkdir(parents=True)
    with open(partial / ".gptossctl-pack.jsonl", "a") as held:  # a first pack holds its journal's lock
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        code, doc = _pack(cli, keys, tiny_model, out)
    assert code == 3 and doc["error"]["code"] == "pack.locked", doc
    assert list((partial / "payload").iterdir()) == [] and not out.exists()


def test_pack_refuses_an_output_inside_its_source(cli, keys: dict[str, KeyPair], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = write_tiny_model(tmp_path / "model")
    code, doc = _pack(cli, keys, model, model / "bundle")
    assert code == 2 and doc["error"]["code"] == "pack.out_inside_source"
    assert not (model / "bundle.partial").exists()


def test_an_unreadable_model_file_is_named_not_a_crash(keys: dict[str, KeyPair],
                                                       request: pytest.FixtureRequest) -> None:
    """As a user who may not read one model file (a root-only file in a shared model tree): exit 3 naming it,
    through the console script, never exit 70."""
    work = Path(tempfile.mkdtemp(prefix="gptossctl-pack-"))  # pytest's tmp tree is root-only (0700)
    request.addfinalizer(lambda: shutil.rmtree(work, ignore_errors=True))
    model = write_tiny_model(work / "model")
    key = work / "a.key"
    key.write_bytes(keys["alice"].private.read_bytes())
    (model / "config.json").chmod(0)
    os.chown(key, 65534, 65534)
    key.chmod(0o600)
    work.chmod(0o777)
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          str(Path(sys.executable).with_name("gptossctl")), "bundle", "pack", RECIPE, "--model-dir",
                          str(model), "--out", str(work / "out"), "--key", str(key), "--json"],
                         capture_output=True, text=True, env=ENV, check=False)
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert res.returncode == 3 and doc["error"]["code"] == "pack.source_unreadable", doc
    assert str(model / "config.json") in doc["error"]["message"]
    assert not (work / "out").exists()
