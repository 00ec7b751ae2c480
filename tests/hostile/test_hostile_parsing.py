"""Hostile parsed input, through the installed console script: signed data re-signed with a trusted key but
overflowing or ambiguous, URLs that no HTTP library should be handed, servers that answer with hostile JSON,
journals and run reports that are garbage, canary thresholds and suites that would switch a gate off, and
GPU captures that describe impossible hardware.

Each case runs like those of test_hostile_inputs.py (exit code, exactly one result document, no traceback, a
next step in every refusal, watched paths unchanged), and names the error code it expects where one is
stable. The hostile server is a loopback stub (below) whose behaviour is chosen by the first segment of the
URL's path: http://127.0.0.1:PORT/MODE is a server in MODE.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gptossctl.bundle.dsse import PAYLOAD_TYPE, pae
from tests.conftest import KeyPair
from tests.hostile.test_hostile_inputs import (  # noqa: F401 - `world` is a fixture: importing registers it
    ENV_PASS,
    World,
    _run,
    _state,
    _write,
    world,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
H100_CSV = REPO / "tests" / "data" / "h100-lease" / "h100-query-gpu.csv"


# ---------------------------------------------------------------- a hostile server on loopback


MODES = {"models-deep", "models-wrongtype", "models-nan", "models-dupkey", "post-nan", "post-wrongtype",
         "stream-deep"}


class _Stub(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that misbehaves as its mode (the first path segment) says."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *_a: Any) -> None:
        pass

    def _split(self) -> tuple[str, str]:
        parts = self.path.split("/", 2)
        if len(parts) > 2 and parts[1] in MODES:
            return parts[1], "/" + parts[2]
        return "normal", self.path

    def _send(self, code: int, body: bytes | str | dict[str, Any] | list[Any], ctype: str = "application/json") -> None:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else \
            body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        mode, path = self._split()
        if path.startswith("/health"):
            return self._send(200, b"")
        if path.startswith("/version"):
            return self._send(200, {"version": "0.0-stub"})
        if path.startswith("/v1/models"):
            if mode == "models-deep":
                return self._send(200, "[" * 200_000 + "]" * 200_000)
            if mode == "models-wrongtype":
                return self._send(200, {"object": "list", "data": [{"id": 5}, "x", None]})
            if mode == "models-nan":
                return self._send(200, b'{"object": "list", "data": [{"id": NaN}]}')
            if mode == "models-dupkey":
                return self._send(200, b'{"object": "list", "data": [{"id": "a", "id": "b"}]}')
            return self._send(200, {"object": "list", "data": [{"id": "stub-model", "object": "model"}]})
        if path.startswith("/metrics"):
            return self._send(200, "x 1\n", "text/plain")
        return self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        mode, _path = self._split()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if mode == "post-nan":
            return self._send(200, b'{"choices": [{"message": {"content": NaN}}], "usage": {"completion_tokens": '
                                   b'Infinity}}')
        if mode == "post-wrongtype":
            return self._send(200, {"choices": ["x", {"message": "y"}], "usage": 5})
        try:
            req = json.loads(body)
        except ValueError:
            req = {}
        content = "The answer is Paris."
        if req.get("stream"):
            chunks = [{"choices": [{"index": 0, "delta": {"content": content}}]},
                      {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 5}}]
            if mode == "stream-deep":
                text = "data: " + "[" * 100_000 + "]" * 100_000 + "\n\n"
            else:
                text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
            return self._send(200, text + "data: [DONE]\n\n", "text/event-stream")
        return self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                             "finish_reason": "stop"}],
                                "usage": {"prompt_tokens": 5, "completion_tokens": 5}})


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class H:
    id: str
    argv: tuple[str, ...]
    expect: frozenset[int]
    code: str | None = None  # the error code a refusal must carry (None: any)
    env: tuple[tuple[str, str], ...] = ()
    watch: tuple[str, ...] = ()
    setup: Callable[[World, Path], dict[str, str]] | None = None
    out: str | None = None  # a regular expression the whole result document must match (a note, a value)
    absent: str | None = None  # a string that must appear nowhere in stdout or stderr


def Hc(id: str, *argv: str, expect: int | set[int], code: str | None = None, env: dict[str, str] | None = None,
       watch: tuple[str, ...] = (), setup: Callable[[World, Path], dict[str, str]] | None = None,
       out: str | None = None, absent: str | None = None) -> H:
    exp = frozenset({expect} if isinstance(expect, int) else expect)
    return H(id, argv, exp, code, tuple((env or {}).items()), watch, setup, out, absent)


def _signer(w: World) -> KeyPair:
    return KeyPair("alice", Path(w.paths["key"]), Path(w.paths["pub"]), "")


def _resigned(edit: Callable[[dict[str, Any]], bytes | dict[str, Any]],
              envelope: Callable[[dict[str, Any]], dict[str, Any]] | None = None
              ) -> Callable[[World, Path], dict[str, str]]:
    """A copy of the bundle whose manifest was edited, then signed again with the trusted key (alice)."""

    def make(w: World, tmp: Path) -> dict[str, str]:
        b = tmp / "b"
        shutil.copytree(w.paths["bundle"], b, symlinks=True)
        doc = json.loads((b / "manifest.json").read_bytes())
        edited = edit(doc)
        raw = edited if isinstance(edited, bytes) else json.dumps(edited, indent=1).encode()
        key = _signer(w).signer()
        sig = key.sign(pae(PAYLOAD_TYPE, raw))
        env = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(raw).decode(),
               "signatures": [{"keyid": key.keyid, "sig": base64.b64encode(sig).decode()}]}
        (b / "manifest.json").write_bytes(raw)
        (b / "manifest.dsse.json").write_text(json.dumps(envelope(env) if envelope else env))
        return {"b": str(b)}

    return make


def _set(**fields: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda d: {**d, **fields}


def _dup_version(d: dict[str, Any]) -> bytes:
    text = json.dumps(d, indent=1)
    return re.sub(r'"version": (\d+),', r'"version": \1, "version": 999999,', text, count=1).encode()


def _dup_envelope_key(env: dict[str, Any]) -> dict[str, Any]:
    return env  # rewritten as text by _envelope_text


def _envelope_text(change: Callable[[str], str]) -> Callable[[World, Path], dict[str, str]]:
    def make(w: World, tmp: Path) -> dict[str, str]:
        made = _resigned(lambda d: d)(w, tmp)
        env = Path(made["b"]) / "manifest.dsse.json"
        env.write_text(change(env.read_text()))
        return made

    return make


def _twice_signed(env: dict[str, Any]) -> dict[str, Any]:
    return {**env, "signatures": env["signatures"] * 3}


def _key(text: str) -> Callable[[World, Path], dict[str, str]]:
    def make(w: World, tmp: Path) -> dict[str, str]:
        p = tmp / "api-key"
        p.write_text(text)
        p.chmod(0o600)
        return {"k": str(p), "t": str(tmp)}

    return make


def _journal(data: bytes) -> Callable[[World, Path], dict[str, str]]:
    """An interrupted copy's work directory holding nothing but a journal of these bytes."""

    def make(w: World, tmp: Path) -> dict[str, str]:
        work = tmp / "c.partial"
        work.mkdir()
        (work / ".gptossctl-transfer.jsonl").write_bytes(data)
        return {"c": str(tmp / "c")}

    return make


