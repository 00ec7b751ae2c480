"""Bundle speed against the standard tools, measured in the same run on the same files.

Builds a tree of SIZE GiB (many 256 KiB files plus files over 2 GiB), then times:
  verify:  `gptossctl bundle verify`   vs  `sha256sum` and `openssl dgst -sha256` over the same files
  pack:    `gptossctl bundle pack`     vs  `cp -r` of the same files
Runs of the tool and its baseline alternate, and each timing is the best of --repeat runs; `sync`
runs before each writer so one run's write-back does not land on the next. Two cache states:
  warm (default)  every file is in the page cache: measures CPU cost (hashing, copying)
  --cold          the page cache is dropped before each run (root only): what a real pack from disk
                  or a verify after carrying a disk sees. Prints ratios.

usage: python benchmarks/bench_bundle.py [--size-gib 4] [--dir bench-out] [--repeat 3] [--cold] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPTOSSCTL = [sys.executable, "-m", "gptossctl"]


def build_tree(root: Path, size_gib: float) -> int:
    root.mkdir(parents=True, exist_ok=True)
    total = int(size_gib * (1 << 30))
    small, n_small = 256 << 10, 2048  # 512 MiB of small files
    big = [int(total * 0.6), total - int(total * 0.6) - small * n_small]  # one file over 2 GiB at 4 GiB
    block = os.urandom(16 << 20)
    written = 0
    for i, size in enumerate(big):
        with open(root / f"model-{i:05d}-of-00002.safetensors", "wb") as f:
            left = size
            while left:
                n = min(left, len(block))
                f.write(block[:n])  # the same bytes repeat, which costs SHA-256 exactly the same
                left -= n
        written += size
    for i in range(n_small):
        (root / f"model-small-{i:05d}.safetensors").write_bytes(os.urandom(small))
        written += small
    # The small files every model directory has (pack refuses a model without them).
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "LICENSE", "USAGE_POLICY"):
        text = '{"architectures": ["GptOssForCausalLM"]}\n' if name.endswith(".json") else "Apache-2.0\n"
        (root / name).write_text(text)
        written += len(text)
    return written


def timed(cmd: list[str], *, env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed with {res.returncode}:\n{res.stderr[-2000:]}")
    return elapsed


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def alternate(n: int, *fns):  # type: ignore[no-untyped-def]
    """Best of n for each function, running them in turn so drift hits all of them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(n):
        for i, fn in enumerate(fns):
            times[i].append(fn())
    return [min(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--dir", type=Path, default=REPO / "bench-out")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each run (root)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    # Measure gptossctl as installed (wheels ship bytecode): compile it even if this shell sets
    # PYTHONDONTWRITEBYTECODE, which otherwise makes every run recompile its imports.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "gptossctl")], check=True,
                   stdout=subprocess.DEVNULL)
    work = args.dir.resolve()
    if work.exists():
        shutil.rmtree(work)
    src = work / "src"
    size = build_tree(src, args.size_gib)
    keys = work / "keys"
    env = {**os.environ, "GPTOSSCTL_KEY_PASSPHRASE": "bench"}
    subprocess.run([*GPTOSSCTL, "keys", "generate", "--out", str(keys), "--name", "bench"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    recipe = str(REPO / "bundles" / "tiny-demo.yaml")
    files = sorted(str(p) for p in src.iterdir())

    def prepare(inputs: list[str], output: Path | None = None) -> None:
        if output is not None:
            for p in (output, output.with_name(output.name + ".partial"), output.with_name(output.name + ".scratch")):
                shutil.rmtree(p, ignore_errors=True)
        if args.cold:
            drop_caches()
        else:
            subprocess.run(["cat", *inputs], stdout=subprocess.DEVNULL, check=True)
            subprocess.run(["sync"], check=True)

    def run_cp() -> float:
        prepare(files, work / "cp")
        return timed(["cp", "-r", str(src), str(work / "cp")])

    def run_pack() -> float:
        prepare(files, work / "bundle")
        return timed([*GPTOSSCTL, "bundle", "pack", recipe, "--out", str(work / "bundle"), "--key",
                      str(keys / "bench.key"), "--model-dir", str(src)], env=env)

    t_cp, t_pack = alternate(args.repeat, run_cp, run_pack)
    shutil.rmtree(work / "cp", ignore_errors=True)
    bundle = work / "bundle"
    payload = sorted(str(p) for p in (bundle / "payload").rglob("*") if p.is_file())

    def hasher(cmd: list[str]):  # type: ignore[no-untyped-def]
        def go() -> float:
            prepare(payload)
            return timed(cmd)
        return go

    t_sha, t_ossl, t_verify = alternate(
        args.repeat, hasher(["sha256sum", *payload]), hasher(["openssl", "dgst", "-sha256", *payload]),
        hasher([*GPTOSSCTL, "bundle", "verify", str(bundle), "--trust", str(keys / "bench.pub")]))
    gb = size / 1e9
    cores = len(os.sched_getaffinity(0))
    cache = "cold page cache (dropped before each run)" if args.cold else "warm page cache"
    print(f"tree: {size / 2**30:.2f} GiB in {len(files)} files, {cores} cores, {cache}, best of {args.repeat}")
    print(f"{'tool':<34}{'seconds':>9}{'GB/s':>8}")
    for name, t in [("sha256sum (1 process)", t_sha), ("openssl dgst -sha256 (1 process)", t_ossl),
                    ("gptossctl bundle verify", t_verify), ("cp -r", t_cp), ("gptossctl bundle pack", t_pack)]:
        print(f"{name:<34}{t:>9.2f}{gb / t:>8.2f}")
    print(f"verify throughput vs openssl dgst: {t_ossl / t_verify:.2f}x  (target >= 1.8x on 2 cores)")
    print(f"verify throughput vs sha256sum:    {t_sha / t_verify:.2f}x")
    print(f"pack time vs cp -r:                {t_pack / t_cp:.2f}x  (target <= 1.2x)")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
