"""The router's behaviour with the real nginx, in seconds: the configuration gptossctl renders, run by nginx on
loopback in front of two small HTTP servers that answer like vLLM replicas (/health, /v1, /metrics with
vllm:num_requests_running). What is proven here with vLLM itself, under systemd: tests/integration/test_scaleout.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from gptossctl.errors import CheckFailed, UsageError
from gptossctl.hardware import layout as hw_layout
from gptossctl.install.layout import Layout
from gptossctl.install.release import ReleaseRecord, ReplicaRecord
from gptossctl.install.replicas import plan_replicas
from gptossctl.install.router import (
    check_router_config,
    credential_path,
    in_flight,
    prove_router,
    render_router_config,
    router_key_map,
    runtime_dir,
    wait_drained,
    write_router_key,
)

KEY = "k" * 43
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """A stand-in vLLM replica on loopback: counts what it serves and what it has in flight."""

    def __init__(self, index: int, delay: float = 0.0) -> None:
        self.index, self.port, self.delay = index, _free_port(), delay
        self.served = 0
        self.running = 0
        replica = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, f'vllm:num_requests_running{{model_name="m"}} {replica.running}\n', "text/plain")
                else:
                    self._send(200, json.dumps({"data": [{"id": "m"}]}) if self.path == "/v1/models" else "{}")

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                replica.running += 1
                time.sleep(replica.delay)
                replica.running -= 1
                replica.served += 1
                self._send(200, json.dumps({"choices": [{"message": {"content": f"replica {replica.index}"}}]}))

            def _send(self, code: int, body: str, kind: str = "application/json") -> None:
                data = body.encode()
                try:
                    self.send_response(code)
                    self.send_header("content-type", kind)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (the test stopped the router under a request)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Replica:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def record(self) -> ReplicaRecord:
        return ReplicaRecord(self.index, self.port)


class Router:
    """nginx running the rendered configuration (paths of the credential and runtime moved into tmp)."""

    def __init__(self, tmp: Path, replicas: list[Replica]) -> None:
        assert shutil.which("nginx"), "nginx is required (Debian package nginx-light; scripts/test.sh installs it)"
        self.tmp, self.replicas, self.port = tmp, replicas, _free_port()
        (tmp / "run").mkdir()
        (tmp / "api-key.map").write_text(router_key_map(KEY))
        self.conf = tmp / "nginx.conf"
        self.render()
        self.proc = subprocess.Popen(["nginx", "-e", "stderr", "-c", str(self.conf), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=(tmp / "nginx.log").open("wb"))
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/nothing", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError((tmp / "nginx.log").read_text())

    def render(self, down: set[int] = set()) -> None:  # noqa: B006 - never mutated
        self.conf.write_text(render_router_config(instance="t", host="127.0.0.1", port=self.port,
                                                  replicas=[r.record for r in self.replicas],
                                                  key_map=self.tmp / "api-key.map", runtime=self.tmp / "run",
                                                  down=down))

    def reload(self, down: set[int]) -> None:
        """What `systemctl reload gptoss-router@` does: nginx -t, then SIGHUP to the master."""
        self.render(down)
        subprocess.run(["nginx", "-t", "-q", "-e", "stderr", "-c", str(self.conf)], check=True)
        os.kill(self.proc.pid, signal.SIGHUP)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture()
def pair(tmp_path: Path) -> Iterator[tuple[Router, list[Replica]]]:
    replicas = [Replica(0, delay=0.05).start(), Replica(1, delay=0.05).start()]
    router = Router(tmp_path, replicas)
    yield router, replicas
    router.stop()
    for r in replicas:
        r.stop()


def _chat(url: str, headers: dict[str, str] = AUTH) -> int:
    return httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers, timeout=30).status_code


def _chat_until_stopped(url: str) -> None:
    """A request the test abandons: the router is stopped under it."""
    try:
        _chat(url)
    except httpx.HTTPError:
        pass


def test_the_key_is_enforced_and_only_v1_and_health_pass(pair: tuple[Router, list[Replica]]) -> None:
    router, replicas = pair
    assert _chat(router.url) == 200
    assert _chat(router.url, {}) == 401 and _chat(router.url, {"Authorization": "Bearer " + "x" * 43}) == 401
    # Exactly what vLLM itself accepts: not another case of the scheme or of the key, nothing around it.
    for other in (f"bearer {KEY}", f"Bearer {KEY.upper()}", f"Bearer {KEY}x", f"xBearer {KEY}", f"Bearer  {KEY}"):
        assert _chat(router.url, {"Authorization": other}) == 401, other
    assert httpx.get(f"{router.url}/health").status_code == 200
    for method, path in (("GET", "/metrics"), ("POST", "/invocations"), ("GET", "/version"), ("POST", "/tokenize"),
                         ("GET", "/ping")):
        assert httpx.request(method, f"{router.url}{path}", headers=AUTH).status_code == 404, path
    assert sum(r.served for r in replicas) == 1  # the refused requests never reached a replica
    res = prove_router(router.url, KEY, "m")
    assert res["ok"] and {c["id"] for c in res["checks"]} >= {"api_key_enforced", "not_exposed:/metrics"}


def test_prove_router_fails_a_router_that_lets_metrics_through(pair: tuple[Router, list[Replica]]) -> None:
    router, _replicas = pair
    router.conf.write_text(router.conf.read_text().replace("location = /health {", "location ~ ^/(health|metrics) {"))
    os.kill(router.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while httpx.get(f"{router.url}/metrics").status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(CheckFailed) as exc:
        prove_router(router.url, KEY, "m")
    assert exc.value.code == "install.router_failed" and "GET /metrics with the key -> 200" in exc.value.message


def test_a_dead_replica_is_taken_out_and_its_requests_retried(pair: tuple[Router, list[Replica]]) -> None:
    router, replicas = pair
    replicas[1].stop()  # connection refused from now on
    assert [_chat(router.url) for _ in range(10)] == [200] * 10
    assert replicas[0].served == 10


def test_a_drained_replica_finishes_its_request_then_gets_none(tmp_path: Path) -> None:
    replicas = [Replica(0, delay=0.05).start(), Replica(1, delay=3.0).start()]
    router = Router(tmp_path, replicas)
    try:
        # A slow request in flight on replica 1 (replica 0 is kept busy-free: it answers at once).
        router.reload({0})
        time.sleep(1)
        results: list[int] = []
        slow = threading.Thread(target=lambda: results.append(_chat(router.url)))
        slow.start()
        while replicas[1].running == 0:
            time.sleep(0.05)
        assert in_flight(replicas[1].record)[0] >= 1
        router.reload({1})  # drained: out of rotation, its request still in flight
        said = wait_drained(replicas[1].record, timeout=60, poll=0.5)
        finished_first = bool(results)  # the request ended before the replica was declared idle
        slow.join()
        assert finished_first and results == [200] and "idle after" in said, said
        served = replicas[1].served
        assert [_chat(router.url) for _ in range(6)] == [200] * 6
        assert replicas[1].served == served and replicas[0].served == 6
        assert in_flight(replicas[1].record)[0] == 0
        # Past its timeout a busy replica is restarted anyway, and the words say so.
        replicas[0].delay = 5.0
        router.reload({1})
        threading.Thread(target=_chat_until_stopped, args=(router.url,), daemon=True).start()
        while replicas[0].running == 0:
            time.sleep(0.05)
        assert "still busy after 1s" in wait_drained(replicas[0].record, timeout=1, poll=0.2)
    finally:
        router.stop()
        for r in replicas:
            r.stop()


def test_records_with_replicas_round_trip_and_old_records_read_as_one_replica() -> None:
    rec = ReleaseRecord(version=3, bundle="b", instance="i", profile="p", served_name="s", manifest_sha256="0" * 64,
                        python="/p", port=8000, replicas=(ReplicaRecord(0, 8001, (0,), ("GPU-a",)),
                                                          ReplicaRecord(1, 8002, (1,), ("GPU-b",))), router="/usr/sbin/nginx")
    assert ReleaseRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    one = ReleaseRecord(version=3, bundle="b", instance="i", profile="p", served_name="s", manifest_sha256="0" * 64,
                        python="/p")
    assert "replicas" not in one.to_dict() and ReleaseRecord.from_dict(one.to_dict()) == one
    bad = rec.to_dict()
    bad["replicas"][0]["port"] = "8001"
    assert ReleaseRecord.from_dict(bad) is None
    bad["replicas"] = [{"index": 0, "port": 8001, "gpus": [], "extra": 1}]
    assert ReleaseRecord.from_dict(bad) is None


def test_a_configuration_nginx_refuses_never_reaches_the_router(tmp_path: Path) -> None:
    """install and every drain run `nginx -t` as root on the configuration first (reading the key where it is
    kept); a configuration nginx refuses stops there, and the live one is left as it was."""
    layout = Layout(tmp_path, "t")
    write_router_key(layout, KEY)
    text = render_router_config(instance="t", host="127.0.0.1", port=_free_port(),
                                replicas=[ReplicaRecord(0, _free_port()), ReplicaRecord(1, _free_port())],
                                key_map=credential_path(layout), runtime=runtime_dir(layout), down={1})
    check_router_config(layout, Path("/usr/sbin/nginx"), text)
    with pytest.raises(CheckFailed) as exc:
        check_router_config(layout, Path("/usr/sbin/nginx"), text.replace("least_conn;", "least_connections;"))
    assert exc.value.code == "install.router_config" and "least_connections" in exc.value.message
    with pytest.raises(CheckFailed):  # the credential must be there: the router would not start without it
        layout.router_key.unlink()
        check_router_config(layout, Path("/usr/sbin/nginx"), text)


def test_replica_ports_follow_the_router_and_mig_replicas_are_refused() -> None:
    # One replica is a serving set of one: r0 on --port+1 behind the router; on the CPU (no layout), no GPUs.
    assert plan_replicas([hw_layout.Replica(0, (3,))], port=8000) == (ReplicaRecord(0, 8001, (3,)),)
    assert plan_replicas([], port=8000) == (ReplicaRecord(0, 8001, ()),)
    assert plan_replicas([hw_layout.Replica(0, (0,), (), "1g.10gb")], port=8000) == (ReplicaRecord(0, 8001, (0,)),)
    two = plan_replicas([hw_layout.Replica(0, (0, 1), ("GPU-a", "GPU-b")), hw_layout.Replica(1, (2, 3))], port=9000)
    assert two == (ReplicaRecord(0, 9001, (0, 1), ("GPU-a", "GPU-b")), ReplicaRecord(1, 9002, (2, 3)))
    with pytest.raises(UsageError) as exc:
        plan_replicas([hw_layout.Replica(0, (0,), (), "1g.10gb"), hw_layout.Replica(1, (0,), (), "1g.10gb")], port=8000)
    assert exc.value.code == "install.mig_replicas" and "--replicas 1" in (exc.value.hint or "")
    with pytest.raises(UsageError) as exc:
        plan_replicas([hw_layout.Replica(i, (i,)) for i in range(8)], port=65530)
    assert exc.value.code == "service.bad_port"
