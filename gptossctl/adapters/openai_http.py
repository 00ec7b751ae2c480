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
from urllib.parse import urlsplit

from gptossctl.errors import CheckFailed, ServiceUnavailable, UsageError
from gptossctl.fsutil import parse_json, read_text

MAX_URL = 2048  # a base URL is a scheme, a host, a port and perhaps a prefix: far below this
MAX_BODY = 32 << 20  # the largest answer a check reads (a long completion is kilobytes)
MAX_KEY = 4096


def redact_url(url: str) -> str:
    """The URL with any user:password@ replaced by ***@ (for messages: credentials never reach a log)."""
    start = url.find("//") + 2 if "//" in url else 0
    end = min((i for i in (url.find(c, start) for c in "/?#") if i >= 0), default=len(url))
    at = url.rfind("@", start, end)
    return url if at < 0 else url[:start] + "***" + url[at:]


def check_service_url(url: str, *, option: str = "--url") -> str:
    """An http(s) base URL that every HTTP client handles the same way, or a refusal (exit 2, usage.bad_url).

    Printable ASCII only (a newline, a space or a full-width digit is refused, not handed to an IDNA codec), at
    most MAX_URL characters, a host, a valid port, no credentials (the key travels in --api-key-file) and no
    query or fragment (paths are appended to the base).
    """
    shown = repr(redact_url(url[:120]) + ("..." if len(url) > 120 else ""))
    hint = "give the service's base URL, such as http://127.0.0.1:8000"

    def bad(why: str, how: str = hint) -> UsageError:
        return UsageError(f"{option} {shown} {why}", code="usage.bad_url", hint=how)

    if len(url) > MAX_URL:
        raise bad(f"is {len(url)} characters long, more than the {MAX_URL} a base URL can be")
    odd = next((i for i, c in enumerate(url) if not 0x21 <= ord(c) <= 0x7E), None)
    if odd is not None:
        raise bad(f"has a space, control or non-ASCII character at position {odd}",
                  "type the URL in plain ASCII: an IP address, or the host name in its ASCII (xn--) form")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad("is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise bad("carries credentials (user:password@)",
                  "remove them from the URL; the API key goes in a file given with --api-key-file")
    if "?" in url or "#" in url:
        raise bad("has a query or fragment", "give the base URL only: the paths (/v1/...) are appended to it")
    if port == 0:
        raise bad("has port 0")
    return url


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

    def __post_init__(self) -> None:
        check_service_url(self.url)

    def headers(self, *, key: str | None | bool = True) -> dict[str, str]:
        """key=True: the configured key; False: none; a string: that key (to test refusals)."""
        value = self.api_key if key is True else (key or None)
        return {"Authorization": f"Bearer {value}"} if value else {}


def read_api_key(path: Path) -> str:
    """A key file holds the key alone, or an env file with VLLM_API_KEY=... (what install writes)."""
    text = read_text(path, what="API key", code="probe.key_unreadable", limit=64 << 10)
    key = next((line.strip().split("=", 1)[1].strip().strip('"') for line in text.splitlines()
                if line.strip().startswith("VLLM_API_KEY=")), None)
    if key is None:
        first = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not first or "=" in first:
            raise UsageError(f"{path} holds no API key", code="probe.key_missing",
                             hint="the file holds the key alone, or a line VLLM_API_KEY=...")
        key = first
    # The key travels in an HTTP header: printable ASCII without spaces, as every server compares it.
    if not key or len(key) > MAX_KEY or any(not 0x21 <= ord(c) <= 0x7E for c in key):
        raise UsageError(f"the API key in {path} is not {MAX_KEY} or fewer printable ASCII characters without "
                         "spaces", code="probe.key_invalid",
                         hint="check that this is the key file the service was installed with")
    return key


def bad_response(where: str, why: str) -> CheckFailed:
    return CheckFailed(f"{where} answered with {why}", code="probe.bad_response",
                       hint="the server at this URL is not a working OpenAI-compatible server: check the URL, "
                            "and the service's journal (journalctl -u gptoss@INSTANCE-r0)")


def parse_server_json(data: bytes, *, where: str) -> Any:
    """The one reader for JSON a server sent: bounded depth, NaN/Infinity and duplicate keys refused."""
    try:
        return parse_json(data.decode("utf-8"), where=where, what="the answer of")
    except UnicodeDecodeError:
        raise bad_response(where, "bytes that are not UTF-8") from None
    except UsageError as exc:
        raise bad_response(where, f"JSON it may not send: {exc.message[:200]}") from None


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
        """One request; the answer read to at most MAX_BODY bytes, its JSON through parse_server_json."""
        t = time.perf_counter()
        where = f"{method} {redact_url(self.endpoint.url)}{path}"
        try:
            with self._http.stream(method, path, json=body, headers=self.endpoint.headers(key=key)) as r:
                chunks, total = [], 0
                for chunk in r.iter_bytes():
                    total += len(chunk)
                    if total > MAX_BODY:
                        raise bad_response(where, f"more than {MAX_BODY >> 20} MiB")
                    chunks.append(chunk)
                status, ctype = r.status_code, r.headers.get("content-type", "")
        except (self._httpx.HTTPError, self._httpx.InvalidURL) as exc:
            raise ServiceUnavailable(f"cannot reach {redact_url(self.endpoint.url)}{path}: "
                                     f"{exc.__class__.__name__}", code="probe.unreachable",
                                     hint="is the service running? systemctl status gptoss-router@INSTANCE") from None
        data = b"".join(chunks)
        parsed: Any = data.decode("utf-8", "replace")
        if "json" in ctype.lower() and data.strip():
            parsed = parse_server_json(data, where=where)
        return Reply(status, parsed, time.perf_counter() - t)

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
            raise ServiceUnavailable(f"stream from {redact_url(self.endpoint.url)}{path} failed: "
                                     f"{exc.__class__.__name__}",
                                     code="probe.unreachable",
                                     hint="is the service running? systemctl status gptoss-router@INSTANCE") from None
        return 200, events


def parse_sse_line(line: str, t: float) -> StreamEvent | None:
    """One `data: ...` line of an OpenAI stream; other lines (comments, blank) are ignored."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == "[DONE]":
        return StreamEvent(t, None)
    try:
        data = parse_json(payload, where="a stream event", what="the answer of")
    except UsageError:
        return None  # not JSON we read (deep, NaN, duplicate keys): as a line that is not an event
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
        choices = ev.data.get("choices") if ev.data is not None else None
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            raw = choice.get("delta")
            delta: dict[str, Any] = raw if isinstance(raw, dict) else {}
            text = delta.get("content") or delta.get("reasoning") or delta.get("reasoning_content") or \
                choice.get("text") or ""
            if isinstance(text, str) and text:
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
