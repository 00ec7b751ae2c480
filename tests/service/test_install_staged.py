"""`gptossctl install --root DIR`: the whole install into a staging tree through the real CLI, graded by the
real systemctl --root, systemd-sysusers --root and systemd-analyze. (A booted systemd: tests/integration/
test_systemd_install.py.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import KeyPair, pack

pytestmark = pytest.mark.integration
INSTANCE = "tiny-gpt-oss"


def _install(cli, bundle: Path, keys: dict[str, KeyPair], root: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli("install", str(bundle), "--trust", str(keys["alice"].public), "--root", str(root),
               "--vllm-python", sys.executable, *extra)


def _tree(root: Path) -> list[str]:
    """What an install left, but the audit log (which records refusals too)."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not str(p.relative_to(root)).startswith("var"))


def _audit_results(root: Path) -> list[str]:
    import json

    log = root / "var/log/gptoss/audit.jsonl"
    return [json.loads(ln)["result"] for ln in log.read_text().splitlines()] if log.exists() else []


def test_staged_install_lays_down_a_hardened_offline_service(cli, bundle: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    root = tmp_path / "root"
    code, doc = _install(cli, bundle, keys, root)
    assert code == 0, doc
    d = doc["data"]
    assert (d["instance"], d["version"], d["profile"], d["staged"], d["started"]) == (INSTANCE, 5, "cpu-tiny", True, False)
    assert [s["step"] for s in d["steps"] if s["status"] == "ok"][-2:] == ["switch", "compliance"]
    rel = root / "opt/gptoss" / INSTANCE / "releases/5"
    assert os.readlink(root / "opt/gptoss" / INSTANCE / "current") == "releases/5"
    # Enabled by the real `systemctl --root`; the user comes from sysusers.d through systemd-sysusers --root.
    unit = root / f"etc/systemd/system/gptoss@{INSTANCE}-r0.service"
    assert (root / f"etc/systemd/system/multi-user.target.wants/gptoss@{INSTANCE}-r0.service").is_symlink()
    assert "gptoss:" in (root / "etc/passwd").read_text()
    text = unit.read_text()
    assert f"WorkingDirectory=/opt/gptoss/{INSTANCE}/releases/5" in text and str(root) not in text
    assert f"EnvironmentFile=/opt/gptoss/{INSTANCE}/releases/5/service-r0.env" in text
    # Secrets: the key only in 0600 files, never in the unit or the config.
    key = (root / "etc/gptoss" / INSTANCE / "api-key").read_text().strip()
    assert len(key) >= 40
    for secret in (root / "etc/gptoss" / INSTANCE / "api-key", rel / "service-r0.env"):
        assert secret.stat().st_mode & 0o777 == 0o600
    env = (rel / "service-r0.env").read_text()
    assert f"VLLM_API_KEY={key}" in env
    for var in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "VLLM_NO_USAGE_STATS=1", "DO_NOT_TRACK=1"):
        assert var in env
    assert "TIKTOKEN_ENCODINGS_BASE" not in env  # the tiny demo bundle ships no vocab (the harmony one does)
    assert key not in text and key not in (rel / "vllm-r0.yaml").read_text()
    config = yaml.safe_load((rel / "vllm-r0.yaml").read_text())
    assert config["host"] == "127.0.0.1" and config["port"] == 8001
    assert config["model"] == f"/opt/gptoss/{INSTANCE}/releases/5/payload/model"
    assert config["served-model-name"] == INSTANCE and config["max-model-len"] == 2048
    # One replica is a serving set of one: the router on --port in front of r0 on --port+1, and no unit of the
    # old shape (one vLLM on the port).
    units = root / "etc/systemd/system"
    assert sorted(p.name for p in units.glob(f"gptoss*@{INSTANCE}*.service")) == \
        [f"gptoss-router@{INSTANCE}.service", f"gptoss@{INSTANCE}-r0.service"]
    assert (units / f"multi-user.target.wants/gptoss-router@{INSTANCE}.service").is_symlink()
    router = (root / "opt/gptoss" / INSTANCE / "router.conf").read_text()
    assert "listen 127.0.0.1:8000" in router and "server 127.0.0.1:8001" in router and ":8002" not in router
    assert (root / "etc/gptoss" / INSTANCE / "router-key.map").stat().st_mode & 0o777 == 0o600
    rec = json.loads((rel / "release.json").read_text())
    assert (rec["port"], rec["router"], [(r["index"], r["port"]) for r in rec["replicas"]]) == \
        (8000, "/usr/sbin/nginx", [(0, 8001)])
    assert d["unit"] == f"gptoss-router@{INSTANCE}.service" and len(d["replicas"]) == 1
    # The bundle's files are world-readable and not writable by the service; nothing is world-writable.
    weights = rel / "payload/model/model-00000-of-00001.safetensors"
    assert weights.stat().st_mode & 0o777 == 0o644
    assert not [p for p in root.rglob("*") if not p.is_symlink() and p.stat().st_mode & 0o002]


