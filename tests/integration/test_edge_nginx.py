"""The network edge on real parts: the distribution's nginx (master as root, workers as nobody) rendered by
gptossctl with TLS and mutual TLS from a CA made here with openssl, a real vLLM on CPU behind it, the
official `openai` client, and the `gptossctl consumers/tls/usage` commands in a subprocess.

The commands run against a staged --root, so they write the router's files and do not reload it; the test
then does what `systemctl reload gptoss-router@I` does (the unit's ExecReload: SIGHUP to the master)."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gptossctl.adapters.systemd import Systemd
from gptossctl.compliance.edge import check_tls
from gptossctl.compliance.evidence import ComplianceOptions, Evidence
from gptossctl.install.consumers import access_log, edge_dir
from gptossctl.install.edge import EdgeSettings, render_edge
from gptossctl.install.layout import Layout
from gptossctl.install.release import EdgeRecord, ReleaseRecord, ReplicaRecord
from gptossctl.install.router import UPSTREAM, render_router_config
from gptossctl.install.serving import serving_set
from gptossctl.install.tls import edge_digests
from tests.integration.vllm_server import free_port, make_trained_llama, vllm_python, vllm_server
from tests.sitepki import make_ca, make_cert

pytestmark = [pytest.mark.integration, pytest.mark.heavy]
NGINX = Path("/usr/sbin/nginx")
INSTANCE = "edge"
INSTANCE_KEY = "instance-key-0123456789abcdefghijklmnop"
MODEL = "tiny-llama"


@dataclass
class Site:
    root: Path
    pki: Path
    port: int
    nginx: subprocess.Popen[bytes]

    @property
    def layout(self) -> Layout:
        return Layout(self.root, INSTANCE)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def ssl_context(self, *, client: str | None = "client") -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "site-ca.pem"))
        if client:
            ctx.load_cert_chain(str(self.pki / f"{client}.pem"), str(self.pki / f"{client}.key"))
        return ctx

    def openai(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120,
                             http_client=httpx.Client(verify=self.ssl_context()))

    def workers(self) -> dict[int, str]:
        """The master's children and their process titles ("nginx: worker process [is shutting down]")."""
        out = {}
        for task in Path(f"/proc/{self.nginx.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                try:
                    out[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    pass
        return out

    def reload(self) -> None:
        """What the unit's ExecReload does: SIGHUP to the master (nginx's graceful reload). Returns once every
        worker of the old configuration has stopped taking connections ("is shutting down": it keeps only
        what it has in flight) or left, and new workers run: a single answer from a new worker proves
        nothing while an old one may still accept the next connection (seen under load: a 200, then a 401)."""
        old = set(self.workers())
        os.kill(self.nginx.pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = self.workers()
            fresh = [p for p in now if p not in old and "cache" not in now[p]]
            if fresh and all("shutting down" in now[p] for p in old if p in now):
                time.sleep(0.05)  # the title changes just before the listening sockets close
                return
            time.sleep(0.05)
        raise AssertionError(f"nginx did not finish its reload in 60 s: {self.workers()}")

    def status(self, key: str, path: str = "/v1/models") -> int:
        with httpx.Client(verify=self.ssl_context()) as c:
            return c.get(self.url + path, headers={"Authorization": f"Bearer {key}"}).status_code

    def peer_cert(self) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port)) as raw, \
                self.ssl_context().wrap_socket(raw, server_hostname="localhost") as s:
            der = s.getpeercert(binary_form=True)
        assert der is not None
        return der


def gptossctl(*args: str) -> tuple[int, dict[str, Any]]:
    """The installed console script in a subprocess, with --json."""
    res = subprocess.run([sys.executable, "-m", "gptossctl", *args, "--json"], capture_output=True, text=True,
                         timeout=120)
    return res.returncode, json.loads(res.stdout)


def staged(root: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """A command on the instance of the staged tree the router reads."""
    return gptossctl(*args, "--instance", INSTANCE, "--root", str(root))


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("served")
    model = make_trained_llama(d / "model")
    with vllm_server(vllm_python(), model, name=MODEL, api_key=INSTANCE_KEY, log=d / "vllm.log") as url:
        yield url


@pytest.fixture(scope="module")
def site(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root, pki = tmp_path_factory.mktemp("root"), tmp_path_factory.mktemp("pki")
    make_ca(pki, "site-ca")
    make_ca(pki, "other-ca")
    make_cert(pki, "site-ca", "server", server=True)
    make_cert(pki, "site-ca", "server2", server=True)
    make_cert(pki, "site-ca", "client", server=False)
    make_cert(pki, "other-ca", "stranger", server=False)
    layout = Layout(root, INSTANCE)
    layout.etc.mkdir(parents=True)
    layout.etc.chmod(0o700)
    layout.api_key.write_text(f"VLLM_API_KEY={INSTANCE_KEY}\n")
    layout.api_key.chmod(0o600)
    code, doc = staged(root, "tls", "rotate", "--cert", str(pki / "server.pem"), "--key", str(pki / "server.key"),
                       "--ca", str(pki / "site-ca.pem"))
    assert code == 0, doc
    code, doc = staged(root, "consumers", "add", "warmup", "--out", str(pki / "warmup.key"))  # the include files exist
    assert code == 0, doc
    (edge_dir(layout) / "client-ca.pem").write_bytes((pki / "site-ca.pem").read_bytes())
    runtime = Path(tempfile.mkdtemp(prefix="gptoss-edge-run-"))
    runtime.chmod(0o711)  # the workers (nobody) reach their temporary directories, which nginx makes for them
    key_map = root / "router-key.map"
    key_map.write_text(f'"~^Bearer {INSTANCE_KEY}$" 1;\n')
    key_map.chmod(0o600)
    port = free_port()
    edge = EdgeSettings(host="127.0.0.1", port=port, edge_dir=edge_dir(layout), access_log=access_log(layout),
                        worker_user="nobody", worker_group="nogroup", mutual_tls=True)
    access_log(layout).parent.mkdir(parents=True, exist_ok=True)
    up = ReplicaRecord(0, int(upstream.rsplit(":", 1)[1]))
    conf = render_router_config(instance=INSTANCE, host="127.0.0.1", port=free_port(), replicas=[up],
                                key_map=key_map, runtime=runtime, edge=render_edge(edge, upstream=UPSTREAM))
    (root / "router.conf").write_text(conf)
    proc = subprocess.Popen([str(NGINX), "-e", "stderr", "-c", str(root / "router.conf"), "-g", "daemon off;"],
                            stderr=open(root / "nginx.err", "wb"))
    s = Site(root, pki, port, proc)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if s.status("nope-" * 8) == 401:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        raise AssertionError((root / "nginx.err").read_text())
    yield s
    proc.send_signal(signal.SIGQUIT)
    proc.wait(30)


def add(name: str, site: Site, *extra: str) -> str:
    out = site.pki / f"{name}.apikey"
    code, doc = staged(site.root, "consumers", "add", name, "--out", str(out), *extra)
    assert code == 0, doc
    assert "key" not in doc["data"]  # written to --out: never shown
    assert out.stat().st_mode & 0o777 == 0o600
    site.reload()
    return out.read_text().strip()


def wait_status(site: Site, key: str, want: int, within: float = 5.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if site.status(key) == want:
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"status {want} not seen within {within}s (last {site.status(key)})")


def long_stream(client: openai.OpenAI, tokens: int = 300) -> Any:
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count."}],
                                          max_tokens=tokens, temperature=0, stream=True,
                                          extra_body={"ignore_eos": True, "min_tokens": tokens})


def drain(stream: Any) -> tuple[int, str | None]:
    chunks, finish = 0, None
    for ev in stream:
        if ev.choices:
            chunks += 1 if ev.choices[0].delta.content else 0
            finish = ev.choices[0].finish_reason or finish
    return chunks, finish


def test_two_consumers_get_completions_and_streams_over_tls(site: Site) -> None:
    for name in ("alice", "bob"):
        client = site.openai(add(name, site))
        wait_status(site, client.api_key, 200)
        chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content":
                                              "What is the capital of France?"}], max_tokens=8, temperature=0)
        assert "Paris" in (chat.choices[0].message.content or "")
        chunks, finish = drain(long_stream(client, 20))
        assert chunks >= 10 and finish == "length"
    assert site.status("sk-gptoss-" + "x" * 43) == 401
    assert site.status(INSTANCE_KEY) == 200  # the instance's own key stays valid at the edge (operators)


