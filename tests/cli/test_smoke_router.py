"""`smoke --router`: through gptossctl's router, vLLM's /version and /metrics must be hidden (404); exposed is a
failure. Without --router the same endpoint fails those checks: the operator's flag, not the reply, decides."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

GPTOSSCTL = Path(sys.executable).with_name("gptossctl")


def _server(exposed: bool) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path == "/health":
                self.send_response(200)
                self.end_headers()
                return
            body = b'{"version": "0.33.0"}' if exposed and self.path == "/version" else b'{"error": "Not Found"}'
            code = 200 if exposed and self.path in ("/version", "/metrics") else 404
            if exposed and self.path == "/metrics":
                body = b"vllm:num_requests_running 0\n"
            self.send_response(code)
            metrics = exposed and self.path == "/metrics"
            self.send_header("Content-Type", "text/plain" if metrics else "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture(params=[False, True], ids=["hidden", "exposed"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[bool, str]]:
    srv = _server(request.param)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield request.param, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()


def _checks(url: str, *extra: str) -> dict[str, str]:
    res = subprocess.run([str(GPTOSSCTL), "smoke", "--url", url, "--model", "m", "--no-tools", "--no-reasoning",
                          *extra, "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode in (1, 4), res.stdout + res.stderr  # /v1 is absent here: the smoke fails as a whole
    doc = json.loads(res.stdout)
    return {c["id"]: c["status"] for c in doc["data"]["checks"]}


def test_router_mode_wants_version_and_metrics_hidden(server: tuple[bool, str]) -> None:
    exposed, url = server
    checks = _checks(url, "--router")
    want = "fail" if exposed else "pass"
    assert (checks["version"], checks["metrics"]) == (want, want), checks


def test_without_router_mode_a_hidden_version_fails(server: tuple[bool, str]) -> None:
    exposed, url = server
    checks = _checks(url)
    want = "pass" if exposed else "fail"
    assert (checks["version"], checks["metrics"]) == (want, want), checks
