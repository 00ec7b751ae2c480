"""Carrying speed against the standard tools, measured in the same run on the same bytes.

Builds a model tree of SIZE GiB (two files over 1 GiB and 2048 files of 256 KiB, as bench_bundle.py), a
wheelhouse (a vLLM stand-in and a 64 MiB dependency wheel), packs it, then times, alternating each
tool with its baseline and keeping the best of --repeat runs (warm page cache):
  split:  `gptossctl bundle split --part-size fat32`   vs  `cat` of the payload into one file
  join:   `gptossctl bundle join`                      vs  `cat` of the parts into one file
  copy:   `gptossctl bundle copy`                      vs  `cp -r` of the bundle
  verify: `gptossctl bundle verify`                    vs  one `openssl dgst -sha256` (one core), sha256sum
split, join and copy verify every piece and flush it to disk (fdatasync) before journaling it, so a
pulled disk never leaves a destination that looks complete: their fair baseline ends with `sync` too
(cp and cat alone leave the bytes in the page cache). Both ratios are printed, and the CPU seconds
(user + system, children included) of each, which is what the ratio would be on a disk faster than
the CPU. Then delta sizes against the full bundle: a dependency-wheel-only upgrade and one changed
shard. Other processes on the host share the cores: the ratios, not the seconds, carry over.

usage: python benchmarks/bench_carry.py [--size-gib 4] [--dir bench-carry] [--repeat 2] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.bench_bundle import build_tree  # noqa: E402 - the same tree as the verify benchmark (run as a script)

GPTOSSCTL = [str(Path(sys.executable).with_name("gptossctl"))]
ENV = {**os.environ, "GPTOSSCTL_KEY_PASSPHRASE": "bench"}


def timed(cmd: list[str], *, into: Path | None = None, sync: bool = False) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system of the children) of one command (stdout into a file,
    then `sync`, if asked)."""
    before = os.times()
    t = time.perf_counter()
    with open(into or os.devnull, "wb") as out:
        res = subprocess.run(cmd, env=ENV, stdout=out, stderr=subprocess.PIPE, text=True, check=False)
    if sync and res.returncode == 0:
        subprocess.run(["sync"], check=True)
    wall = time.perf_counter() - t
    after = os.times()
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed with {res.returncode}:\n{res.stderr[-2000:]}")
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def alternate(n: int, *fns: Callable[[], tuple[float, float]]) -> list[tuple[float, float]]:
    """Best of n (wall, and the CPU of that run) for each function, run in turn so drift hits all alike."""
    runs: list[list[tuple[float, float]]] = [[] for _ in fns]
    for _ in range(n):
        for i, fn in enumerate(fns):
            runs[i].append(fn())
    return [min(r) for r in runs]


def wheel(work: Path, house: Path, name: str, version: str, *, payload: int = 0, requires: tuple[str, ...] = (),
          license: str = "MIT") -> None:
    """A real wheel built by pip (hatchling, offline), with `payload` random bytes of package data."""
    proj = work / f"{name}-{version}"
    mod = name.replace("-", "_")
    (proj / mod).mkdir(parents=True)
    (proj / mod / "__init__.py").write_text(f'__version__ = "{version}"\n')
    if payload:
        (proj / mod / "data.bin").write_bytes(os.urandom(payload))
    reqs = ", ".join(f'"{r}"' for r in requires)
    (proj / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\nlicense = "{license}"\ndependencies = [{reqs}]\n'
        f'[tool.hatch.build.targets.wheel]\npackages = ["{mod}"]\n')
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(house), str(proj)], check=True,
                   env={**os.environ, "PIP_CONFIG_FILE": os.devnull})


