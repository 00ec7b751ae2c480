"""Several replicas on one host, staged: `gptossctl install --root DIR` against a captured 8x H100 server lays
down eight vLLM replica units (each pinned to its own GPU and port) and the router in front of them, graded by
the real systemd-analyze (verify, and security --offline=true at most 2.0) and the router's configuration by
the real `nginx -t`. Compliance covers every unit and the router; tampering with the router is caught.
(A booted systemd serving replicas behind the router: tests/integration/test_scaleout.py.)

The bundle carries the tiny model's weights with gpt-oss-120b's config.json: the config makes it 120b-class (its
profiles match), sizing uses the signed weights' real size, so every H100 of the capture holds a replica and the
layout is the one `hw check` proposes for a real 120b."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from gptossctl.pack.pack import pack_bundle
from gptossctl.pack.spec import load_spec
from tests.conftest import FIXTURES, KeyPair
from tests.hardware.test_layout import H100_XML, multiply_xml

pytestmark = pytest.mark.integration
INSTANCE = "gpt-oss-120b"
RECIPE = """schema: gptossctl.bundle-spec/1
name: gpt-oss-120b-staged
description: the tiny model under the 120b's name, for staged replica layouts
expires_in: 90d
model:
  name: openai/gpt-oss-120b
  repo: openai/gpt-oss-120b
  revision: test
  license: Apache-2.0
profiles: [hopper-120b]
units: [gptoss@.service]
"""


def pack_120b(work: Path, model: Path, key: KeyPair, version: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    (work / "recipe.yaml").write_text(RECIPE)
    spec, spec_dir = load_spec(work / "recipe.yaml")
    # The class comes from the config, not the name: the tiny weights with the published 120b config.json.
    shaped = work / "model-120b"
    if not shaped.exists():
        shutil.copytree(model, shaped)
        shutil.copy(FIXTURES / "gpt-oss" / "openai_gpt-oss-120b__config.json", shaped / "config.json")
    pack_bundle(spec, spec_dir, work / f"b{version}", [key.signer()], model_dir=shaped, version=version)
    return work / f"b{version}"


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return multiply_xml(H100_XML, 8, tmp_path_factory.mktemp("caps") / "h100x8.xml")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, keys: dict[str, KeyPair]) -> list[Path]:
    work = tmp_path_factory.mktemp("b120")
    return [pack_120b(work, tiny_model, keys["alice"], v) for v in (1, 2, 3)]


def _install(cli, bundle: Path, keys, root: Path, capture: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli("install", str(bundle), "--trust", str(keys["alice"].public), "--root", str(root),
               "--vllm-python", sys.executable, "--nvidia-smi-xml", str(capture), *extra)


def _units(root: Path) -> Path:
    return root / "etc/systemd/system"


def _serving(root: Path) -> list[str]:
    """The instance's serving units and their enablement links (not the compliance timer's)."""
    return sorted(str(p.relative_to(_units(root))) for p in _units(root).rglob("*")
                  if re.fullmatch(rf"gptoss(-router)?@{INSTANCE}(-r\d+)?\.service", p.name))


def _graded(root: Path, unit: str) -> float:
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}", unit],
                         capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    return float(m.group(1))


def _verify(root: Path, unit: Path, tmp: Path) -> None:
    """systemd-analyze verify, with the paths the unit names moved under the staging root (as booted)."""
    check = tmp / unit.name
    check.write_text(unit.read_text().replace("/opt/gptoss/", f"{root}/opt/gptoss/")
                     .replace("/etc/gptoss/", f"{root}/etc/gptoss/"))
    res = subprocess.run(["systemd-analyze", "verify", str(check)], capture_output=True, text=True)
    problems = [ln for ln in (res.stdout + res.stderr).splitlines() if "gptoss" in ln]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr


def _nginx_t(root: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` of the router's running configuration, its credential and runtime paths moved into tmp."""
    assert shutil.which("nginx"), "nginx is required (Debian package nginx-light; scripts/test.sh installs it)"
    run = tmp / "run"
    run.mkdir(exist_ok=True)
    cred = tmp / "api-key.map"
    shutil.copy(root / "etc/gptoss" / INSTANCE / "router-key.map", cred)
    conf = tmp / "nginx.conf"
    conf.write_text((root / "opt/gptoss" / INSTANCE / "router.conf").read_text()
                    .replace(f"/run/credentials/gptoss-router@{INSTANCE}.service/api-key.map", str(cred))
                    .replace(f"/run/gptoss-router/{INSTANCE}", str(run)))
    return subprocess.run(["nginx", "-t", "-e", "stderr", "-c", str(conf)], capture_output=True, text=True)


