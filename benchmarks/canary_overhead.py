"""Is the canary's load generator ever the bottleneck? Against a trivial local streaming server (a separate
process that answers every chat request at once with 16 SSE chunks and usage), drive the same number of
requests at the same concurrency with the canary's load generator and with `vllm bench serve`, alternating
round by round, and report each one's sustained request rate and the ratio canary / vllm bench (>= 1: the
canary keeps up). The server adds ~no latency, so each client's TTFT and E2EL are its own overhead.

Both clients and the server share this machine's cores (and other work on it): alternation makes the
ratio fair, not the absolute numbers portable.

usage: python benchmarks/canary_overhead.py [--concurrency 1 32 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
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
    s = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with s:
        await s.serve_forever()
asyncio.run(main())
'''
_BENCH = ("import sys; from vllm.benchmarks.serve import add_cli_args, main; "
          "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
          "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")


def _tokenizer(out: Path) -> Path:
    """A small local tokenizer: vllm bench's random dataset draws prompt token ids from one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["the canary measures the service like vllm bench does"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>").save_pretrained(out)
    return out


def canary_round(port: int, requests: int, concurrency: int, chunks: int) -> dict[str, float]:
    from gptossctl.adapters.openai_http import Endpoint
    from gptossctl.probe.canary.load import RequestSpec, Target, run_load
    from gptossctl.probe.canary.stats import summary

    spec = RequestSpec("x", ({"role": "user", "content": "hi"},), chunks)
    results, wall = run_load([Target("gpt-oss", Endpoint(f"http://127.0.0.1:{port}", "k"), "m")], [spec] * requests,
                             concurrency=concurrency)
    ok = [r for r in results if r.ok]
    assert len(ok) == requests, {r.error for r in results}
    return {"requests_per_s": len(ok) / wall, "ttft_ms_p50": summary([r.ttft for r in ok if r.ttft])["p50"],
            "e2el_ms_p50": summary([r.e2el for r in ok if r.e2el])["p50"]}


def vllm_round(port: int, requests: int, concurrency: int, chunks: int, work: Path, tokenizer: Path) -> dict[str, float]:
    vpy = REPO / ".venv-vllm" / "bin" / "python"
    env = {**os.environ, "OPENAI_API_KEY": "k", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([str(vpy), "-c", _BENCH, "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
                    "--base-url", f"http://127.0.0.1:{port}", "--model", "m", "--tokenizer", str(tokenizer),
                    "--dataset-name", "random", "--random-input-len", "8", "--random-output-len", str(chunks),
                    "--num-prompts", str(requests), "--max-concurrency", str(concurrency), "--request-rate", "inf",
                    "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl,e2el", "--save-result", "--result-dir", str(work),
                    "--result-filename", "vb.json",
                    "--seed", "0"], check=True, env=env, capture_output=True, text=True)
    vb = json.loads((work / "vb.json").read_text())
    return {"requests_per_s": float(vb["request_throughput"]), "ttft_ms_p50": float(vb["median_ttft_ms"]),
            "e2el_ms_p50": float(vb["median_e2el_ms"])}


def measure(concurrency: int, requests: int, rounds: int, chunks: int, work: Path, tokenizer: Path) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(chunks)])
    try:
        time.sleep(1.0)
        runs: dict[str, list[dict[str, float]]] = {"canary": [], "vllm_bench": []}
        for i in range(rounds):
            for tool in (("canary", "vllm_bench") if i % 2 == 0 else ("vllm_bench", "canary")):
                runs[tool].append(canary_round(port, requests, concurrency, chunks) if tool == "canary"
                                  else vllm_round(port, requests, concurrency, chunks, work, tokenizer))
    finally:
        proc.terminate()
        proc.wait()
    med = {tool: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for tool, rs in runs.items()}
    return {"concurrency": concurrency, "requests": requests, **med,
            "ratio_requests_per_s": med["canary"]["requests_per_s"] / med["vllm_bench"]["requests_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=16)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tok = _tokenizer(Path(tmp) / "tok")
        for c in a.concurrency:
            r = measure(c, 500 if c == 1 else 3000, a.rounds, a.chunks, Path(tmp), tok)
            print(json.dumps(r, indent=1), flush=True)
            print(f"concurrency {c}: canary {r['canary']['requests_per_s']:.0f} req/s, vllm bench "
                  f"{r['vllm_bench']['requests_per_s']:.0f} req/s, ratio {r['ratio_requests_per_s']:.2f}", flush=True)


if __name__ == "__main__":
    main()
