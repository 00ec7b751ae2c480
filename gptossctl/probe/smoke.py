"""Smoke test: does the service work, and is it locked down? Each check passes or fails with the
evidence, or is not applicable (n/a) with the reason; deterministic prompts, short timeouts.

Exit 0 all pass, 1 the service answered but a check failed (a refused key counts here), 4 unreachable.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

from gptossctl.adapters.openai_http import Client, Endpoint, Reply, iter_text_deltas

Status = Literal["pass", "fail", "n/a"]
PROMPT = "What is the capital of France?"


@dataclass(frozen=True)
class SmokeCheck:
    id: str
    status: Status
    evidence: str
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "evidence": self.evidence, "seconds": round(self.seconds, 3)}


@dataclass
class SmokeReport:
    url: str
    model: str | None
    checks: list[SmokeCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.status != "fail" for c in self.checks)

    @property
    def findings(self) -> list[Any]:
        from gptossctl.errors import Finding

        return [Finding(c.id, self.url, c.evidence) for c in self.checks if c.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


@dataclass(frozen=True)
class SmokeOptions:
    model: str | None = None
    tools: bool = False  # the profile enables tool calling (--enable-auto-tool-choice)
    reasoning: bool | None = None  # None: decide from the model name (gpt-oss reasons)
    max_tokens: int = 16


def _short(body: Any, n: int = 160) -> str:
    text = body if isinstance(body, str) else json.dumps(body)[:n * 2]
    return text[:n]


def _message(reply: Reply) -> dict[str, Any]:
    try:
        return reply.body["choices"][0]["message"] or {}
    except (KeyError, IndexError, TypeError):
        return {}


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_smoke(endpoint: Endpoint, opts: SmokeOptions = SmokeOptions()) -> SmokeReport:
    client = Client(endpoint)
    report = SmokeReport(endpoint.url, opts.model)
    try:
        _run(client, endpoint, opts, report)
    finally:
        client.close()
    return report


def _run(client: Client, endpoint: Endpoint, opts: SmokeOptions, report: SmokeReport) -> None:
    def add(check_id: str, fn: Callable[[], tuple[Status, str]]) -> None:
        import time

        t = time.perf_counter()
        status, evidence = fn()
        report.checks.append(SmokeCheck(check_id, status, evidence, time.perf_counter() - t))

    # Reachability first: an unreachable service raises ServiceUnavailable (exit 4) from here.
    health = client.request("GET", "/health", key=False)
    report.checks.append(SmokeCheck("health", "pass" if health.status == 200 else "fail",
                                    f"GET /health -> {health.status}" + (" (engine dead)" if health.status == 503 else ""),
                                    health.elapsed))

    def version() -> tuple[Status, str]:
        r = client.request("GET", "/version", key=False)
        v = r.body.get("version") if isinstance(r.body, dict) else None
        return ("pass", f"vLLM {v}") if r.ok and v else ("fail", f"GET /version -> {r.status} {_short(r.body)}")

    add("version", version)

    def models() -> tuple[Status, str]:
        r = client.request("GET", "/v1/models")
        ids = [m.get("id") for m in r.body.get("data", [])] if r.ok and isinstance(r.body, dict) else []
        if not ids:
            return "fail", f"GET /v1/models -> {r.status} {_short(r.body)}"
        if report.model is None:
            report.model = ids[0]
        return ("pass", f"serves {', '.join(ids)}") if report.model in ids else \
            ("fail", f"{report.model!r} not served; the server lists {', '.join(ids)}")

    add("models", models)
    model = report.model or "unknown"
    chat_body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
                 "max_tokens": opts.max_tokens, "seed": 0}

    def chat() -> tuple[Status, str]:
        r = client.request("POST", "/v1/chat/completions", body=chat_body)
        msg = _message(r)
        text = msg.get("content") or msg.get("reasoning") or msg.get("reasoning_content") or ""
        usage = r.body.get("usage", {}) if isinstance(r.body, dict) else {}
        if r.ok and text and usage.get("completion_tokens"):
            return "pass", f"{usage['completion_tokens']} tokens: {text[:60]!r}"
        return "fail", f"POST /v1/chat/completions -> {r.status} {_short(r.body)}"

    add("chat", chat)

    def chat_stream() -> tuple[Status, str]:
        status, events = client.stream("/v1/chat/completions", {**chat_body, "stream": True,
                                                                "stream_options": {"include_usage": True}})
        if status != 200:
            return "fail", f"stream -> HTTP {status}"
        deltas = list(iter_text_deltas(events))
        done = bool(events) and events[-1].data is None
        usage = next((e.data["usage"] for e in events if e.data and e.data.get("usage")), None)
        if deltas and done and usage:
            return "pass", f"{len(deltas)} chunks, [DONE], usage {usage.get('completion_tokens')} tokens"
        return "fail", f"chunks={len(deltas)} done={done} usage={'yes' if usage else 'missing'}"

    add("chat_stream", chat_stream)

    reasoning = opts.reasoning if opts.reasoning is not None else "gpt-oss" in model
    for effort in ("low", "high"):
        def reason(effort: str = effort) -> tuple[Status, str]:
            if not reasoning:
                return "n/a", f"{model} is not a reasoning model"
            r = client.request("POST", "/v1/chat/completions",
                               body={**chat_body, "reasoning_effort": effort, "max_tokens": 256})
            msg = _message(r)
            text = msg.get("reasoning") or msg.get("reasoning_content")  # renamed around vLLM 0.17
            return ("pass", f"{len(text)} characters of reasoning") if r.ok and text else \
                ("fail", f"no reasoning at effort {effort}: HTTP {r.status} {_short(r.body)}")

        add(f"reasoning_{effort}", reason)

    def tool_call() -> tuple[Status, str]:
        if not opts.tools:
            return "n/a", "tool calling not enabled for this service"
        tools = [{"type": "function", "function": {"name": "get_time", "description": "Current UTC time",
                                                   "parameters": {"type": "object", "properties": {}}}}]
        body = {**chat_body, "messages": [{"role": "user", "content": "What time is it? Use the tool."}],
                "tools": tools, "tool_choice": "auto", "max_tokens": 256}
        r = client.request("POST", "/v1/chat/completions", body=body)
        calls = _message(r).get("tool_calls") or []
        if not r.ok or not calls:
            return "fail", f"no tool call: HTTP {r.status} {_short(r.body)}"
        call = calls[0]
        try:
            json.loads(call["function"]["arguments"] or "{}")
        except (KeyError, json.JSONDecodeError):
            return "fail", f"tool call arguments are not JSON: {_short(call)}"
        follow = {**body, "messages": [*body["messages"], _message(r),
                                       {"role": "tool", "tool_call_id": call.get("id", ""), "content": "12:00 UTC"}]}
        r2 = client.request("POST", "/v1/chat/completions", body=follow)
        return ("pass", f"called {call['function']['name']}, answered after the result") if r2.ok else \
            ("fail", f"round trip failed: HTTP {r2.status} {_short(r2.body)}")

    add("tool_call", tool_call)

    def responses() -> tuple[Status, str]:
        r = client.request("POST", "/v1/responses", body={"model": model, "input": PROMPT, "temperature": 0,
                                                         "max_output_tokens": opts.max_tokens})
        out = r.body.get("output") if isinstance(r.body, dict) else None
        return ("pass", f"status {r.body.get('status')}, {len(out)} output item(s)") if r.ok and out else \
            ("fail", f"POST /v1/responses -> {r.status} {_short(r.body)}")

    add("responses", responses)

    def auth() -> tuple[Status, str]:
        if not endpoint.api_key:
            return "fail", "no API key given: an unauthenticated service fails this check (pass --api-key-file)"
        none = client.request("GET", "/v1/models", key=False)
        wrong = client.request("GET", "/v1/models", key="wrong-" + "x" * 16)
        if none.status == 401 and wrong.status == 401:
            return "pass", "no key -> 401, wrong key -> 401"
        return "fail", f"no key -> {none.status}, wrong key -> {wrong.status} (both must be 401)"

    add("api_key_enforced", auth)

    def unauthenticated_paths() -> tuple[Status, str]:
        # vLLM's key guards /v1 only: /invocations runs inference without one.
        r = client.request("POST", "/invocations", body=chat_body, key=False)
        if r.status in (401, 403, 404, 405):
            return "pass", f"/invocations without a key -> {r.status}"
        if is_loopback(endpoint.url):
            return "pass", f"/invocations answers {r.status} without a key, but only on loopback (not exposed)"
        return "fail", (f"/invocations answers {r.status} without a key on the exposed address {endpoint.url}: "
                        "put the allowlisting proxy in front or bind to 127.0.0.1")

    add("no_unauthenticated_inference", unauthenticated_paths)

    def metrics() -> tuple[Status, str]:
        r = client.request("GET", "/metrics", key=False)
        text = r.body if isinstance(r.body, str) else ""
        series = sorted({line.split("{")[0].split(" ")[0] for line in text.splitlines()
                         if line.startswith("vllm:")})
        return ("pass", f"{len(series)} vllm: series") if r.ok and series else \
            ("fail", f"GET /metrics -> {r.status}, no vllm: series")

    add("metrics", metrics)
