"""The load generator: asyncio over httpx, streaming, measuring each request like `vllm bench serve`.

TTFT = first chunk carrying text - request start; E2EL = last chunk - start; ITL = gaps between
chunks (one chunk may carry several tokens with --stream-interval); TPOT = (E2EL - TTFT) /
(output tokens - 1), requests with <= 1 output token excluded; output tokens from the usage the
server reports. Arrivals: all at once, or Poisson at --rate as vllm bench does.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gptossctl.adapters.openai_http import Endpoint, HttpStatusError, astream


@dataclass(frozen=True)
class RequestSpec:
    key: str  # case id, or "random-N"
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    ignore_eos: bool = False


@dataclass
class RequestResult:
    key: str
    start: float
    ok: bool = False
    error: str | None = None  # error class: http_4xx, http_5xx, timeout, connection, protocol
    ttft: float | None = None
    e2el: float | None = None
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    text: str = ""

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2el is None or self.output_tokens <= 1:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "ok": self.ok, "error": self.error, "ttft": self.ttft, "e2el": self.e2el,
                "tpot": self.tpot, "output_tokens": self.output_tokens, "prompt_tokens": self.prompt_tokens,
                "start": self.start}


def _classify(exc: BaseException) -> str:
    import httpx

    if isinstance(exc, HttpStatusError):
        return "http_4xx" if exc.status < 500 else "http_5xx"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.TransportError):
        return "connection"
    return "protocol"


async def _one(http: Any, endpoint: Endpoint, model: str, spec: RequestSpec, t0: float) -> RequestResult:
    body: dict[str, Any] = {"model": model, "messages": list(spec.messages), "max_tokens": spec.max_tokens,
                            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if spec.ignore_eos:
        body["ignore_eos"] = True  # vLLM's extension, as vllm bench sends it
    start = time.perf_counter()
    res = RequestResult(spec.key, start - t0)
    last = start
    parts: list[str] = []
    try:
        async for ev in astream(http, endpoint, "/v1/chat/completions", body):
            if ev.data is None:
                continue
            usage = ev.data.get("usage")
            if usage:
                res.output_tokens = int(usage.get("completion_tokens") or 0)
                res.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            for choice in ev.data.get("choices") or []:
                delta = choice.get("delta") or {}
                text = delta.get("content") or delta.get("reasoning") or delta.get("reasoning_content") or ""
                if not text:
                    continue
                if res.ttft is None:
                    res.ttft = ev.t - start
                else:
                    res.itl.append(ev.t - last)
                last = ev.t
                if delta.get("content"):
                    parts.append(delta["content"])
        res.e2el = last - start
        res.text = "".join(parts)
        res.ok = res.ttft is not None
        if not res.ok:
            res.error = "protocol"
    except Exception as exc:  # noqa: BLE001 - every failure is counted by class, never raised
        res.error = _classify(exc)
    return res


async def _drive(endpoint: Endpoint, model: str, specs: Sequence[RequestSpec], *, concurrency: int,
                 rate: float | None, seed: int, on_done: Callable[[RequestResult], None],
                 duration: float | None = None) -> list[RequestResult]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(endpoint.timeout, connect=10.0)
    sem = asyncio.Semaphore(concurrency)
    rng = random.Random(seed)
    results: list[RequestResult] = []
    async with httpx.AsyncClient(base_url=endpoint.url.rstrip("/"), limits=limits, timeout=timeout) as http:
        t0 = time.perf_counter()

        async def run(spec: RequestSpec) -> None:
            async with sem:
                r = await _one(http, endpoint, model, spec, t0)
            results.append(r)
            on_done(r)

        tasks = []
        i = 0
        while True:
            if duration is None:
                if i >= len(specs):
                    break
            elif time.perf_counter() - t0 >= duration:
                break
            elif sem.locked() and not rate:
                # Time-boxed run: keep `concurrency` requests in flight, cycling through the workload,
                # without queueing an unbounded number of tasks.
                await asyncio.sleep(0.001)
                continue
            tasks.append(asyncio.create_task(run(specs[i % len(specs)])))
            i += 1
            if rate:
                await asyncio.sleep(rng.expovariate(rate))  # Poisson arrivals, as vllm bench
            else:
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
    return results


def run_load(endpoint: Endpoint, model: str, specs: Sequence[RequestSpec], *, concurrency: int = 1,
             rate: float | None = None, seed: int = 0, duration: float | None = None,
             on_done: Callable[[RequestResult], None] = lambda _r: None) -> tuple[list[RequestResult], float]:
    """Send every request (or keep cycling through them for `duration` seconds); return the results
    and the wall duration."""
    t = time.perf_counter()
    results = asyncio.run(_drive(endpoint, model, specs, concurrency=concurrency, rate=rate, seed=seed,
                                 on_done=on_done, duration=duration))
    return results, time.perf_counter() - t