def _runs(*started: str, out_exists: bool = False) -> Callable[[World, Path], dict[str, str]]:
    def make(w: World, tmp: Path) -> dict[str, str]:
        report = json.loads(Path(w.paths["report"]).read_text())
        for i, s in enumerate(started):
            _write(tmp / "runs" / f"r{i}" / "report.json", json.dumps({**report, "started": s}))
        extra = {"t": str(tmp / "runs")}
        if out_exists:
            extra["o"] = _write(tmp / "trend-out", "keep me\n")
        return extra

    return make


SUITE_HEAD = "schema: gptossctl.canary-suite/1\nname: x\nworkflows:\n  - name: w\n    cases:\n"
# Two cases against the stub (which always answers "The answer is Paris."): one passes, one fails: 50 %.
HALF = SUITE_HEAD + ("      - {id: a, prompt: p, max_tokens: 8, checks: [{contains: Paris}]}\n"
                     "      - {id: b, prompt: q, max_tokens: 8, checks: [{contains: Madrid}]}\n")


def _suite(text: str) -> Callable[[World, Path], dict[str, str]]:
    def make(w: World, tmp: Path) -> dict[str, str]:
        return {"s": _write(tmp / "suite.yaml", text), "t": str(tmp)}

    return make


def _capture(rows: list[str]) -> Callable[[World, Path], dict[str, str]]:
    def make(w: World, tmp: Path) -> dict[str, str]:
        lines = H100_CSV.read_text().splitlines()
        return {"csv": _write(tmp / "q.csv", "\n".join([lines[0], *rows]) + "\n")}

    return make


