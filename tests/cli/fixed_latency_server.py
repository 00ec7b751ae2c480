"""A tiny OpenAI-compatible streaming server that answers every chat request after a fixed sleep, for the
canary's statistics tests (tests/cli/test_canary_statistics.py). Run as a subprocess so that its timing does
not share the test process's GIL:

    python fixed_latency_server.py PORT_FILE LATENCY_S [TOKENS]

It writes its port to PORT_FILE once listening. GET /v1/models names the model "fixed"; GET /metrics is
404 (not a vLLM: the canary reports the server's metrics as absent); POST /v1/chat/completions sleeps
LATENCY_S, then streams the role chunk, TOKENS content chunks (" Paris" first), the finish chunk, the usage
and [DONE].
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _stream(tokens: int) -> bytes:
    parts = [_sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
    parts += [_sse({"choices": [{"index": 0, "delta": {"content": " Paris" if i == 0 else " ok"}}]})
              for i in range(tokens)]
    parts.append(_sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    parts.append(_sse({"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": tokens}}))
    return b"".join(parts) + b"data: [DONE]\n\n"


def _reply(status: str, ctype: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body


async def main(port_file: Path, latency: float, tokens: int) -> None:
    stream = _stream(tokens)
    models = json.dumps({"object": "list", "data": [{"id": "fixed", "object": "model"}]}).encode()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await r.readline()
                if not line:
                    return
                method, path = line.split()[:2]
                length = 0
                while True:
                    h = await r.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":")[1])
                await r.readexactly(length)
                if method == b"POST" and path.endswith(b"/chat/completions"):
                    await asyncio.sleep(latency)
                    w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                            + b"%x\r\n" % len(stream) + stream + b"\r\n0\r\n\r\n")
                elif path.endswith(b"/v1/models"):
                    w.write(_reply("200 OK", "application/json", models))
                else:
                    w.write(_reply("404 Not Found", "text/plain", b"not found"))
                await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(server.sockets[0].getsockname()[1]))
    tmp.rename(port_file)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 8))
