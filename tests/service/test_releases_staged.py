"""`gptossctl releases list | prune` on a staged root with real installs (the CLI in-process), and install's disk
preflight saying what a prune would free, on a real small filesystem."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from gptossctl.errors import CheckFailed
from tests.conftest import pack
from tests.service.test_install_staged import INSTANCE, _install

pytestmark = pytest.mark.integration


def _du(path: Path) -> int:
    """Bytes on disk as du counts them (allocated blocks, every inode once)."""
    return int(subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True)
               .stdout.split()[0])


def _entries(root: Path) -> list[dict]:  # type: ignore[type-arg]
    log = root / "var/log/gptoss/audit.jsonl"
    return [json.loads(ln) for ln in log.read_text().splitlines()]


def _three(cli, tiny_model: Path, keys, tmp_path: Path, root: Path | None = None) -> tuple[Path, dict[int, Path]]:  # type: ignore[no-untyped-def]
    root = root or tmp_path / "root"
    bundles = {v: pack(tmp_path / f"b{v}", tiny_model, [keys["alice"]], version=v) for v in (1, 2, 3)}
    for v in (1, 2, 3):
        code, doc = _install(cli, bundles[v], keys, root)
        assert code == 0, doc
    return root, bundles


def test_list_shows_each_release_with_its_audited_facts(cli, tiny_model: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, bundles = _three(cli, tiny_model, keys, tmp_path)
    code, doc = cli("releases", "list", "--root", str(root), "--instance", INSTANCE)
    assert code == 0, doc
    rows = {r["version"]: r for r in doc["data"]["releases"]}
    assert [(r["version"], r["state"]) for r in doc["data"]["releases"]] == \
        [(3, "current"), (2, "rollback target"), (1, "retired")]
    assert (doc["data"]["current"], doc["data"]["rollback_target"]) == (3, 2)
    installs = [e for e in _entries(root) if e["command"][0] == "install"]
    for v, e in zip((1, 2, 3), installs, strict=True):
        r = rows[v]
        # The whole digest of the signed manifest, who installed it and when: the audit entry's, not the record's.
        assert r["bundle_sha256"] == hashlib.sha256((bundles[v] / "manifest.json").read_bytes()).hexdigest()
        assert (r["installed_at"], r["installed_by"], r["audit_seq"]) == (e["time"], e["user"], e["seq"])
        assert r["signers"] == [{"name": "alice", "keyid": keys["alice"].keyid}]
        assert r["bytes"] == _du(root / "opt/gptoss" / INSTANCE / "releases" / str(v))
    assert doc["findings"] == []


def test_list_after_a_rollback_and_a_failed_upgrade(cli, tiny_model: Path, keys, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    root, _bundles = _three(cli, tiny_model, keys, tmp_path)
    assert cli("rollback", "--root", str(root), "--to", "2")[0] == 0
    b4 = pack(tmp_path / "b4", tiny_model, [keys["alice"]], version=4)

    def broken(_layout):  # type: ignore[no-untyped-def]
        raise CheckFailed("caches could not be emptied", code="install.caches_failed", hint="test")

    # A failure after the release was unpacked: the upgrade keeps it on disk for a retry, and the chain says failed.
    monkeypatch.setattr("gptossctl.install.lifecycle.wipe_kernel_caches", broken)
    code, doc = _install(cli, b4, keys, root)
    assert code == 1 and doc["error"]["code"] == "install.caches_failed", doc
    assert (root / "opt/gptoss" / INSTANCE / "releases/4/release.json").is_file()
    code, doc = cli("releases", "list", "--root", str(root))
    assert code == 0, doc
    assert [(r["version"], r["state"]) for r in doc["data"]["releases"]] == \
        [(4, "failed"), (3, "retired"), (2, "current"), (1, "rollback target")]
    # Prune keeps the current release and the rollback target whatever --keep says, and the newest other.
    code, doc = cli("releases", "prune", "--root", str(root), "--keep", "3", "--dry-run")
    assert code == 0 and [r["version"] for r in doc["data"]["removed"]] == [3], doc


def test_install_disk_preflight_says_what_prune_would_free(cli, tiny_model: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gptossctl.install.layout import Layout

    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(disk)], check=True)
    try:
        root, _bundles = _three(cli, tiny_model, keys, tmp_path, disk / "root")
        b4 = pack(tmp_path / "b4", tiny_model, [keys["alice"]], version=4)
        need = sum(f["size"] for f in json.loads((b4 / "manifest.json").read_text())["files"])
        one = _du(root / "opt/gptoss" / INSTANCE / "releases/1")
        # Fill the disk until the next release does not fit.
        st = os.statvfs(disk)
        (disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - need + one // 2))
        code, doc = _install(cli, b4, keys, root)
        assert code == 1 and doc["error"]["code"] == "install.preflight_failed", doc
        (advice,) = [f for f in doc["findings"] if f["code"] == "preflight.prune"]
        st = os.statvfs(root)
        missing = need + (64 << 20) - st.f_bavail * st.f_frsize  # unpack keeps 64 MiB beyond the payload
        # Computed from the trees as prune would choose: 3 (current) and 2 (rollback target) are kept whatever
        # --keep says, so the most a prune frees here is release 1, measured as du measures it.
        assert f"'gptossctl releases prune --instance {INSTANCE} --keep 1' would free {one} bytes" in advice["message"]
        assert f"of the {missing / 2**20:.1f} MiB missing" in advice["message"], advice
        assert "releases prune" in doc["error"]["hint"]
        # With less missing, the largest --keep that makes room is named.
        from gptossctl.install.releases import prune_advice

        text = prune_advice(Layout(root, INSTANCE), one)
        assert f"'gptossctl releases prune --instance {INSTANCE} --keep 2' would free {one} bytes" in text
        assert "enough" in text
        assert prune_advice(Layout(root, INSTANCE), one + 1).startswith(
            f"'gptossctl releases prune --instance {INSTANCE} --keep 1' would free {one} bytes")
        code, doc = cli("releases", "prune", "--root", str(root), "--instance", INSTANCE, "--keep", "1")
        assert code == 0 and doc["data"]["bytes_freed"] == one, doc
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
