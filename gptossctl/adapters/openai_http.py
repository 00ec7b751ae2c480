"""HTTP to a vLLM OpenAI-compatible server (httpx): plain requests and SSE streams with arrival times.

Returns our own values (Reply, StreamEvent), never httpx types. The API key travels only in the
Authorization header; it is never logged and never part of a repr.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from gptossctl.errors import ServiceUnavailable, UsageError
from gptossctl.fsutil import read_text


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # parsed JSON, or the text when the body is not JSON
    elapsed: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class StreamEvent:
    t: float  # perf_counter at arrival
    data: dict[str, Any] | None  # None for [DONE]


@dataclass(frozen=True)
class Endpoint:
    url: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0

    def headers(self, *, key: str | None | bool = True) -> dict[str, str]:
        """key=True: the configured key; False: none; a string: that key (to test refusals)."""
        value = self.api_key if key is True else (key or None)
        return {"Authorization": f"Bearer {value}"} if value else {}


def read_api_key(path: Path) -> str:
    """A key file holds the key alone, or an env file with VLLM_API_KEY=... (what install writes)."""
    text = read_text(path, what="API key file", code="probe.key_unreadable", limit=64 << 10)
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("VLLM_API_KEY="):
            return line.split("=", 1)[1].strip().strip('"')
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not first or "=" in first:
        raise UsageError(f"{path} holds no API key", code="probe.key_missing",
                         hint="the file holds the key alone, or a line VLLM_API_KEY=...")
    return first


class Client:
    """Synchronous calls for smoke tests: short timeouts, one clear error for an unreachable server."""

    def __init__(self, endpoint: Endpoint) -> None:
        import httpx

        self.endpoint = endpoint
        self._http = httpx.Client(base_url=endpoint.url.rstrip("/"), timeout=endpoint.timeout)
        self._httpx = httpx

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, body: Any = None, key: str | None | bool = True) -> Reply:
        t = time.perf_counter()
        try:
            r = self._http.request(method, path, json=body, headers=self.endpoint.headers(key=key))
        except (self._httpx.HTTPError, self._httpx.InvalidURL) as exc:
            raise ServiceUnavailable(f"cannot reach {self.endpoint.url}{path}: {exc.__class__.__name__}",
                                     code="probe.unreachable",
                                     hint="is the service running? systemctl status gptoss@INSTANCE") from None
        try:
            parsed: Any = r.json()
        except ValueError:
            parsed = r.text
        return Reply(r.status_code, parsed, time.perf_counter() - t)

    def stream(self, path: str, body: dict[str, Any]) -> tuple[int, list[StreamEvent]]:
        events: list[StreamEvent] = []
        try:
            with self._http.stream("POST", path, json=body, headers=self.endpoint.headers()) as r:
                if r.status_code != 200:
                    r.read()
                    return r.status_code, events
                for line in r.iter_lines():
                    ev = parse_sse_line(line, time.perf_counter())
                    if ev is not None:
                        events.append(ev)
        except (self._httpx.HTTPError, self._httpx.InvalidURL) as exc:
            raise ServiceUnavailable(f"stream from {self.endpoint.url}{path} failed: {exc.__class__.__name__}",
                                     code="probe.unreachable",
                                     hint="is the service running? systemctl status gptoss@INSTANCE") from None
        return 200, events


def parse_sse_line(line: str, t: float) -> StreamEvent | None:
    """One `data: ...` line of an OpenAI stream; other lines (comments, blank) are ignored."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == "[DONE]":
        return StreamEvent(t, None)
    try:
        data = json.loads(payload)
    except json.JSONDecodeError:
        return None
    return StreamEvent(t, data) if isinstance(data, dict) else None


class StreamFailure(Exception):
    """A streamed request that did not complete, by class: http_4xx, http_5xx, timeout, connection, protocol."""

    def __init__(self, kind: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status


class AsyncStreams:
    """Streamed POSTs for the load generator, over aiohttp: the client library `vllm bench serve` uses, so
    both see the same connection behaviour, and about 15x cheaper per request than httpx's async client on
    the same machine (benchmarks/canary_overhead.py). One pool of `limit` kept-alive connections per
    endpoint; use as `async with AsyncStreams(endpoint, limit=N) as s: async for ev in s.stream(...)`."""

    def __init__(self, endpoint: Endpoint, *, limit: int) -> None:
        self.endpoint = endpoint
        self._limit = limit
        self._session: Any = None
        self._headers = {"Content-Type": "application/json", **endpoint.headers()}

    async def __aenter__(self) -> Self:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit, keepalive_timeout=60,
                                         force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=self.endpoint.timeout)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[StreamEvent]:
        """Yield each `data:` event of the response, stamped with the arrival of the bytes that completed it
        (as vllm bench stamps chunks on receipt). Raises StreamFailure, never an aiohttp type."""
        import aiohttp

        try:
            async with self._session.post(self.endpoint.url.rstrip("/") + path, data=json.dumps(body),
                                          headers=self._headers) as r:
                if r.status != 200:
                    text = (await r.read())[:300].decode("utf-8", "replace")
                    raise StreamFailure("http_4xx" if r.status < 500 else "http_5xx", f"HTTP {r.status}: {text}",
                                        r.status)
                buf = b""
                async for data in r.content.iter_any():
                    t = time.perf_counter()
                    buf += data
                    while True:
                        cut = buf.find(b"\n")
                        if cut < 0:
                            break
                        raw, buf = buf[:cut], buf[cut + 1:]
                        ev = parse_sse_bytes(raw, t)
                        if ev is not None:
                            yield ev
        except StreamFailure:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise StreamFailure("timeout", exc.__class__.__name__) from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise StreamFailure("connection", f"{exc.__class__.__name__}: {exc}"[:300]) from None
        except aiohttp.ClientError as exc:
            raise StreamFailure("protocol", f"{exc.__class__.__name__}: {exc}"[:300]) from None


def parse_sse_bytes(raw: bytes, t: float) -> StreamEvent | None:
    """parse_sse_line on bytes, decoding only lines that carry data (the hot path of the load generator)."""
    if not raw.startswith(b"data:"):
        return None
    return parse_sse_line(raw.decode("utf-8", "replace").rstrip("\r"), t)


def iter_text_deltas(events: list[StreamEvent]) -> Iterator[tuple[float, str]]:
    """(arrival, text) for every chunk that carries content or reasoning, as vllm bench counts them."""
    for ev in events:
        if ev.data is None:
            continue
        for choice in ev.data.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("reasoning") or delta.get("reasoning_content") or \
                choice.get("text") or ""
            if text:
                yield ev.t, text


def health(url: str, *, timeout: float = 5.0) -> int | str:
    """GET {url}/health: the HTTP status, or the name of the error when nothing answered."""
    import httpx

    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=timeout).status_code
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return type(exc).__name__


def key_enforced(url: str, api_key: str, *, timeout: float = 10.0) -> tuple[int, int] | str:
    """GET /v1/models without and with the key: (status without, status with), or the error's name."""
    import httpx

    try:
        anon = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=timeout).status_code
        keyed = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=timeout,
                          headers={"Authorization": f"Bearer {api_key}"}).status_code
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return type(exc).__name__
    return anon, keyed
