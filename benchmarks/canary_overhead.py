"""How fast is the canary's load generator itself? Against a trivial local streaming server (a separate
process that answers every chat request at once with 16 SSE chunks and usage), report the requests per
second the generator sustains on this machine and the latency it adds (the server adds ~none, so the
measured TTFT and E2EL are the client's own overhead). It must not be the bottleneck of a canary.

usage: python benchmarks/canary_overhead.py [--requests 2000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER = r'''
import asyncio, json, sys
CHUNKS = int(sys.argv[2])
def chunk(i):
    d = {"choices": [{"index": 0, "delta": {"content": f" tok{i}"}}]}
    return b"data: " + json.dumps(d).encode() + b"\n\n"
BODY = b"".join(chunk(i) for i in range(CHUNKS)) + b"data: " + json.dumps(
    {"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": CHUNKS}}).encode() + b"\n\ndata: [DONE]\n\n"
HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
async def handle(r, w):
    try:
        while True:
            line = await r.readline()
            if not line:
                return
            length = 0
            while line not in (b"\r\n", b"\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                line = await r.readline()
            await r.readexactly(length)
            w.write(HEAD + b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n")
            await w.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
async def main():
    s = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with s:
        await s.serve_forever()
asyncio.run(main())
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--chunks", type=int, default=16)
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from gptossctl.adapters.openai_http import Endpoint
    from gptossctl.probe.canary.load import RequestSpec, run_load
    from gptossctl.probe.canary.stats import summary

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(a.chunks)])
    try:
        time.sleep(1.0)
        spec = RequestSpec("x", ({"role": "user", "content": "hi"},), a.chunks)
        results, wall = run_load(Endpoint(f"http://127.0.0.1:{port}", "k"), "m", [spec] * a.requests,
                                 concurrency=a.concurrency)
    finally:
        proc.terminate()
        proc.wait()
    ok = [r for r in results if r.ok]
    ttft, e2el = summary([r.ttft for r in ok]), summary([r.e2el for r in ok])
    print(json.dumps({"requests": a.requests, "ok": len(ok), "concurrency": a.concurrency, "chunks": a.chunks,
                      "requests_per_s": round(len(ok) / wall, 1),
                      "chunks_per_s": round(len(ok) * a.chunks / wall, 1),
                      "added_ttft_ms_p50": round(ttft["p50"], 2), "added_ttft_ms_p95": round(ttft["p95"], 2),
                      "added_e2el_ms_p50": round(e2el["p50"], 2)}, indent=1))


if __name__ == "__main__":
    main()