def _h100_row(**cols: str) -> str:
    """The capture's one H100 row with some columns replaced (by header name)."""
    header, row = H100_CSV.read_text().splitlines()[:2]
    names = [h.strip() for h in header.split(",")]
    values = [v.strip() for v in row.split(",")]
    for name, value in cols.items():
        i = next(k for k, n in enumerate(names) if n.startswith(name))
        values[i] = value
    return ", ".join(values)


STUB = "{stub}"
U = ("--url",)
KEYED = ("--api-key-file", "{k}")
SCHED = ("canary", "schedule", "--name", "wk", "--root", "{t}", "--dry-run")

F6: list[H] = [
    Hc("f6-verify-expiry-9999", "bundle", "verify", "{b}", "--trust", "{pub}", expect=0,
       setup=_resigned(_set(expires="9999-12-31T23:59:59Z"))),
    Hc("f6-install-expiry-9999", "install", "{b}", "--trust", "{pub}", "--root", "{t}/r", "--vllm-python",
       sys.executable, expect=0, setup=lambda w, t: {**_resigned(_set(expires="9999-12-31T23:59:59Z"))(w, t),
                                                     "t": str(t)}),
    Hc("f6-schedule-start-9999", *SCHED, "--url", "http://127.0.0.1:{port}", "--start", "9999-12-31T23:59:59Z",
       expect=2, setup=lambda w, t: {"t": str(t)}),
    Hc("f6-schedule-url-bad-ipv6", *SCHED, "--url", "http://[::1", expect=2, code="usage.bad_url",
       setup=lambda w, t: {"t": str(t)}),
    Hc("f6-run-url-newline", "canary", "run", "--url", "http://127.0.0.1:{port}\nx", expect=2, code="usage.bad_url"),
    Hc("f6-smoke-url-huge", "smoke", "--url", "http://127.0.0.1:{port}/" + "a" * 100_000, expect=2,
       code="usage.bad_url"),
    Hc("f6-smoke-url-fullwidth-host", "smoke", "--url", "http://\uff11\uff12\uff17.0.0.1:{port}", expect=2,
       code="usage.bad_url"),
    Hc("f6-smoke-key-not-ascii", "smoke", "--url", STUB, *KEYED, expect=2, code="probe.key_invalid",
       setup=_key("\u043a\u043b\u044e\u0447\n")),
    Hc("f6-smoke-models-deep", "smoke", "--url", STUB + "/models-deep", expect={1, 4}, code="probe.bad_response"),
    Hc("f6-smoke-models-wrongtype", "smoke", "--url", STUB + "/models-wrongtype", expect=1),
    Hc("f6-smoke-models-nan", "smoke", "--url", STUB + "/models-nan", expect={1, 4}, code="probe.bad_response"),
    Hc("f6-smoke-chat-nan", "smoke", "--url", STUB + "/post-nan", expect={1, 4}, code="probe.bad_response"),
    Hc("f6-smoke-chat-wrongtype", "smoke", "--url", STUB + "/post-wrongtype", expect=1),
    Hc("f6-canary-stream-deep", "canary", "run", "--url", STUB + "/stream-deep", "--suite", "{s}", expect=1,
       setup=_suite(HALF)),
    Hc("f6-copy-journal-binary", "bundle", "copy", "{bundle}", "{c}", expect=0, out="journal_reset",
       setup=_journal(bytes((i * 7919 + 13) % 256 for i in range(2000)))),
    Hc("f6-copy-journal-deep", "bundle", "copy", "{bundle}", "{c}", expect=0, out="journal_reset",
       setup=_journal(b"[" * 100_000)),
    Hc("f6-trend-started-not-a-time", "canary", "trend", "{t}", expect=2, code="canary.bad_report",
       setup=_runs("2026-01-01T00:00:00+00:00", "not a time"), out="r1"),
    Hc("f6-trend-started-naive", "canary", "trend", "{t}", expect=2, code="canary.bad_report",
       setup=_runs("2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00")),
    Hc("f6-trend-out-existing-file", "canary", "trend", "{t}", "--out", "{o}", expect=2,
       setup=_runs("2026-01-01T00:00:00+00:00", out_exists=True), watch=("o",)),
]

