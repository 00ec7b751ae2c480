"""Canary verdicts that mean something (issue 22, point 7), through the installed console script against
fixed-latency test servers (tests/cli/fixed_latency_server.py: each answers every request after a fixed
sleep), so that the tests cannot flake: a measurably slower endpoint is "worse", identical endpoints are
never "worse", too few samples are "not enough data", and throughput is each endpoint's own."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

GPTOSSCTL = Path(sys.executable).with_name("gptossctl")
SERVER = Path(__file__).with_name("fixed_latency_server.py")
SUITE = """schema: gptossctl.canary-suite/1
name: fixed
workflows:
  - name: capitals
    cases:
      - {id: france, prompt: "What is the capital of France?", max_tokens: 16, checks: [{contains: Paris}]}
      - {id: again, prompt: "And the capital of France again?", max_tokens: 16, checks: [{contains: Paris}]}
"""
FAST, SLOW = 0.05, 0.15


def _start(tmp: Path, name: str, latency: float) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp / f"{name}.port"
    proc = subprocess.Popen([sys.executable, str(SERVER), str(port_file), str(latency)])
    deadline = time.monotonic() + 15
    while not port_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the fixed-latency server did not start"
        time.sleep(0.02)
    return proc, f"http://127.0.0.1:{port_file.read_text()}"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """fast (50 ms), slow (150 ms) and slow2 (150 ms, identical to slow)."""
    tmp = tmp_path_factory.mktemp("fixed")
    started = [(name, *_start(tmp, name, lat)) for name, lat in (("fast", FAST), ("slow", SLOW), ("slow2", SLOW))]
    try:
        yield {name: url for name, _, url in started}
    finally:
        for _, proc, _ in started:
            proc.terminate()
            proc.wait(10)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("suite") / "suite.yaml"
    p.write_text(SUITE)
    return p


def canary(ours: str, theirs: str, suite: Path, requests: int, *extra: str) -> tuple[int, dict[str, Any]]:
    res = subprocess.run([str(GPTOSSCTL), "canary", "run", "--url", ours, "--compare-url", theirs, "--suite", str(suite),
                          "--requests", str(requests), "--concurrency", "4", *extra, "--json"],
                         capture_output=True, text=True, timeout=60)
    doc = json.loads(res.stdout)  # one result document
    assert doc["exit_code"] == res.returncode
    return res.returncode, doc["data"]


def rows(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["metric"]: r for r in d["side_by_side"]["overall"]["rows"]}


@pytest.fixture(scope="module")
def slow_vs_fast(servers: dict[str, str], suite: Path) -> tuple[int, dict[str, Any]]:
    return canary(servers["slow"], servers["fast"], suite, 40)


def test_a_measurably_slower_endpoint_is_worse_with_its_interval(slow_vs_fast: tuple[int, dict[str, Any]]) -> None:
    code, d = slow_vs_fast
    assert code == 1, d["reasons"]
    r = rows(d)
    for metric in ("ttft_p50", "e2el_p50"):
        assert r[metric]["judgement"] == "worse", r[metric]
        lo, hi = r[metric]["interval"]
        # 150 ms against 50 ms: +200 %, and the whole interval beyond the stated tolerance.
        assert r[metric]["tolerance"] == pytest.approx(0.20) and lo > 0.20 and lo <= hi
        assert r[metric]["samples"] == [40, 40]
    assert d["side_by_side"]["workflows"]["capitals"]["verdict"] == "worse"
    assert d["side_by_side"]["confidence"] == pytest.approx(0.95)
    assert any("worse than the current stack" in reason for reason in d["reasons"])


def test_throughput_is_measured_per_endpoint(slow_vs_fast: tuple[int, dict[str, Any]]) -> None:
    _, d = slow_vs_fast
    ours, theirs = d["throughput"]["output_tokens_per_s"], d["current"]["throughput"]["output_tokens_per_s"]
    # Three times faster answers at the same concurrency: about three times the throughput (not identical).
    assert theirs > 2 * ours, (ours, theirs)
    assert rows(d)["output_tokens_per_s"]["judgement"] == "worse"


def test_the_faster_endpoint_is_better(servers: dict[str, str], suite: Path) -> None:
    code, d = canary(servers["fast"], servers["slow"], suite, 40)
    assert code == 0, d["reasons"]
    r = rows(d)["e2el_p50"]
    assert r["judgement"] == "better" and r["interval"][1] < -0.20, r  # -67 %: beyond the tolerance
    assert d["side_by_side"]["workflows"]["capitals"]["verdict"] == "better"


@pytest.mark.parametrize("attempt", range(5))
def test_identical_endpoints_are_never_worse(servers: dict[str, str], suite: Path, attempt: int) -> None:
    code, d = canary(servers["slow"], servers["slow2"], suite, 30)
    assert code == 0, d["reasons"]
    for metric in ("ttft_p50", "e2el_p50", "output_tokens_per_s"):
        r = rows(d)[metric]
        assert r["judgement"] in ("same", "inconclusive"), r
        lo, hi = r["interval"]
        assert lo <= hi and (r["judgement"] == "inconclusive" or -r["tolerance"] <= lo <= hi <= r["tolerance"]), r
    assert d["side_by_side"]["workflows"]["capitals"]["verdict"] in ("on par", "inconclusive")


def test_too_few_samples_is_not_enough_data(servers: dict[str, str], suite: Path) -> None:
    # Even a three-fold difference is not judged on 6 requests: the minimum is stated in the report.
    code, d = canary(servers["slow"], servers["fast"], suite, 6)
    assert code == 0, d["reasons"]
    r = rows(d)
    for metric in ("ttft_p50", "e2el_p50", "output_tokens_per_s"):
        assert r[metric]["judgement"] == "not enough data" and r[metric]["interval"] is None, r[metric]
    assert d["side_by_side"]["min_samples"] > 6
    assert d["side_by_side"]["workflows"]["capitals"]["verdict"] == "not enough data"


def test_the_terminal_output_states_each_endpoints_throughput_and_the_intervals(servers: dict[str, str],
                                                                                suite: Path) -> None:
    res = subprocess.run([str(GPTOSSCTL), "canary", "run", "--url", servers["slow"], "--compare-url", servers["fast"],
                          "--suite", str(suite), "--requests", "24", "--concurrency", "4"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stdout + res.stderr
    out = " ".join(res.stdout.split())
    assert "current stack: 24/24 requests" in out and "output tok/s" in out
    assert "end-to-end latency median: worse, change +" in out and "95% bootstrap interval; same within ±20%" in out
    assert "canary FAILED" in out