def wheelhouses(work: Path) -> tuple[Path, Path, Path]:
    """Old and new wheelhouses (the new one upgrades a 64 MiB dependency) and the kernel wheels."""
    old, kernels = work / "house-old", work / "kernels"
    wheel(work / "p", old, "vllm", "0.33.0", license="Apache-2.0",
          requires=("flashinfer-python==0.7.2.post1", "bigdep>=1.0"))
    wheel(work / "p", old, "flashinfer-python", "0.7.2.post1", license="Apache-2.0")
    wheel(work / "p", old, "bigdep", "1.0", payload=64 << 20)
    wheel(work / "p", kernels, "flashinfer-cubin", "0.7.2.post1", license="Apache-2.0")
    wheel(work / "p", kernels, "flashinfer-jit-cache", "0.7.2.post1", license="Apache-2.0")
    new = work / "house-new"
    shutil.copytree(old, new)
    for w in new.glob("bigdep-*.whl"):
        w.unlink()
    wheel(work / "p2", new, "bigdep", "1.1", payload=64 << 20)
    return old, new, kernels


def recipe(work: Path, name: str, house: Path, kernels: Path) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(json.dumps({  # JSON is YAML
        "schema": "gptossctl.bundle-spec/1", "name": "bench", "expires_in": "30d",
        "model": {"name": "bench/model", "repo": "bench/model", "revision": "main"},
        "vllm": {"version": "0.33.0"}, "wheels": {"include_gptossctl": False, "include_uv": False, "dir": str(house)},
        "kernels": {"dir": str(kernels)}}))
    return path


def pack(work: Path, recipe_path: Path, model: Path, out: Path, version: int) -> None:
    timed([*GPTOSSCTL, "bundle", "pack", str(recipe_path), "--out", str(out), "--key", str(work / "keys/bench.key"),
           "--model-dir", str(model), "--version", str(version)])


def payload_files(bundle: Path) -> list[str]:
    return sorted(str(p) for p in (bundle / "payload").rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--dir", type=Path, default=REPO / "bench-carry")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "gptossctl")], check=True,
                   stdout=subprocess.DEVNULL)
    work = args.dir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        run_all(work, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run_all(work: Path, args: argparse.Namespace) -> None:
    model = work / "model"
    build_tree(model, args.size_gib)
    subprocess.run([*GPTOSSCTL, "keys", "generate", "--out", str(work / "keys"), "--name", "bench"], env=ENV,
                   check=True, stdout=subprocess.DEVNULL)
    old_house, new_house, kernels = wheelhouses(work)
    bundle = work / "b1"
    pack(work, recipe(work, "old", old_house, kernels), model, bundle, 1)
    size = sum(os.path.getsize(p) for p in payload_files(bundle))
    results = speed(work, bundle, args.repeat)
    deltas = delta_sizes(work, bundle, model, new_house, kernels, size)
    report(size, args, results, deltas)


def speed(work: Path, bundle: Path, repeat: int) -> dict[str, tuple[float, float]]:
    files = payload_files(bundle)
    parts, joined, copied = work / "parts", work / "joined", work / "copied"
    flat, cp_dst = work / "cat.out", work / "cp"

    def clean(*paths: Path) -> None:
        for p in paths:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            shutil.rmtree(p.with_name(p.name + ".partial"), ignore_errors=True)
        subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)  # warm
        subprocess.run(["sync"], check=True)

    def step(cmd: list[str], *outs: Path, into: Path | None = None,
             sync: bool = False) -> Callable[[], tuple[float, float]]:
        def go() -> tuple[float, float]:
            clean(*outs, *([into] if into else []))
            return timed(cmd, into=into, sync=sync)
        return go

    r: dict[str, tuple[float, float]] = {}
    r["split"], r["cat"], r["cat+sync"] = alternate(
        repeat, step([*GPTOSSCTL, "bundle", "split", str(bundle), "--out", str(parts)], parts),
        step(["cat", *files], into=flat), step(["cat", *files], into=flat, sync=True))
    step([*GPTOSSCTL, "bundle", "split", str(bundle), "--out", str(parts)], parts)()
    pfiles = [str(p) for p in sorted(parts.glob("*.part"))]
    r["join"], r["cat parts"], r["cat parts+sync"] = alternate(
        repeat, step([*GPTOSSCTL, "bundle", "join", str(parts), "--out", str(joined)], joined),
        step(["cat", *pfiles], into=flat), step(["cat", *pfiles], into=flat, sync=True))
    clean(joined, flat)
    r["copy"], r["cp -r"], r["cp -r+sync"] = alternate(
        repeat, step([*GPTOSSCTL, "bundle", "copy", str(bundle), str(copied)], copied),
        step(["cp", "-r", str(bundle), str(cp_dst)], cp_dst), step(["cp", "-r", str(bundle), str(cp_dst)], cp_dst,
                                                                   sync=True))
    clean(copied, cp_dst)
    r["verify"], r["openssl"], r["sha256sum"] = alternate(
        repeat, step([*GPTOSSCTL, "bundle", "verify", str(bundle), "--trust", str(work / "keys/bench.pub")]),
        step(["openssl", "dgst", "-sha256", *files]), step(["sha256sum", *files]))
    clean(parts)
    return r