F9_F21: list[H] = [
    Hc("f9-run-min-correctness-nan", "canary", "run", "--url", STUB, "--suite", "{s}", "--min-correctness", "nan",
       expect=2, setup=_suite(HALF)),
    Hc("f9-run-min-correctness-negative", "canary", "run", "--url", STUB, "--suite", "{s}", "--min-correctness",
       "-1", expect=2, setup=_suite(HALF)),
    Hc("f9-run-min-correctness-above-one", "canary", "run", "--url", STUB, "--suite", "{s}", "--min-correctness",
       "1.5", expect=2, setup=_suite(HALF)),
    Hc("f9-run-half-fails-the-gate", "canary", "run", "--url", STUB, "--suite", "{s}", expect=1, setup=_suite(HALF)),
    Hc("f9-run-max-regression-inf", "canary", "run", "--url", STUB, "--suite", "{s}", "--max-regression", "inf",
       expect=2, setup=_suite(HALF)),
    Hc("f9-run-max-regression-negative", "canary", "run", "--url", STUB, "--suite", "{s}", "--max-regression",
       "-0.5", expect=2, setup=_suite(HALF)),
    Hc("f9-run-max-incidents-negative", "canary", "run", "--url", STUB, "--suite", "{s}",
       "--max-safety-incidents", "-1", expect=2, setup=_suite(HALF)),
    Hc("f9-schedule-min-correctness-nan", *SCHED, "--url", "http://127.0.0.1:{port}", "--min-correctness", "nan",
       expect=2, setup=lambda w, t: {"t": str(t)}),
    Hc("f9-schedule-max-regression-negative", *SCHED, "--url", "http://127.0.0.1:{port}", "--max-regression",
       "-1", expect=2, setup=lambda w, t: {"t": str(t)}),
    Hc("f9-trend-max-regression-nan", "canary", "trend", "{t}", "--max-regression", "nan", expect=2,
       setup=_runs("2026-01-01T00:00:00+00:00")),
    Hc("f21-suite-duplicate-id", "canary", "run", "--url", STUB, "--suite", "{s}", expect=2,
       code="canary.invalid_suite", setup=_suite(SUITE_HEAD + "      - {id: a, prompt: p, checks: [{contains: x}]}\n"
                                                 "      - {id: a, prompt: q, checks: [{contains: y}]}\n")),
    Hc("f21-suite-empty-contains", "canary", "run", "--url", STUB, "--suite", "{s}", expect=2,
       code="canary.invalid_suite", setup=_suite(SUITE_HEAD + '      - {id: a, prompt: p, checks: [{contains: ""}]}\n')),
    Hc("f21-suite-empty-regex", "canary", "run", "--url", STUB, "--suite", "{s}", expect=2,
       code="canary.invalid_suite", setup=_suite(SUITE_HEAD + '      - {id: a, prompt: p, checks: [{regex: ""}]}\n')),
    Hc("f21-suite-tolerance-inf", "canary", "run", "--url", STUB, "--suite", "{s}", expect=2,
       code="canary.invalid_suite", setup=_suite(
           SUITE_HEAD + "      - {id: a, prompt: p, checks: [{number: {value: 1, tolerance: .inf}}]}\n")),
    Hc("f21-suite-value-nan", "canary", "run", "--url", STUB, "--suite", "{s}", expect=2,
       code="canary.invalid_suite", setup=_suite(
           SUITE_HEAD + "      - {id: a, prompt: p, checks: [{number: {value: .nan}}]}\n")),
    Hc("f21-suite-reference-empty", "canary", "run", "--url", STUB, "--suite", "{s}", expect=2,
       code="canary.invalid_suite", setup=_suite(
           SUITE_HEAD + "      - {id: a, prompt: p, checks: [{contains: x}], reference: []}\n")),
    Hc("f21-suite-max-tokens-huge", "canary", "run", "--url", STUB, "--suite", "{s}", expect=2,
       code="canary.invalid_suite", setup=_suite(
           SUITE_HEAD + "      - {id: a, prompt: p, max_tokens: 99999999999999999999, checks: [{contains: x}]}\n")),
    Hc("f21-suite-duplicate-yaml-key", "canary", "run", "--url", STUB, "--suite", "{s}", expect=2,
       setup=_suite(SUITE_HEAD + "      - {id: a, prompt: p, prompt: q, checks: [{contains: x}]}\n")),
    Hc("f21-random-input-len-huge", "canary", "run", "--url", STUB, "--random-input-len", "100000000", expect=2),
]