def test_revoked_key_gets_401_within_5s_while_the_other_consumers_stream_finishes(site: Site) -> None:
    victim, other = add("victim", site), site.openai(add("steady", site))
    wait_status(site, victim, 200)
    wait_status(site, other.api_key, 200)
    stream = long_stream(other)
    first = next(iter(stream))  # the stream is open on the current workers
    t0 = time.monotonic()
    code, doc = staged(site.root, "consumers", "revoke", "victim")
    assert code == 0 and doc["data"]["consumer"]["revoked"], doc
    site.reload()
    wait_status(site, victim, 401, within=5.0 - (time.monotonic() - t0))
    chunks, finish = drain(stream)
    assert first is not None and finish == "length" and chunks >= 250, (chunks, finish)
    assert site.status(other.api_key) == 200


def test_certificate_rotated_during_a_stream_leaves_it_whole(site: Site) -> None:
    client = site.openai(add("rotcert", site))
    wait_status(site, client.api_key, 200)
    before = site.peer_cert()
    stream = long_stream(client)
    next(iter(stream))
    code, doc = staged(site.root, "tls", "rotate", "--cert", str(site.pki / "server2.pem"), "--key",
                       str(site.pki / "server2.key"), "--ca", str(site.pki / "site-ca.pem"))
    assert code == 0, doc
    site.reload()
    new = subprocess.run(["openssl", "x509", "-in", str(site.pki / "server2.pem"), "-outform", "DER"],
                         capture_output=True, check=True).stdout
    deadline = time.monotonic() + 5
    while site.peer_cert() != new and time.monotonic() < deadline:
        time.sleep(0.1)
    assert site.peer_cert() == new != before
    chunks, finish = drain(stream)
    assert finish == "length" and chunks >= 250, (chunks, finish)