def test_the_rendered_unit_passes_systemd_analyze(cli, bundle: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    assert _install(cli, bundle, keys, root)[0] == 0
    unit = root / f"etc/systemd/system/gptoss@{INSTANCE}-r0.service"
    # Graded where the paths it names exist: as the booted tree sees itself.
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                          f"gptoss@{INSTANCE}-r0.service"], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m and float(m.group(1)) <= 2.0, res.stdout + res.stderr
    check = tmp_path / unit.name
    check.write_text(unit.read_text().replace(f"/opt/gptoss/{INSTANCE}", str(root / "opt/gptoss" / INSTANCE)))
    res = subprocess.run(["systemd-analyze", "verify", str(check)], capture_output=True, text=True)
    problems = [ln for ln in (res.stdout + res.stderr).splitlines() if "gptoss" in ln]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr


def test_dry_run_changes_nothing(cli, bundle: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    root.mkdir()
    code, doc = _install(cli, bundle, keys, root, "--dry-run")
    assert code == 0 and doc["data"]["dry_run"] is True and doc["data"]["changed"] is False
    assert {s["step"] for s in doc["data"]["steps"] if s["status"] == "skipped"} >= {"unpack", "render", "switch"}
    assert _tree(root) == []


def test_binding_beyond_loopback_is_refused_with_the_reason(cli, bundle: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, doc = _install(cli, bundle, keys, tmp_path / "root", "--host", "0.0.0.0")
    assert code == 2 and doc["error"]["code"] == "install.exposed_bind"
    assert "/invocations" in doc["error"]["message"] and "TLS" in doc["error"]["hint"]
    assert _tree(tmp_path / "root") == [] and _audit_results(tmp_path / "root") == ["failed: install.exposed_bind"]


def test_a_tampered_bundle_installs_nothing(cli, bundle: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    w = bundle / "payload/model/config.json"
    w.write_bytes(w.read_bytes() + b" ")
    code, doc = _install(cli, bundle, keys, tmp_path / "root")
    assert code == 1 and doc["error"]["code"].startswith("bundle.")
    assert doc["data"]["steps"][-1] == {**doc["data"]["steps"][-1], "step": "verify", "status": "failed"}
    assert _tree(tmp_path / "root") == [] and _audit_results(tmp_path / "root")[0].startswith("failed: bundle.")


def test_untrusted_signer_installs_nothing(cli, bundle: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("install", str(bundle), "--trust", str(keys["mallory"].public), "--root", str(tmp_path / "r"),
                    "--vllm-python", sys.executable)
    codes = [f["code"] for f in doc["findings"]]  # alice is not counted (a note), so the threshold is not met
    assert code == 1 and {"signature.threshold_not_met", "signature.unknown_signer"} <= set(codes)
    assert _tree(tmp_path / "r") == []


def test_downgrade_refused_unless_asked_then_rollback_and_uninstall(cli, tiny_model: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    b3 = pack(tmp_path / "b3", tiny_model, [keys["alice"]], version=3)
    b7 = pack(tmp_path / "b7", tiny_model, [keys["alice"]], version=7)
    assert _install(cli, b7, keys, root)[0] == 0
    code, doc = _install(cli, b3, keys, root)
    assert code == 1 and doc["error"]["code"] == "install.downgrade" and "--allow-downgrade" in doc["error"]["hint"]
    assert _install(cli, b3, keys, root, "--allow-downgrade")[0] == 0
    code, doc = cli("status", "--root", str(root))
    (row,) = doc["data"]["instances"]
    assert (row["version"], row["installed"], row["state"], row["consistent"]) == (3, [3, 7], "staged", True)
    code, doc = cli("rollback", "--root", str(root), "--to", "7")
    assert code == 0 and os.readlink(root / "opt/gptoss" / INSTANCE / "current") == "releases/7"
    assert "releases/7" in (root / f"etc/systemd/system/gptoss@{INSTANCE}-r0.service").read_text()
    code, doc = cli("rollback", "--root", str(root), "--to", "4")
    assert code == 1 and doc["error"]["code"] == "rollback.no_release"
    # Uninstall keeps the key and state unless --purge; --purge leaves nothing of gptossctl's.
    code, doc = cli("uninstall", "--root", str(root))
    assert code == 0 and str(root / "etc/gptoss" / INSTANCE) in doc["data"]["kept"]
    assert not (root / "opt/gptoss" / INSTANCE).exists()
    assert not (root / f"etc/systemd/system/multi-user.target.wants/gptoss@{INSTANCE}-r0.service").exists()
    assert _install(cli, b7, keys, root)[0] == 0
    code, doc = cli("uninstall", "--root", str(root), "--purge")
    assert code == 0
    left = [str(p.relative_to(root)) for p in root.rglob("*") if "gptoss" in str(p.relative_to(root))]
    # Only the audit log (and its anchor) stays: it records the uninstall itself.
    assert sorted(left) == ["var/lib/gptossctl", "var/lib/gptossctl/audit.anchor", "var/log/gptoss",
                            "var/log/gptoss/audit.head", "var/log/gptoss/audit.jsonl"], left
    code, doc = cli("audit", "verify", "--root", str(root))
    assert code == 0 and doc["data"]["entries"] == 8
    assert _audit_results(root) == ["ok", "failed: install.downgrade", "ok", "ok", "failed: rollback.no_release",
                                    "ok", "ok", "ok"]


def test_an_interrupted_install_converges_and_never_marks_a_partial_release(cli, bundle: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    rel = root / "opt/gptoss" / INSTANCE / "releases"
    # What SIGKILL leaves: a half-copied .partial and a release directory that never got its record.
    (rel / ".5.partial/payload/model").mkdir(parents=True)
    (rel / ".5.partial/payload/model/config.json").write_text("{half")
    (rel / "5/payload").mkdir(parents=True)
    code, doc = cli("status", "--root", str(root))
    assert doc["data"]["instances"][0]["version"] is None  # nothing is marked current
    code, doc = _install(cli, bundle, keys, root)
    assert code == 0, doc
    assert sorted(p.name for p in rel.iterdir()) == ["5"] and (rel / "5/release.json").is_file()
    assert (rel / "5/payload/model/config.json").read_bytes() == (bundle / "payload/model/config.json").read_bytes()


def test_disk_full_during_unpack_activates_nothing(cli, bundle: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    root.mkdir()
    # Room for the checks' margin but not for the payload: a real tmpfs, filled by the copy itself.
    total = sum(p.stat().st_size for p in (bundle / "payload").rglob("*") if p.is_file())
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={total // 2}", "tmpfs", str(root)], check=True)
    try:
        code, doc = _install(cli, bundle, keys, root)
        # Refused by the preflight's disk check, before a byte is written (a disk filling up during the
        # copy itself: tests/service/test_releases.py).
        assert code == 1 and doc["error"]["code"] == "install.preflight_failed"
        disk = [f for f in doc["findings"] if f["code"] == "preflight.host.disk"]
        assert disk and "GiB free" in disk[0]["message"], doc["findings"]
        rel = root / "opt/gptoss" / INSTANCE
        assert not (rel / "current").exists() and not list((rel / "releases").glob("*")) if rel.exists() else True
        assert not (root / f"etc/systemd/system/gptoss@{INSTANCE}-r0.service").exists()
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)
    shutil.rmtree(root, ignore_errors=True)


def test_the_audit_log_records_every_change_and_catches_tampering(cli, tiny_model: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    root = tmp_path / "root"
    b1 = pack(tmp_path / "b1", tiny_model, [keys["alice"]], version=1)
    b2 = pack(tmp_path / "b2", tiny_model, [keys["alice"]], version=2)
    assert _install(cli, b1, keys, root)[0] == 0
    assert _install(cli, b2, keys, root)[0] == 0
    assert _install(cli, b1, keys, root)[0] == 1  # a refused downgrade is recorded too
    assert _install(cli, b1, keys, root, "--dry-run")[0] == 1  # refused, and a dry run records nothing
    log = root / "var/log/gptoss/audit.jsonl"
    entries = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [e["result"] for e in entries] == ["ok", "ok", "failed: install.downgrade"]
    assert entries[0]["bundle_sha256"] == __import__("hashlib").sha256((b1 / "manifest.json").read_bytes()).hexdigest()
    assert all(e["user"] and e["command"][0] == "install" and e["instance"] == INSTANCE for e in entries)
    assert log.stat().st_mode & 0o777 == 0o640
    code, doc = cli("audit", "verify", "--root", str(root))
    assert code == 0 and doc["data"]["entries"] == 3
    original = log.read_text()
    lines = original.splitlines(keepends=True)
    # An edited entry, a deleted entry, and entries cut off the end: each caught, with the line named.
    for tampered, want in ((original.replace('"failed: install.downgrade"', '"ok"'), "audit.entry_modified"),
                           (lines[0] + lines[2], "audit.chain_broken"),
                           (lines[0] + lines[1], "audit.truncated")):
        log.write_text(tampered)
        code, doc = cli("audit", "verify", "--root", str(root))
        assert code == 1 and [f["code"] for f in doc["findings"]][0] == want, doc
    log.write_text(original)
    assert cli("audit", "verify", "--root", str(root))[0] == 0


def test_a_missing_host_library_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from gptossctl.errors import CheckFailed
    from gptossctl.install import preflight as inst

    assert "libnuma.so.1 present" == inst.check_host_libraries("cpu")  # this host has it (CI too)
    monkeypatch.setitem(inst.HOST_LIBRARIES, "cpu", (("libgptoss-absent.so.9", "gptoss-absent-pkg"),))
    with pytest.raises(CheckFailed) as exc:
        inst.check_host_libraries("cpu")
    assert exc.value.code == "install.host_library_missing" and "gptoss-absent-pkg" in (exc.value.hint or "")