F20: list[H] = [
    Hc("f20-schedule-url-file", *SCHED, "--url", "file:///etc/passwd", expect=2, code="usage.bad_url",
       setup=lambda w, t: {"t": str(t)}),
    Hc("f20-schedule-compare-url-file", *SCHED, "--url", "http://127.0.0.1:{port}", "--compare-url",
       "file:///etc/shadow", expect=2, code="usage.bad_url", setup=lambda w, t: {"t": str(t)}),
    Hc("f20-schedule-url-newline", *SCHED, "--url", "http://127.0.0.1:{port}\nx", expect=2, code="usage.bad_url",
       setup=lambda w, t: {"t": str(t)}),
    Hc("f20-schedule-start-in-past", *SCHED, "--url", "http://127.0.0.1:{port}", "--start", "2000-01-01T00:00:00Z",
       expect=2, setup=lambda w, t: {"t": str(t)}),
    Hc("f20-run-compare-url-file", "canary", "run", "--url", "http://127.0.0.1:{port}", "--compare-url",
       "file:///etc/shadow", expect=2, code="usage.bad_url"),
    Hc("f20-smoke-url-credentials", "smoke", "--url", "http://user:hunter2secret@127.0.0.1:{port}", expect=2,
       absent="hunter2secret"),
    Hc("f20-run-url-credentials", "canary", "run", "--url", "http://user:hunter2secret@127.0.0.1:{port}",
       expect=2, absent="hunter2secret"),
    Hc("f20-schedule-url-credentials", *SCHED, "--url", "http://user:hunter2secret@127.0.0.1:{port}", expect=2,
       absent="hunter2secret", setup=lambda w, t: {"t": str(t)}),
    Hc("f20-smoke-url-query-fragment", "smoke", "--url", "http://127.0.0.1:{port}/?a=b#f", expect=2,
       code="usage.bad_url"),
]