def delta_sizes(work: Path, bundle: Path, model: Path, new_house: Path, kernels: Path, size: int) -> dict[str, int]:
    out: dict[str, int] = {}
    wheels_new = work / "b2-wheels"
    pack(work, recipe(work, "new", new_house, kernels), model, wheels_new, 2)
    out["wheels"] = delta(work, bundle, wheels_new)
    shutil.rmtree(wheels_new)
    # One changed shard: the largest file with one byte flipped (the rest hard-linked, not copied).
    model2 = work / "model2"
    model2.mkdir()
    big = max(model.iterdir(), key=lambda p: p.stat().st_size)
    for p in model.iterdir():
        if p != big:
            os.link(p, model2 / p.name)
    shutil.copyfile(big, model2 / big.name)
    at = min(1 << 30, big.stat().st_size // 2)  # inside the second shard (or the middle of a small file)
    with open(model2 / big.name, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 1]))
    shard_new = work / "b3-shard"
    pack(work, recipe(work, "old", work / "house-old", kernels), model2, shard_new, 3)
    out["shard"] = delta(work, bundle, shard_new)
    shutil.rmtree(shard_new)
    shutil.rmtree(model2)
    return out


def delta(work: Path, old: Path, new: Path) -> int:
    out = work / "delta"
    shutil.rmtree(out, ignore_errors=True)
    timed([*GPTOSSCTL, "bundle", "delta", str(old), str(new), "--out", str(out)])
    n = sum(p.stat().st_size for p in out.glob("*.part"))
    shutil.rmtree(out)
    return n


def report(size: int, args: argparse.Namespace, r: dict[str, tuple[float, float]], deltas: dict[str, int]) -> None:
    gib = size / 2**30
    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    print(f"bundle: {gib:.2f} GiB payload, {cores} cores (load average {load:.1f}: shared), warm page cache, "
          f"best of {args.repeat}")
    print(f"{'tool':<34}{'wall s':>9}{'cpu s':>9}{'GiB/s':>8}")
    for name, (wall, cpu) in r.items():
        print(f"{name:<34}{wall:>9.2f}{cpu:>9.2f}{gib / wall:>8.2f}")

    def ratio(a: str, b: str) -> str:
        return f"{r[a][0] / r[b][0]:.2f}x wall, {r[a][1] / max(r[b][1], 1e-3):.2f}x cpu"

    print(f"split vs cat+sync:        {ratio('split', 'cat+sync')}  (target <= 1.3x; vs cat alone {ratio('split', 'cat')})")
    print(f"join vs cat parts+sync:   {ratio('join', 'cat parts+sync')}  (vs cat alone {ratio('join', 'cat parts')})")
    print(f"copy vs cp -r+sync:       {ratio('copy', 'cp -r+sync')}  (vs cp -r alone {ratio('copy', 'cp -r')})")
    print(f"verify throughput vs openssl dgst: {r['openssl'][0] / r['verify'][0]:.2f}x  (target >= 1.8x on 2 cores)")
    print(f"verify throughput vs sha256sum:    {r['sha256sum'][0] / r['verify'][0]:.2f}x")
    for name, what in (("wheels", "a 64 MiB dependency wheel upgraded"), ("shard", "one changed 1 GiB shard")):
        print(f"delta for {what}: {deltas[name] / 2**20:.1f} MiB = {deltas[name] / size:.4f} of the bundle")


if __name__ == "__main__":
    main()