@pytest.fixture()
def tree(cli, bundles: list[Path], keys, capture: Path, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    code, doc = _install(cli, bundles[0], keys, root, capture)
    assert code == 0, json.dumps(doc, indent=1)[-3000:]
    return root


def test_eight_h100s_render_eight_pinned_replicas_and_the_router(cli, tree: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rel = tree / "opt/gptoss" / INSTANCE / "releases/1"
    rec = json.loads((rel / "release.json").read_text())
    assert [(r["index"], r["port"], r["gpus"]) for r in rec["replicas"]] == [(k, 8001 + k, [k]) for k in range(8)]
    assert rec["port"] == 8000 and rec["router"] == "/usr/sbin/nginx" and len({r["uuids"][0] for r in rec["replicas"]}) == 8
    units = sorted(p.name for p in _units(tree).glob("gptoss*@gpt-oss-120b*.service"))
    assert units == [f"gptoss-router@{INSTANCE}.service"] + [f"gptoss@{INSTANCE}-r{k}.service" for k in range(8)]
    assert not (_units(tree) / f"gptoss@{INSTANCE}.service").exists()  # the one-vLLM unit is not there
    seen_gpus, seen_ports = [], []
    for k in range(8):
        unit = (_units(tree) / f"gptoss@{INSTANCE}-r{k}.service").read_text()
        assert unit == (rel / f"unit-r{k}.service").read_text()
        gpus = re.findall(r"^DeviceAllow=/dev/nvidia(\d+) rw$", unit, re.M)
        assert gpus == [str(k)], gpus  # exactly its own GPU, besides the control devices
        env = (rel / f"service-r{k}.env").read_text()
        assert f"CUDA_VISIBLE_DEVICES={k}\n" in env and "CUDA_DEVICE_ORDER=PCI_BUS_ID\n" in env
        assert f"HOME=/var/lib/gptoss/{INSTANCE}-r{k}\n" in env and (rel / f"service-r{k}.env").stat().st_mode & 0o777 == 0o600
        config = yaml.safe_load((rel / f"vllm-r{k}.yaml").read_text())
        assert config["host"] == "127.0.0.1" and config["tensor-parallel-size"] == 1
        seen_gpus += gpus
        seen_ports.append(config["port"])
        assert (_units(tree) / f"multi-user.target.wants/gptoss@{INSTANCE}-r{k}.service").is_symlink()
    assert sorted(seen_gpus) == [str(k) for k in range(8)] and len(set(seen_ports + [8000])) == 9
    # The router: loopback on --port, every replica upstream, the key only as a 0600 credential.
    router = (tree / "opt/gptoss" / INSTANCE / "router.conf").read_text()
    assert router == (rel / "router.conf").read_text() and "listen 127.0.0.1:8000;" in router
    assert re.findall(r"server 127\.0\.0\.1:(\d+) max_fails", router) == [str(8001 + k) for k in range(8)]
    key = (tree / "etc/gptoss" / INSTANCE / "api-key").read_text().strip()
    assert key not in router and key not in (_units(tree) / f"gptoss-router@{INSTANCE}.service").read_text()
    cred = tree / "etc/gptoss" / INSTANCE / "router-key.map"
    assert cred.read_text() == f'"~^Bearer {key}$" 1;\n' and cred.stat().st_mode & 0o777 == 0o600
    unit = (_units(tree) / f"gptoss-router@{INSTANCE}.service").read_text()
    assert f"LoadCredential=api-key.map:/etc/gptoss/{INSTANCE}/router-key.map" in unit and "DynamicUser=yes" in unit
    assert (_units(tree) / f"multi-user.target.wants/gptoss-router@{INSTANCE}.service").is_symlink()
    code, doc = cli("status", "--root", str(tree))
    (row,) = doc["data"]["instances"]
    assert code == 0 and row["unit"] == f"gptoss-router@{INSTANCE}.service" and len(row["replicas"]) == 8
    assert {(x["state"], x["release"]) for x in row["replicas"]} == {("staged", 1)}


def test_every_unit_passes_systemd_analyze_and_the_router_config_nginx_t(tree: Path, tmp_path: Path) -> None:
    for k in range(8):
        _verify(tree, _units(tree) / f"gptoss@{INSTANCE}-r{k}.service", tmp_path)
        assert _graded(tree, f"gptoss@{INSTANCE}-r{k}.service") <= 2.0
    _verify(tree, _units(tree) / f"gptoss-router@{INSTANCE}.service", tmp_path)
    assert _graded(tree, f"gptoss-router@{INSTANCE}.service") <= 2.0
    res = _nginx_t(tree, tmp_path)
    assert res.returncode == 0, res.stderr
    # The grader grades: a router configuration nginx cannot load fails it (a directive misspelt).
    conf = tree / "opt/gptoss" / INSTANCE / "router.conf"
    conf.write_text(conf.read_text().replace("least_conn;", "least_connections;"))
    res = _nginx_t(tree, tmp_path)
    assert res.returncode != 0 and "least_connections" in res.stderr


def test_replicas_and_tensor_parallel_as_asked(cli, bundles: list[Path], keys, capture: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    code, doc = _install(cli, bundles[0], keys, root, capture, "--tp", "2", "--port", "9000")
    assert code == 0, doc
    assert [(r["port"], r["gpus"]) for r in doc["data"]["replicas"]] == [(9001, [0, 1]), (9002, [2, 3]),
                                                                          (9003, [4, 5]), (9004, [6, 7])]
    unit = (_units(root) / f"gptoss@{INSTANCE}-r1.service").read_text()
    assert re.findall(r"^DeviceAllow=/dev/nvidia(\d+) rw$", unit, re.M) == ["2", "3"] and "PrivateIPC" not in unit
    env = (root / "opt/gptoss" / INSTANCE / "releases/1/service-r1.env").read_text()
    assert "CUDA_VISIBLE_DEVICES=2,3\n" in env
    code, doc = _install(cli, bundles[0], keys, tmp_path / "r2", capture, "--replicas", "9")
    assert code == 1 and doc["error"]["code"] == "install.preflight_failed" and "--replicas 9" in doc["error"]["message"]
    code, doc = _install(cli, bundles[0], keys, tmp_path / "r3", capture, "--port", "65530")
    assert code == 2 and doc["error"]["code"] == "service.bad_port" and "65530-65538" in doc["error"]["message"]
    code, doc = _install(cli, bundles[0], keys, tmp_path / "r4", capture, "--replicas", "0")
    assert code == 2 and doc["error"]["code"] == "hw.bad_layout"
    assert not (tmp_path / "r2/opt/gptoss").exists() and not (tmp_path / "r3/etc/gptoss").exists()


def test_one_replica_is_a_set_of_one_behind_the_router_and_shapes_change_both_ways(cli, bundles: list[Path], keys,  # type: ignore[no-untyped-def]
                                                                                  capture: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    code, doc = _install(cli, bundles[0], keys, root, capture, "--replicas", "1")
    assert code == 0 and len(doc["data"]["replicas"]) == 1 and doc["data"]["unit"] == f"gptoss-router@{INSTANCE}.service"
    rel = root / "opt/gptoss" / INSTANCE / "releases/1"
    assert [(r["index"], r["port"]) for r in json.loads((rel / "release.json").read_text())["replicas"]] == [(0, 8001)]
    one = [f"gptoss-router@{INSTANCE}.service", f"gptoss@{INSTANCE}-r0.service",
           f"multi-user.target.wants/gptoss-router@{INSTANCE}.service",
           f"multi-user.target.wants/gptoss@{INSTANCE}-r0.service"]
    assert _serving(root) == one
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in (rel / "service-r0.env").read_text()  # pinned as every replica
    code, doc = _install(cli, bundles[1], keys, root, capture, "--allow-downgrade")  # an upgrade keeps the shape
    assert code == 0 and len(doc["data"]["replicas"]) == 1 and "--replicas 1 as release 1 runs" in json.dumps(doc)
    code, doc = _install(cli, bundles[1], keys, root, capture, "--replicas", "8")  # the one replica gives way to eight
    assert code == 0 and len(doc["data"]["replicas"]) == 8
    assert not (_units(root) / f"gptoss@{INSTANCE}.service").exists()
    code, doc = _install(cli, bundles[2], keys, root, capture, "--replicas", "1")  # and back
    assert code == 0
    assert _serving(root) == one
    assert (root / "opt/gptoss" / INSTANCE / "router.conf").is_file()
    code, doc = cli("rollback", "--root", str(root), "--to", "2")  # a rollback restores the eight and the router
    assert code == 0 and len(list(_units(root).glob(f"gptoss@{INSTANCE}-r*.service"))) == 8
    assert (root / "opt/gptoss" / INSTANCE / "router.conf").is_file()
    code, doc = cli("uninstall", "--root", str(root), "--purge")
    assert code == 0 and _serving(root) == []
    assert not (root / "etc/gptoss").exists()


def test_an_instance_name_that_takes_a_replicas_units_is_refused(cli, tree: Path, bundles: list[Path], keys,  # type: ignore[no-untyped-def]
                                                                capture: Path) -> None:
    code, doc = _install(cli, bundles[0], keys, tree, capture, "--instance", f"{INSTANCE}-r3", "--replicas", "1")
    assert code == 2 and doc["error"]["code"] == "install.instance_collision"
    assert not (tree / "opt/gptoss" / f"{INSTANCE}-r3").exists()


def test_without_nginx_the_preflight_says_what_to_install(bundles: list[Path], keys, capture: Path,  # type: ignore[no-untyped-def]
                                                           tmp_path: Path) -> None:
    """A host without nginx (its sbin hidden in a private mount namespace): refused before anything is written,
    one replica too (the router is in front of every instance); exit 3, naming the distribution's package."""
    cli = Path(sys.executable).with_name("gptossctl")
    cmd = (f"mount -t tmpfs tmpfs /usr/sbin && {cli} install {bundles[0]} --trust {keys['alice'].public} "
           f"--root {tmp_path / 'root'} --vllm-python {sys.executable} --nvidia-smi-xml {capture} --replicas 1 --json")
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", cmd],
                         capture_output=True, text=True, timeout=300)
    doc = json.loads(res.stdout)
    assert res.returncode == 3 and doc["error"]["code"] == "install.no_router", doc
    assert "nginx-light (Debian, Ubuntu) or nginx (RHEL, Fedora)" in doc["error"]["hint"]
    assert not (tmp_path / "root/opt/gptoss").exists()


# ---------------------------------------------------------------- compliance over every unit and the router


def _report(cli, root: Path) -> dict[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    code, doc = cli("compliance", "check", "--root", str(root), "--instance", INSTANCE)
    return {c["id"]: c for c in doc["data"]["checks"]}


def _failed(checks: dict[str, dict]) -> set[str]:  # type: ignore[type-arg]
    return {i for i, c in checks.items() if c["status"] == "fail"}


def test_compliance_covers_the_replicas_and_catches_a_tampered_router(cli, tree: Path) -> None:  # type: ignore[no-untyped-def]
    checks = _report(cli, tree)
    assert _failed(checks) == set(), {i: c["evidence"] for i, c in checks.items() if c["status"] == "fail"}
    assert "8 replica units and the router unit are exactly" in checks["config.unit"]["evidence"][0]
    assert len(checks["config.exposure"]["evidence"]) == 9
    assert f"/etc/systemd/system/gptoss-router@{INSTANCE}.service" in checks["config.unit"]["locations"]
    conf = tree / "opt/gptoss" / INSTANCE / "router.conf"
    original = conf.read_text()

    # 1. The router's running configuration opened to every address: caught as drift and as a wide bind.
    conf.write_text(original.replace("listen 127.0.0.1:8000;", "listen 0.0.0.0:8000;"))
    checks = _report(cli, tree)
    assert _failed(checks) == {"config.release_files", "config.bind"}
    assert "+        listen 0.0.0.0:8000;" in checks["config.release_files"]["evidence"]
    # 2. /metrics let through: caught as drift.
    conf.write_text(original.replace("location = /health {", "location ~ ^/(health|metrics) {"))
    assert _failed(_report(cli, tree)) == {"config.release_files"}
    # 3. A replica left out of rotation (an interrupted rolling upgrade) is named as such.
    conf.write_text(original.replace("8004 max_fails=1 fail_timeout=10s;", "8004 max_fails=1 fail_timeout=10s down;"))
    checks = _report(cli, tree)
    assert _failed(checks) == {"config.release_files"}
    assert "replica 3 is out of rotation at the router" in " ".join(checks["config.release_files"]["evidence"])
    conf.write_text(original)

    # 4. The router's credential readable by others, then holding another key.
    cred = tree / "etc/gptoss" / INSTANCE / "router-key.map"
    cred.chmod(0o644)
    assert _failed(_report(cli, tree)) == {"access.secrets"}
    cred.chmod(0o600)
    cred.write_text('"~^Bearer ' + "x" * 43 + '$" 1;\n')
    assert _failed(_report(cli, tree)) == {"access.api_key"}
    cred.write_text(f'"~^Bearer {(tree / "etc/gptoss" / INSTANCE / "api-key").read_text().strip()}$" 1;\n')

    # 5. A drop-in loosening the router, and a replica pinned to another GPU.
    dropin = _units(tree) / f"gptoss-router@{INSTANCE}.service.d" / "loose.conf"
    dropin.parent.mkdir()
    dropin.write_text("[Service]\nDynamicUser=no\nPrivateDevices=no\nIPAddressAllow=any\n")
    checks = _report(cli, tree)
    assert _failed(checks) == {"config.unit"}
    assert any("loose.conf changes gptoss-router" in e for e in checks["config.unit"]["evidence"])
    shutil.rmtree(dropin.parent)
    env = tree / "opt/gptoss" / INSTANCE / "releases/1/service-r5.env"
    env.write_text(env.read_text().replace("CUDA_VISIBLE_DEVICES=5", "CUDA_VISIBLE_DEVICES=0"))
    checks = _report(cli, tree)
    # The release's copy is sealed in the audit chain at install too (one check over every unit's files).
    assert _failed(checks) == {"config.release_files", "record.sealed"}
    assert "service-r5.env: CUDA_VISIBLE_DEVICES: approved 5, found 0" in checks["config.release_files"]["evidence"]
    assert any("releases/1/service-r5.env: rendered file" in e for e in checks["record.sealed"]["evidence"])


def test_the_support_bundle_holds_every_replica_and_the_router_and_no_key(cli, tree: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key = (tree / "etc/gptoss" / INSTANCE / "api-key").read_text().strip()
    out = tmp_path / "support.tar.gz"
    code, doc = cli("support-bundle", "--root", str(tree), "--instance", INSTANCE, "--output", str(out))
    assert code == 0, doc
    with tarfile.open(out) as tar:
        members = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    for want in (f"units/gptoss-router@{INSTANCE}.service", f"units/gptoss@{INSTANCE}-r7.service",
                 "release/router.conf", "release/vllm-r0.yaml", "release/service-r7.env"):
        assert want in members, sorted(members)
    assert all(key.encode() not in data for data in members.values())
    assert b"VLLM_API_KEY=[REDACTED]" in members["release/service-r7.env"]
    assert b"CUDA_VISIBLE_DEVICES=7" in members["release/service-r7.env"]


# ---------------------------------------------------------------- what systemd applies to every unit, and permissions


def test_compliance_sees_every_dropin_systemd_applies_to_a_replica_the_router_or_a_canary(cli, tree: Path,  # type: ignore[no-untyped-def]
                                                                                           tmp_path: Path) -> None:
    cases = {  # a drop-in, and the unit it reaches
        "etc/systemd/system/gptoss-.service.d/50-site.conf": f"gptoss-router@{INSTANCE}.service",  # dash prefix
        f"etc/systemd/system.control/gptoss@{INSTANCE}-r3.service.d/50-site.conf": f"gptoss@{INSTANCE}-r3.service",
        "usr/local/lib/systemd/system/gptoss@.service.d/50-site.conf": f"gptoss@{INSTANCE}-r0.service",
        f"run/systemd/transient/gptoss-compliance@{INSTANCE}.timer.d/50-site.conf": f"gptoss-compliance@{INSTANCE}.timer",
    }
    for rel, unit in cases.items():
        dropin = tree / rel
        dropin.parent.mkdir(parents=True)
        dropin.write_text("[Unit]\nDescription=site override\n")
        checks = _report(cli, tree)
        assert _failed(checks) == {"config.unit"}, (rel, {i: c["evidence"] for i, c in checks.items()
                                                          if c["status"] == "fail"})
        assert f"drop-in /{rel} changes {unit}" in checks["config.unit"]["evidence"], checks["config.unit"]["evidence"]
        shutil.rmtree(dropin.parent)
    # A canary schedule laid in the same tree: its units and its own two drop-ins, as rendered, pass ...
    key = tmp_path / "canary-key"
    key.write_text("k" * 43 + "\n")
    code, doc = cli("canary", "schedule", "--name", "week", "--every", "1h", "--for", "1d", "--start",
                    "2030-01-06T00:00:00+00:00", "--url", "http://127.0.0.1:8000", "--api-key-file", str(key),
                    "--root", str(tree))
    assert code == 0, doc
    checks = _report(cli, tree)
    assert _failed(checks) == set(), {i: c["evidence"] for i, c in checks.items() if c["status"] == "fail"}
    assert "gptoss-canary@week.timer" in checks["config.unit"]["evidence"][1]
    # ... a third drop-in, or one of its own edited, does not.
    schedule = _units(tree) / "gptoss-canary@week.timer.d/schedule.conf"
    schedule.write_text(schedule.read_text() + "OnCalendar=2031-01-01 00:00:00 UTC\n")
    extra = _units(tree) / "gptoss-canary@week.service.d/90-wider.conf"
    extra.write_text("[Service]\nIPAddressAllow=any\n")
    evidence = _report(cli, tree)["config.unit"]["evidence"]
    assert "drop-in /etc/systemd/system/gptoss-canary@week.timer.d/schedule.conf of gptoss-canary@week.timer " \
           "differs from what its schedule renders" in evidence, evidence
    assert "drop-in /etc/systemd/system/gptoss-canary@week.service.d/90-wider.conf changes gptoss-canary@week.service" \
        in evidence, evidence


def test_permissions_hold_for_every_replica_and_the_router(cli, tree: Path) -> None:  # type: ignore[no-untyped-def]
    uid = next(int(ln.split(":")[2]) for ln in (tree / "etc/passwd").read_text().splitlines() if ln.startswith("gptoss:"))
    state = tree / "var/lib/gptoss" / f"{INSTANCE}-r5"  # replica 5's StateDirectory, as systemd makes it
    state.mkdir(parents=True, mode=0o700)
    os.chown(state, uid, uid)
    checks = _report(cli, tree)
    assert _failed(checks) == set(), {i: c["evidence"] for i, c in checks.items() if c["status"] == "fail"}
    assert f"/var/lib/gptoss/{INSTANCE}-r5" in checks["access.permissions"]["evidence"][1]
    (state / "sitecustomize.py").write_text("import os\n")
    os.chown(state / "sitecustomize.py", uid, uid)
    cred = tree / "etc/gptoss" / INSTANCE / "router-key.map"
    os.chown(cred, 1000, 0)
    os.chmod(tree / "etc/systemd/system", 0o775)
    checks = _report(cli, tree)
    assert _failed(checks) == {"access.permissions", "access.secrets"}
    evidence = checks["access.permissions"]["evidence"]
    assert f"/var/lib/gptoss/{INSTANCE}-r5/sitecustomize.py is 0644 owned by uid {uid}: code the service could run" \
        in evidence, evidence
    owner = tree.stat().st_uid  # root; staged, whoever owns the staging tree
    assert f"/etc/gptoss/{INSTANCE}/router-key.map is 0600 owned by uid 1000: not owned by uid {owner}" in evidence
    assert f"/etc/systemd/system is 0775 owned by uid {owner}: group-writable" in evidence


def test_compliance_reports_of_replicas_carry_no_secret_from_a_tampered_replica_or_router(  # type: ignore[no-untyped-def]
        cli, tree: Path, tmp_path: Path) -> None:
    """The replicas' unit diffs (compliance.replicas) go through the same redactor: a replica unit carrying the
    real key and a proxy password, and the router unit an Authorization header, leak into no report; 0600."""
    key = (tree / "etc/gptoss" / INSTANCE / "api-key").read_text().strip()
    r3 = _units(tree) / f"gptoss@{INSTANCE}-r3.service"
    r3.write_text(r3.read_text().replace("[Service]\n", f"[Service]\nEnvironment=VLLM_API_KEY={key}\n"
                                         "Environment=HTTP_PROXY=http://u:p@h:1\n", 1))
    router = _units(tree) / f"gptoss-router@{INSTANCE}.service"
    router.write_text(router.read_text().replace("[Service]\n", "[Service]\n# Authorization: Bearer "
                                                 "Zq8wYt3vXk2Lm9Np4Rs7Uv0Wx\n", 1))
    outs = {"--report": tmp_path / "r.json", "--sarif": tmp_path / "r.sarif", "--junit": tmp_path / "r.xml"}
    code, doc = cli("compliance", "check", "--root", str(tree), "--instance", INSTANCE,
                    *[a for k, p in outs.items() for a in (k, str(p))])
    assert code == 1 and "VLLM_API_KEY" in json.dumps(doc), doc
    texts = {"stdout": json.dumps(doc), **{k: p.read_text() for k, p in outs.items()}}
    leaked = sorted(n for n, t in texts.items() if key in t or "u:p@h" in t or "Zq8wYt3vXk2Lm9Np4Rs7Uv0Wx" in t)
    assert not leaked, leaked
    assert {oct(p.stat().st_mode & 0o777) for p in outs.values()} == {"0o600"}


def test_compliance_holds_every_replica_to_the_own_template_and_the_env_allowlist(cli, tree: Path) -> None:  # type: ignore[no-untyped-def]
    """The release's copies changed along with the installed files (so a re-rendering from them would agree):
    the invariants still catch a privileged Exec line in every replica's unit and a variable outside the
    profile environment allowlist in one replica's environment file."""
    rel = tree / "opt/gptoss" / INSTANCE / "releases/1"
    rec = json.loads((rel / "release.json").read_text())
    evil = "[Service]\nExecStartPre=+/bin/true\n"
    targets = [rel / "payload/systemd/gptoss@.service"]
    targets += [rel / f"unit-r{k}.service" for k in range(8)] + [_units(tree) / f"gptoss@{INSTANCE}-r{k}.service"
                                                                  for k in range(8)]
    for p in targets:
        p.write_text(p.read_text().replace("[Service]\n", evil, 1))
    env = rel / "service-r3.env"
    env.write_text(env.read_text() + "NCCL_NET_PLUGIN=/tmp/x.so\n")
    prof = rel / "payload/profiles" / f"{rec['profile']}.yaml"
    prof.write_text(re.sub(r"env: \{\}|env:\n", "env:\n    NCCL_NET_PLUGIN: /tmp/x.so\n", prof.read_text(), count=1))
    checks = _report(cli, tree)
    assert {"config.unit", "config.release_files"} <= _failed(checks)
    assert any("ExecStartPre=+/bin/true" in e for e in checks["config.unit"]["evidence"])
    assert any("service-r3.env" in e and "NCCL_NET_PLUGIN" in e and "PROFILE_ENV" in e
               for e in checks["config.release_files"]["evidence"]), checks
