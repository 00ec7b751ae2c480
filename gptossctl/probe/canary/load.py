"""The load generator: asyncio over aiohttp, streaming, measuring each request exactly as `vllm bench serve`
does (vllm/benchmarks/lib/endpoint_request_func.py, async_request_openai_chat_completions):

- start = perf_counter() just before the POST;
- TTFT = arrival of the first `data:` event whose `choices` is not empty, whatever its text. vLLM sends
  the role chunk (`delta: {role, content: ""}`) in the same engine step as the first token, so this is
  the first token's arrival; stamping the first chunk *with text* instead (what the canary did before)
  moves TTFT to the first token that decodes to visible text, which for a model emitting special or
  partial-UTF-8 tokens first can be the last chunk;
- ITL = gaps between successive events with choices; E2EL = last event with choices - start (the trailing
  usage chunk carries no token); TPOT = (E2EL - TTFT) / (output tokens - 1), for > 1 token;
- output tokens from the usage the server reports.

Arrivals: all at once (bounded by --concurrency), or Poisson at --rate, as vllm bench. Several targets
(the gpt-oss service and the current stack) get the same requests in the same order, started together;
each target has its own connection pool and concurrency limit. At --rate every request arrives at every
target at the same moment. Without a rate each target has its own closed loop (a request as soon as one of
its slots frees): a slower target never holds back a faster one, so each one's throughput is its own (one
loop for both waited on the slower target's slot before every request, and both showed the same rate).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gptossctl.adapters.openai_http import AsyncStreams, Endpoint, StreamFailure
from gptossctl.probe.canary.harmony import ToolCall


@dataclass(frozen=True)
class RequestSpec:
    key: str  # workflow/case, safety/case, or "random-N"
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    ignore_eos: bool = False
    # 0 for suite cases (first-pass correctness must be reproducible); None for the random workload: the
    # server's default, as vllm bench sends it (greedy and sampled decoding do not cost the same).
    temperature: float | None = 0.0


@dataclass(frozen=True)
class Target:
    label: str  # "gpt-oss" or "current"
    endpoint: Endpoint
    model: str


@dataclass
class RequestResult:
    key: str
    target: str
    start: float  # seconds since the run began
    ok: bool = False
    error: str | None = None  # error class: http_4xx, http_5xx, timeout, connection, protocol
    error_detail: str = ""
    ttft: float | None = None
    e2el: float | None = None
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2el is None or self.output_tokens <= 1:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "target": self.target, "ok": self.ok, "error": self.error, "ttft": self.ttft,
                "e2el": self.e2el, "tpot": self.tpot, "output_tokens": self.output_tokens,
                "prompt_tokens": self.prompt_tokens, "start": self.start, "finish_reason": self.finish_reason}


class _Answer:
    """Text, reasoning and tool calls accumulated from the deltas of one stream."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, list[str]] = {}  # index -> [name, arguments]

    def add(self, delta: dict[str, Any]) -> None:
        if c := delta.get("content"):
            self.content.append(c)
        if r := delta.get("reasoning") or delta.get("reasoning_content"):
            self.reasoning.append(r)
        for tc in delta.get("tool_calls") or ():
            slot = self.calls.setdefault(int(tc.get("index", 0)), ["", ""])
            fn = tc.get("function") or {}
            slot[0] += fn.get("name") or ""
            slot[1] += fn.get("arguments") or ""


async def _one(streams: AsyncStreams, target: Target, spec: RequestSpec, t0: float) -> RequestResult:
    body: dict[str, Any] = {"model": target.model, "messages": list(spec.messages), "max_tokens": spec.max_tokens,
                            "stream": True, "stream_options": {"include_usage": True}}
    if spec.temperature is not None:
        body["temperature"] = spec.temperature
    if spec.ignore_eos:
        body["ignore_eos"] = True  # vLLM's extension, as vllm bench sends it
    answer = _Answer()
    start = time.perf_counter()
    res = RequestResult(spec.key, target.label, start - t0)
    last = start
    try:
        async for ev in streams.stream("/v1/chat/completions", body):
            if ev.data is None:
                continue
            choices = ev.data.get("choices")
            if choices:
                if res.ttft is None:
                    res.ttft = ev.t - start
                else:
                    res.itl.append(ev.t - last)
                last = ev.t
                choice = choices[0]
                answer.add(choice.get("delta") or {})
                res.finish_reason = choice.get("finish_reason") or res.finish_reason
            elif usage := ev.data.get("usage"):
                res.output_tokens = int(usage.get("completion_tokens") or 0)
                res.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        res.e2el = last - start
        res.ok = res.ttft is not None
        if not res.ok:
            res.error, res.error_detail = "protocol", "the stream carried no choices"
    except StreamFailure as exc:
        res.error, res.error_detail = exc.kind, exc.detail
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a malformed event
        res.error, res.error_detail = "protocol", f"{exc.__class__.__name__}: {exc}"[:300]
    res.text = "".join(answer.content)
    res.reasoning = "".join(answer.reasoning)
    res.tool_calls = [ToolCall(n, a) for _, (n, a) in sorted(answer.calls.items())]
    return res


async def _drive(targets: Sequence[Target], specs: Sequence[RequestSpec], *, concurrency: int,
                 rate: float | None, seed: int, duration: float | None,
                 on_done: Callable[[RequestResult], None]) -> list[RequestResult]:
    rng = random.Random(seed)
    results: list[RequestResult] = []
    pools = [AsyncStreams(t.endpoint, limit=concurrency) for t in targets]
    sems = [asyncio.Semaphore(concurrency) for _ in targets]
    for pool in pools:
        await pool.__aenter__()
    try:
        t0 = time.perf_counter()

        async def run(k: int, spec: RequestSpec, *, acquired: bool) -> None:
            if not acquired:
                await sems[k].acquire()
            try:
                r = await _one(pools[k], targets[k], spec, t0)
            finally:
                sems[k].release()
            results.append(r)
            on_done(r)

        def more(i: int) -> bool:
            return i < len(specs) if duration is None else time.perf_counter() - t0 < duration

        tasks: list[asyncio.Task[None]] = []
        if rate:
            i = 0
            while more(i):
                spec = specs[i % len(specs)]
                tasks += [asyncio.create_task(run(k, spec, acquired=False)) for k in range(len(targets))]
                i += 1
                await asyncio.sleep(rng.expovariate(rate))  # Poisson arrivals, as vllm bench
        else:

            async def closed_loop(k: int) -> None:
                # A slot first, then the task (bounded tasks for a time-boxed run).
                i = 0
                while more(i):
                    await sems[k].acquire()
                    tasks.append(asyncio.create_task(run(k, specs[i % len(specs)], acquired=True)))
                    i += 1

            await asyncio.gather(*(closed_loop(k) for k in range(len(targets))))
        await asyncio.gather(*tasks)
    finally:
        for pool in pools:
            await pool.__aexit__(None, None, None)
    return results


def run_load(targets: Sequence[Target], specs: Sequence[RequestSpec], *, concurrency: int = 1,
             rate: float | None = None, seed: int = 0, duration: float | None = None,
             on_done: Callable[[RequestResult], None] = lambda _r: None) -> tuple[list[RequestResult], float]:
    """Send every request to every target, interleaved (or keep cycling through them for `duration`
    seconds); return the results and the wall duration."""
    t = time.perf_counter()
    results = asyncio.run(_drive(targets, specs, concurrency=concurrency, rate=rate, seed=seed,
                                 on_done=on_done, duration=duration))
    return results, time.perf_counter() - t