F14_F15_F22: list[H] = [
    Hc("f14-manifest-duplicate-key", "bundle", "verify", "{b}", "--trust", "{pub}", expect=1,
       out="manifest.malformed", setup=_resigned(_dup_version)),
    Hc("f14-envelope-duplicate-key", "bundle", "verify", "{b}", "--trust", "{pub}", expect=1,
       code="bundle.envelope_malformed",
       setup=_envelope_text(lambda t: t.replace('"payloadType":', '"payloadType": "x", "payloadType":', 1))),
    Hc("f14-report-duplicate-key", "canary", "run", "--url", STUB, "--suite", "{s}", "--baseline", "{bl}", expect=2,
       code="canary.bad_baseline", setup=lambda w, t: {**_suite(HALF)(w, t), "bl": _write(
           t / "bl.json", Path(w.paths["report"]).read_text().replace('"schema":', '"schema": "x", "schema":', 1))}),
    Hc("f14-recipe-duplicate-key", "bundle", "pack", "{r}", "--model-dir", "{model}", "--out", "{t}/out",
       "--key", "{key}", env=ENV_PASS, expect=2, setup=lambda w, t: {
           "r": _write(t / "recipe.yaml", (REPO / "bundles" / "tiny-demo.yaml").read_text() + "\nname: other\n"),
           "t": str(t)}),
    Hc("f14-journal-duplicate-key-is-no-journal", "bundle", "copy", "{bundle}", "{c}", expect=0, out="journal_reset",
       setup=_journal(b'{"schema": "x", "schema": "gptossctl.transfer-journal/1"}\n')),
    Hc("f15-manifest-version-huge", "bundle", "verify", "{b}", "--trust", "{pub}", expect=1,
       out="manifest.malformed", setup=_resigned(_set(version=10**30))),
    Hc("f15-manifest-version-zero", "bundle", "verify", "{b}", "--trust", "{pub}", expect=1,
       out="manifest.malformed", setup=_resigned(_set(version=0))),
    Hc("f22-envelope-repeated-signature", "bundle", "verify", "{b}", "--trust", "{pub}", expect=1,
       code="bundle.envelope_malformed", setup=_resigned(lambda d: d, _twice_signed)),
    Hc("f22-pack-same-key-twice", "bundle", "pack", "{recipe}", "--model-dir", "{model}", "--out", "{t}/out",
       "--key", "{key}", "--key", "{key}", env=ENV_PASS, expect=2, setup=lambda w, t: {"t": str(t)}),
]

F18: list[H] = [
    Hc("f18-capture-duplicate-gpu", "hw", "check", "--nvidia-smi-csv", "{csv}", "--model", "gpt-oss-20b",
       expect=2, code="hw.capture_invalid", setup=_capture([_h100_row()] * 8)),
    Hc("f18-capture-duplicate-pci-bus", "hw", "check", "--nvidia-smi-csv", "{csv}", "--model", "gpt-oss-20b",
       expect=2, code="hw.capture_invalid",
       setup=_capture([_h100_row(), _h100_row(index="1", uuid="GPU-00000000-0000-0000-0000-000000000001")])),
    Hc("f18-capture-distinct-gpus-pass", "hw", "check", "--nvidia-smi-csv", "{csv}", "--model", "gpt-oss-20b",
       expect={0, 1}, setup=_capture([_h100_row(), _h100_row(index="1", uuid="GPU-1", **{"pci.bus_id": "0:7.0"})])),
    Hc("f18-amd-capture-duplicate-gpu", "hw", "check", "--amd-smi-json", "{j}", "--model", "gpt-oss-20b", expect=2,
       code="hw.capture_invalid", setup=lambda w, t: {"j": _write(t / "amd.json", json.dumps({"gpu_data": [
           {"gpu": 0, "asic": {"market_name": "AMD Instinct MI300X"}, "vram": {"size": {"value": 196592, "unit": "MB"}}}
       ] * 2}))}),
    Hc("f18-capture-free-above-total", "hw", "check", "--nvidia-smi-csv", "{csv}", "--model", "gpt-oss-20b",
       expect=2, code="hw.capture_invalid", setup=_capture([_h100_row(**{"memory.free": "99999999 MiB"})])),
    Hc("f18-capture-negative-memory", "hw", "check", "--nvidia-smi-csv", "{csv}", "--model", "gpt-oss-20b",
       expect=2, code="hw.capture_invalid", setup=_capture([_h100_row(**{"memory.total": "-5 MiB"})])),
    Hc("f18-capture-nan-memory", "hw", "check", "--nvidia-smi-csv", "{csv}", "--model", "gpt-oss-20b",
       expect=2, code="hw.capture_invalid", setup=_capture([_h100_row(**{"memory.total": "nan MiB"})])),
]