def test_a_consumer_over_its_limit_gets_429_with_retry_after(site: Site) -> None:
    client = site.openai(add("greedy", site, "--rps", "1", "--burst", "0", "--concurrency", "4"))
    wait_status(site, client.api_key, 200)
    time.sleep(1.1)
    client.models.list()
    with pytest.raises(openai.RateLimitError) as err:
        client.models.list()
    assert err.value.response.status_code == 429
    assert int(err.value.response.headers["retry-after"]) >= 1
    body = err.value.response.json()
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "rate_limit_exceeded"
    time.sleep(1.1)
    assert site.status(client.api_key) == 200


def test_mutual_tls_refuses_a_client_without_a_site_certificate(site: Site) -> None:
    key = add("mtls", site)
    wait_status(site, key, 200)
    for ctx in (site.ssl_context(client=None), site.ssl_context(client="stranger")):
        try:
            with httpx.Client(verify=ctx) as c:
                status = c.get(site.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code
        except httpx.TransportError:
            status = 0  # refused in the handshake
        assert status in (0, 400)


def test_consumers_rotate_keeps_the_old_key_until_the_grace_ends(site: Site) -> None:
    old = add("erin", site)
    wait_status(site, old, 200)
    out = site.pki / "erin.new"
    code, doc = staged(site.root, "consumers", "rotate", "erin", "--grace", "4s", "--out", str(out))
    assert code == 0, doc
    site.reload()
    new = out.read_text().strip()
    wait_status(site, new, 200)
    assert site.status(old) == 200
    time.sleep(4.5)
    code, doc = staged(site.root, "consumers", "sync")
    assert code == 0, doc
    site.reload()
    wait_status(site, old, 401)
    assert site.status(new) == 200


def test_usage_counts_exactly_the_requests_made_per_consumer(site: Site) -> None:
    key = add("counted", site)
    wait_status(site, key, 200)  # 401s (no consumer yet: logged as "") until the reload, then exactly one 200
    log = access_log(site.layout)
    client = site.openai(key)
    for _ in range(3):
        client.models.list()
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    time.sleep(0.5)  # nginx logs a request after its reply has gone out
    code, doc = staged(site.root, "usage", "--by", "consumer")
    assert code == 0, doc
    rows = {r["key"]: r for r in doc["data"]["rows"]}
    assert rows["counted"]["requests"] == 1 + 4 and rows["counted"]["errors"] == 0
    assert rows["greedy"]["rate_limited"] >= 1
    text = log.read_text()
    keys = json.loads((edge_dir(site.layout) / "keys.json").read_text())["keys"]
    assert keys and not any(k["key"] in text for k in keys) and INSTANCE_KEY not in text
    assert all(json.loads(ln)["request_id"] for ln in text.splitlines())


def test_an_expired_certificate_fails_the_check_and_is_not_installed(site: Site) -> None:
    make_cert(site.pki, "site-ca", "expired", server=True, dates=("20200101000000Z", "20200201000000Z"))
    installed = (edge_dir(site.layout) / "tls-cert.pem").read_bytes()
    code, doc = gptossctl("tls", "check", "--cert", str(site.pki / "expired.pem"), "--key",
                          str(site.pki / "expired.key"), "--ca", str(site.pki / "site-ca.pem"))
    assert code == 1 and "tls.expired" in [f["code"] for f in doc["findings"]], doc
    code, doc = staged(site.root, "tls", "rotate", "--cert", str(site.pki / "expired.pem"), "--key",
                       str(site.pki / "expired.key"), "--ca", str(site.pki / "site-ca.pem"))
    assert code == 1 and (edge_dir(site.layout) / "tls-cert.pem").read_bytes() == installed
    # The day the served certificate runs out, compliance fails it (the files as if that day had come).
    key = (edge_dir(site.layout) / "tls-key.pem").read_bytes()
    for name, src in (("tls-cert.pem", "expired.pem"), ("tls-key.pem", "expired.key")):
        (edge_dir(site.layout) / name).write_bytes((site.pki / src).read_bytes())
    try:
        # The record seals these very files (the certificate ran out in service, nobody swapped it): what fails
        # is the date, not a difference from the seal.
        now = edge_digests(site.layout)
        edge = EdgeRecord("127.0.0.1", 443, str(now["cert_sha256"]), str(now["key_sha256"]),
                          now["client_ca_sha256"] or "")
        rec = ReleaseRecord(1, "b", INSTANCE, "p", MODEL, "0" * 64, "py", edge=edge)
        result = check_tls(Evidence(site.layout, Systemd(site.root), ComplianceOptions(), datetime.now(UTC),
                                    site.layout.release(1), rec, serving_set(site.layout, rec)))
    finally:
        (edge_dir(site.layout) / "tls-cert.pem").write_bytes(installed)
        (edge_dir(site.layout) / "tls-key.pem").write_bytes(key)
    assert result.status == "fail" and any("expired" in e for e in result.evidence), result
