"""Smoke test: does the service work, and is it locked down? Each check passes or fails with the
evidence, or is not applicable (n/a) with the reason; deterministic prompts, temperature 0.

The checks are a table (CHECKS) of functions over one shared context, run in order. `health` runs first
and raises ServiceUnavailable (exit 4) when nothing answers (as any check does if the server dies mid-run).
For gpt-oss the harmony checks apply: reasoning at each effort (present, a final answer after it, and
more reasoning at high than at low), a tool-call round trip, Responses reasoning items, streamed
reasoning deltas, and no harmony control token (<|channel|>, <|message|>, ...) in any text the other
checks received. Whether a model is gpt-oss is decided from its served name unless told (`reasoning`);
tool calling is tested on gpt-oss by default, since every gpt-oss profile enables the openai tool parser
(`tools=False` for a service deliberately served without it).

Exit 0 all pass, 1 the service answered but a check failed (a refused key counts here), 4 unreachable.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

from gptossctl.adapters.openai_http import Client, Endpoint, Reply, StreamEvent, iter_text_deltas
from gptossctl.errors import Finding

Status = Literal["pass", "fail", "n/a"]
Outcome = tuple[Status, str]
EFFORTS = ("low", "medium", "high")
# What the checks ask; the tiny harmony model (gptossctl.demo.harmony) is taught exactly these.
PROMPT = "What is the capital of France?"
REASONING_PROMPT = "What is 17 * 3?"
TOOL_PROMPT = "What is the weather in Paris? Use the get_weather tool."
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_RESULT = '{"city": "Paris", "sky": "sunny", "temperature_c": 21}'
TOOL_RESULT_MARK = "21"  # the final answer after the tool result must carry it
# A harmony control token as text: <|channel|>, <|message|>, <|end|>, <|reserved_200017|>, ...
CONTROL_TOKEN = re.compile(r"<\|[a-z_0-9]+\|>")
CHECK_HINT = ("read the evidence, then the service's journal (journalctl -u gptoss@INSTANCE-r0); the README's smoke "
              "section says what each check needs from the profile")


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
    def findings(self) -> list[Finding]:
        return [Finding(c.id, self.url, c.evidence, hint=CHECK_HINT) for c in self.checks if c.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


@dataclass(frozen=True)
class SmokeOptions:
    model: str | None = None
    tools: bool | None = None  # None: on for gpt-oss (its profiles enable --tool-call-parser openai)
    reasoning: bool | None = None  # None: decide from the model name (gpt-oss reasons)
    max_tokens: int = 16
    reasoning_max_tokens: int = 1024  # room for a real gpt-oss at high effort, then its final answer
    reasoning_prompt: str = REASONING_PROMPT
    # The URL is gptossctl's router (the operator says so): vLLM's /version and /metrics must be hidden there.
    router: bool = False


@dataclass(frozen=True)
class Answer:
    """One chat answer at one reasoning effort."""

    status: int
    reasoning: str
    content: str
    reasoning_tokens: int | None
    body: Any

    @property
    def summary(self) -> str:
        tokens = f", {self.reasoning_tokens} tokens" if self.reasoning_tokens is not None else ""
        return f"{len(self.reasoning)} characters of reasoning{tokens}"


@dataclass
class _Ctx:
    client: Client
    endpoint: Endpoint
    opts: SmokeOptions
    model: str = "unknown"
    answers: dict[str, Answer] = field(default_factory=dict)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (where it came from, text) for harmony_markers

    @property
    def harmony(self) -> bool:
        return self.opts.reasoning if self.opts.reasoning is not None else "gpt-oss" in self.model

    @property
    def tools(self) -> bool:
        return self.opts.tools if self.opts.tools is not None else self.harmony

    def chat_body(self, **extra: Any) -> dict[str, Any]:
        return {"model": self.model, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
                "max_tokens": self.opts.max_tokens, "seed": 0, **extra}

    def seen(self, where: str, text: Any) -> None:
        if isinstance(text, str) and text:
            self.texts.append((where, text))

    def answer(self, effort: str) -> Answer:
        """The reasoning question at one effort, asked once and shared by the checks that compare."""
        if effort not in self.answers:
            r = self.client.request("POST", "/v1/chat/completions", body=self.chat_body(
                messages=[{"role": "user", "content": self.opts.reasoning_prompt}], reasoning_effort=effort,
                max_tokens=self.opts.reasoning_max_tokens))
            msg = _message(r)
            a = Answer(r.status, _reasoning_of(msg), _text(msg.get("content")), _reasoning_tokens(r.body), r.body)
            self.seen(f"reasoning at {effort}", a.reasoning)
            self.seen(f"content at {effort}", a.content)
            self.answers[effort] = a
        return self.answers[effort]


def _dict(v: Any) -> dict[str, Any]:
    """What a server sent, read as an object (anything else: empty), so a wrong type is a failed check."""
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _text(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _short(body: Any, n: int = 160) -> str:
    text = body if isinstance(body, str) else json.dumps(body)[:n * 2]
    return text[:n]


def _message(reply: Reply) -> dict[str, Any]:
    choices = _list(_dict(reply.body).get("choices"))
    return _dict(_dict(choices[0]).get("message")) if choices else {}


def _reasoning_of(obj: dict[str, Any]) -> str:
    return _text(obj.get("reasoning")) or _text(obj.get("reasoning_content"))  # renamed around vLLM 0.17


def _reasoning_tokens(body: Any) -> int | None:
    n = _dict(_dict(_dict(body).get("usage")).get("completion_tokens_details")).get("reasoning_tokens")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- the service answers


def check_health(ctx: _Ctx) -> Outcome:
    # Reachability first: an unreachable service raises ServiceUnavailable (exit 4) from here.
    r = ctx.client.request("GET", "/health", key=False)
    return ("pass" if r.status == 200 else "fail"), \
        f"GET /health -> {r.status}" + (" (engine dead)" if r.status == 503 else "")


def _hidden_by_router(ctx: _Ctx, path: str) -> Outcome:
    r = ctx.client.request("GET", path, key=False)
    return ("pass", f"GET {path} -> 404: not exposed by the router") if r.status == 404 else \
        ("fail", f"GET {path} -> {r.status}: the router must not expose it")


def check_version(ctx: _Ctx) -> Outcome:
    if ctx.opts.router:
        return _hidden_by_router(ctx, "/version")
    r = ctx.client.request("GET", "/version", key=False)
    v = _text(_dict(r.body).get("version"))
    return ("pass", f"vLLM {v[:80]}") if r.ok and v else ("fail", f"GET /version -> {r.status} {_short(r.body)}")


def check_models(ctx: _Ctx) -> Outcome:
    r = ctx.client.request("GET", "/v1/models")
    entries = _list(_dict(r.body).get("data")) if r.ok else []
    ids = [m["id"] for m in entries if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]]
    if not ids:
        return "fail", f"GET /v1/models -> {r.status}, no model with a name (an \"id\" string): {_short(r.body)}"
    if len(ids) < len(entries):
        return "fail", f"GET /v1/models lists {len(entries) - len(ids)} entries without a name: {_short(r.body)}"
    if ctx.opts.model is None:
        ctx.model = ids[0]
    return ("pass", f"serves {', '.join(ids)}") if ctx.model in ids else \
        ("fail", f"{ctx.model!r} not served; the server lists {', '.join(ids)}")


def check_chat(ctx: _Ctx) -> Outcome:
    r = ctx.client.request("POST", "/v1/chat/completions", body=ctx.chat_body())
    msg = _message(r)
    ctx.seen("chat content", msg.get("content"))
    ctx.seen("chat reasoning", _reasoning_of(msg))
    text = _text(msg.get("content")) or _reasoning_of(msg)
    usage = _dict(_dict(r.body).get("usage"))
    tokens = usage.get("completion_tokens")
    if r.ok and text and isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0:
        return "pass", f"{usage['completion_tokens']} tokens: {text[:60]!r}"
    return "fail", f"POST /v1/chat/completions -> {r.status} {_short(r.body)}"


def _deltas(events: list[StreamEvent], name: str) -> list[str]:
    out = []
    for ev in events:
        for choice in _list(_dict(ev.data).get("choices")):
            delta = _dict(_dict(choice).get("delta"))
            text = _reasoning_of(delta) if name == "reasoning" else _text(delta.get(name))
            if text:
                out.append(text)
    return out


def check_chat_stream(ctx: _Ctx) -> Outcome:
    status, events = ctx.client.stream("/v1/chat/completions", ctx.chat_body(
        stream=True, stream_options={"include_usage": True}))
    if status != 200:
        return "fail", f"stream -> HTTP {status}"
    ctx.seen("streamed chat content", "".join(_deltas(events, "content")))
    ctx.seen("streamed chat reasoning", "".join(_deltas(events, "reasoning")))
    deltas = list(iter_text_deltas(events))
    done = bool(events) and events[-1].data is None
    usage = next((u for e in events if (u := _dict(_dict(e.data).get("usage")))), None)
    if deltas and done and usage:
        return "pass", f"{len(deltas)} chunks, [DONE], usage {_short(usage.get('completion_tokens'), 20)} tokens"
    return "fail", f"chunks={len(deltas)} done={done} usage={'yes' if usage else 'missing'}"


# ---------------------------------------------------------------- reasoning (gpt-oss)


def _not_reasoning(ctx: _Ctx) -> Outcome:
    return "n/a", f"{ctx.model} is not a reasoning model (gpt-oss); --reasoning forces these checks"


def _reasoning_at(ctx: _Ctx, effort: str) -> Outcome:
    """Reasoning present, a final answer after it, and more reasoning at high than at low."""
    if not ctx.harmony:
        return _not_reasoning(ctx)
    a = ctx.answer(effort)
    if a.status != 200:
        return "fail", f"no answer at effort {effort}: HTTP {a.status} {_short(a.body)}"
    if not a.reasoning:
        return "fail", (f"no reasoning at effort {effort} (no analysis channel, or no gpt-oss reasoning parser): "
                        f"content {a.content[:80]!r}")
    if not a.content:
        return "fail", f"reasoning but no final answer at effort {effort} ({a.summary}; raise max tokens?)"
    low, high = ctx.answer("low"), ctx.answer("high")
    lengths = ", ".join(f"{e} {len(ctx.answer(e).reasoning)}" for e in EFFORTS)
    if not len(low.reasoning) < len(high.reasoning):
        return "fail", f"effort ignored: no more reasoning at high than at low (characters: {lengths})"
    return "pass", f"{a.summary}, final {a.content[:40]!r} (characters: {lengths})"


def check_reasoning_low(ctx: _Ctx) -> Outcome:
    return _reasoning_at(ctx, "low")


def check_reasoning_medium(ctx: _Ctx) -> Outcome:
    return _reasoning_at(ctx, "medium")


def check_reasoning_high(ctx: _Ctx) -> Outcome:
    return _reasoning_at(ctx, "high")


def check_reasoning_stream(ctx: _Ctx) -> Outcome:
    """Streamed reasoning deltas, then content deltas."""
    if not ctx.harmony:
        return _not_reasoning(ctx)
    status, events = ctx.client.stream("/v1/chat/completions", ctx.chat_body(
        messages=[{"role": "user", "content": ctx.opts.reasoning_prompt}], reasoning_effort="medium",
        max_tokens=ctx.opts.reasoning_max_tokens, stream=True))
    if status != 200:
        return "fail", f"stream -> HTTP {status}"
    reasoning, content = _deltas(events, "reasoning"), _deltas(events, "content")
    ctx.seen("streamed reasoning", "".join(reasoning))
    ctx.seen("streamed content", "".join(content))
    if not reasoning:
        return "fail", (f"no reasoning deltas in {len(events)} events (no analysis channel, or no gpt-oss "
                        f"reasoning parser); content {''.join(content)[:80]!r}")
    if not content:
        return "fail", f"{len(reasoning)} reasoning deltas but no content delta"
    return "pass", (f"{len(reasoning)} reasoning deltas ({len(''.join(reasoning))} characters), then "
                    f"{len(content)} content deltas")


# ---------------------------------------------------------------- tools (gpt-oss)


def check_tool_call(ctx: _Ctx) -> Outcome:
    """A round trip: a parsed call with JSON arguments, the result sent back, a final answer using it."""
    if not ctx.tools:
        return "n/a", ("tool calling not tested: told the service has none (--no-tools)" if ctx.opts.tools is False
                       else f"{ctx.model} is not gpt-oss, whose profiles enable tool calling (--tools tests it)")
    body = ctx.chat_body(messages=[{"role": "user", "content": TOOL_PROMPT}], tools=[WEATHER_TOOL],
                         tool_choice="auto", max_tokens=ctx.opts.reasoning_max_tokens)
    r = ctx.client.request("POST", "/v1/chat/completions", body=body)
    msg = _message(r)
    ctx.seen("reasoning before the tool call", _reasoning_of(msg))
    ctx.seen("content beside the tool call", msg.get("content"))
    calls = [c for c in _list(msg.get("tool_calls")) if isinstance(c, dict)]
    if not r.ok or not calls:
        return "fail", (f"no parsed tool call (is --tool-call-parser openai --enable-auto-tool-choice set?): "
                        f"HTTP {r.status} {_short(msg or r.body)}")
    call = calls[0]
    fn = _dict(call.get("function"))
    try:
        args = json.loads(_text(fn.get("arguments")) or "{}")
    except (json.JSONDecodeError, RecursionError):
        return "fail", f"tool call arguments are not JSON: {_short(call)}"
    if not isinstance(args, dict):
        return "fail", f"tool call arguments are not a JSON object: {_short(call)}"
    follow = {**body, "messages": [*body["messages"], msg,
                                   {"role": "tool", "tool_call_id": _text(call.get("id")), "content": TOOL_RESULT}]}
    r2 = ctx.client.request("POST", "/v1/chat/completions", body=follow)
    final = _message(r2)
    ctx.seen("content after the tool result", final.get("content"))
    ctx.seen("reasoning after the tool result", _reasoning_of(final))
    answer = _text(final.get("content"))
    name = _text(fn.get("name"))[:80]
    if not r2.ok or TOOL_RESULT_MARK not in answer:
        return "fail", (f"called {name}({json.dumps(args)[:200]}), but the answer after the "
                        f"result does not use it (no {TOOL_RESULT_MARK!r}): HTTP {r2.status} {_short(final or r2.body)}")
    return "pass", f"called {name}({json.dumps(args)[:200]}), then answered {answer[:60]!r}"


# ---------------------------------------------------------------- Responses API


def _output_texts(body: Any) -> list[tuple[str, str]]:
    """(item type, text) for every text part of a Responses output."""
    out = []
    for item in _list(_dict(body).get("output")):
        item = _dict(item)
        for part in _list(item.get("content")) + _list(item.get("summary")):
            if _text(_dict(part).get("text")):
                out.append((_text(item.get("type"))[:40], part["text"]))
    return out


def check_responses(ctx: _Ctx) -> Outcome:
    r = ctx.client.request("POST", "/v1/responses", body={"model": ctx.model, "input": PROMPT, "temperature": 0,
                                                         "max_output_tokens": ctx.opts.max_tokens})
    out = _list(_dict(r.body).get("output"))
    for kind, text in _output_texts(r.body):
        ctx.seen(f"Responses {kind}", text)
    return ("pass", f"status {_short(_dict(r.body).get('status'), 40)}, {len(out)} output item(s)") if r.ok and out else \
        ("fail", f"POST /v1/responses -> {r.status} {_short(r.body)}")


def check_responses_reasoning(ctx: _Ctx) -> Outcome:
    """The Responses API returns a reasoning item and a message after it."""
    if not ctx.harmony:
        return _not_reasoning(ctx)
    r = ctx.client.request("POST", "/v1/responses", body={
        "model": ctx.model, "input": ctx.opts.reasoning_prompt, "temperature": 0, "reasoning": {"effort": "medium"},
        "max_output_tokens": ctx.opts.reasoning_max_tokens})
    texts = _output_texts(r.body)
    for kind, text in texts:
        ctx.seen(f"Responses {kind}", text)
    reasoning = "".join(t for k, t in texts if k == "reasoning")
    message = "".join(t for k, t in texts if k == "message")
    if not r.ok:
        return "fail", f"POST /v1/responses -> {r.status} {_short(r.body)}"
    if not reasoning or not message:
        kinds = [_short(_dict(i).get("type"), 40) for i in _list(_dict(r.body).get("output"))]
        return "fail", f"output items {kinds}: expected a reasoning item with text and a message"
    return "pass", f"reasoning item ({len(reasoning)} characters), then message {message[:40]!r}"


def check_harmony_markers(ctx: _Ctx) -> Outcome:
    """No harmony control token in any content or reasoning the checks above received, streamed or not."""
    if not ctx.harmony:
        return "n/a", f"{ctx.model} does not speak harmony (not gpt-oss)"
    if not ctx.texts:
        return "fail", "no content or reasoning came back from the checks above: nothing to inspect"
    leaks = [(where, m.group(0)) for where, text in ctx.texts for m in CONTROL_TOKEN.finditer(text)]
    if leaks:
        shown = "; ".join(f"{tok} in {where}" for where, tok in dict.fromkeys(leaks))
        return "fail", f"harmony control tokens leaked as text: {shown[:300]}"
    return "pass", f"{len(ctx.texts)} texts (content and reasoning, streamed and not) carry no control token"


# ---------------------------------------------------------------- locked down


def check_api_key(ctx: _Ctx) -> Outcome:
    if not ctx.endpoint.api_key:
        return "fail", "no API key given: an unauthenticated service fails this check (pass --api-key-file)"
    none = ctx.client.request("GET", "/v1/models", key=False)
    wrong = ctx.client.request("GET", "/v1/models", key="wrong-" + "x" * 16)
    if none.status == 401 and wrong.status == 401:
        return "pass", "no key -> 401, wrong key -> 401"
    return "fail", f"no key -> {none.status}, wrong key -> {wrong.status} (both must be 401)"


def check_unauthenticated_paths(ctx: _Ctx) -> Outcome:
    # vLLM's key guards /v1 only: /invocations runs inference without one.
    r = ctx.client.request("POST", "/invocations", body=ctx.chat_body(), key=False)
    if r.status in (401, 403, 404, 405):
        return "pass", f"/invocations without a key -> {r.status}"
    if is_loopback(ctx.endpoint.url):
        return "pass", f"/invocations answers {r.status} without a key, but only on loopback (not exposed)"
    return "fail", (f"/invocations answers {r.status} without a key on the exposed address {ctx.endpoint.url}: "
                    "put the allowlisting proxy in front or bind to 127.0.0.1")


def check_metrics(ctx: _Ctx) -> Outcome:
    if ctx.opts.router:
        return _hidden_by_router(ctx, "/metrics")
    r = ctx.client.request("GET", "/metrics", key=False)
    text = r.body if isinstance(r.body, str) else ""
    series = sorted({line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("vllm:")})
    return ("pass", f"{len(series)} vllm: series") if r.ok and series else \
        ("fail", f"GET /metrics -> {r.status}, no vllm: series")


# The catalogue, in the order the checks run; ids are stable: reports and CI match on them.
CHECKS: tuple[tuple[str, Callable[[_Ctx], Outcome]], ...] = (
    ("health", check_health),
    ("version", check_version),
    ("models", check_models),
    ("chat", check_chat),
    ("chat_stream", check_chat_stream),
    ("reasoning_low", check_reasoning_low),
    ("reasoning_medium", check_reasoning_medium),
    ("reasoning_high", check_reasoning_high),
    ("reasoning_stream", check_reasoning_stream),
    ("tool_call", check_tool_call),
    ("responses", check_responses),
    ("responses_reasoning", check_responses_reasoning),
    ("harmony_markers", check_harmony_markers),
    ("api_key_enforced", check_api_key),
    ("no_unauthenticated_inference", check_unauthenticated_paths),
    ("metrics", check_metrics),
)
CHECK_IDS = tuple(cid for cid, _fn in CHECKS)


def run_smoke(endpoint: Endpoint, opts: SmokeOptions = SmokeOptions()) -> SmokeReport:
    client = Client(endpoint)
    ctx = _Ctx(client, endpoint, opts, opts.model or "unknown")
    report = SmokeReport(endpoint.url, opts.model)
    try:
        for check_id, check in CHECKS:
            t = time.perf_counter()
            status, evidence = check(ctx)
            report.checks.append(SmokeCheck(check_id, status, evidence, time.perf_counter() - t))
    finally:
        client.close()
    if ctx.model != "unknown":
        report.model = ctx.model  # the first served model when none was named
    return report