def _small_disk(w: World, tmp: Path) -> dict[str, str]:
    mnt = tmp / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    return {"mnt": str(mnt)}


F23_F24: list[H] = [
    Hc("f24-copy-small-disk-says-mib", "bundle", "copy", "{bundle}", "{mnt}/c", expect={1, 3, 4},
       out=r"MiB (to write|free)", setup=_small_disk),
    Hc("f23-size-fullwidth-digit", "bundle", "split", "{bundle}", "--out", "{t}/p", "--part-size",
       "\uff14G", expect=2, setup=lambda w, t: {"t": str(t)}),
    Hc("f24-api-key-file-directory", "smoke", "--url", "http://127.0.0.1:{port}", "--api-key-file", "{dir}",
       expect=2, absent="file file"),
]

CASES: list[H] = F6 + F9_F21 + F20 + F14_F15_F22 + F18 + F23_F24


@pytest.fixture(scope="module")
def report(stub: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real canary report (canary run against the stub), for the trend cases to copy and edit."""
    d = tmp_path_factory.mktemp("canary")
    suite = _write(d / "suite.yaml", SUITE_HEAD + "      - {id: a, prompt: p, max_tokens: 8, checks: [{contains: Paris}]}\n")
    r = _run(["canary", "run", "--url", stub, "--suite", suite, "--out", str(d / "out")], {})
    assert r.returncode == 0, r.stdout[-3000:]
    return str(d / "out" / "report.json")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_parsing_is_refused_cleanly(case: H, world: World, stub: str, report: str,  # noqa: F811
                                           tmp_path: Path) -> None:
    base = World(world.base, {**world.paths, "stub": stub, "report": report})
    extra = case.setup(base, tmp_path) if case.setup else {}
    w = World(world.base, {**base.paths, **extra})
    before = {name: _state(Path(w.paths[name])) for name in case.watch}
    try:
        r = _run([w.fmt(a) for a in case.argv], {k: w.fmt(v) for k, v in case.env})
    finally:
        if "mnt" in extra:
            subprocess.run(["umount", extra["mnt"]], check=False)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    doc = json.loads(r.stdout)  # exactly one document
    err = doc.get("error") or {}
    assert r.returncode in case.expect, f"exit {r.returncode}: {err.get('code')}: {err.get('message', '')[:300]}"
    assert doc["schema"] == "gptossctl.result/1" and doc["exit_code"] == r.returncode
    if case.code is not None:
        assert err.get("code") == case.code, f"code {err.get('code')}: {err.get('message', '')[:300]}"
    if r.returncode and err:
        assert err.get("code") and err.get("message") and err.get("hint"), f"no next step said: {err}"
        assert "internal error" not in err["message"], doc
    elif r.returncode:
        assert doc["findings"] and all(f.get("hint") for f in doc["findings"]), f"no next step said: {doc}"
    if case.out is not None:
        assert re.search(case.out, r.stdout), f"{case.out!r} not in {r.stdout[:2000]}"
    if case.absent is not None:
        assert case.absent not in r.stdout + r.stderr, f"{case.absent!r} echoed: {r.stdout[:1000]}"
    for name in case.watch:
        after = _state(Path(w.paths[name]))
        assert after == before[name], f"{name} changed by a refused command"
