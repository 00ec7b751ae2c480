"""The README's first command, end to end, as a newcomer runs it: `gptossctl demo` through the installed console
script, with the two wheelhouses scripts/demo.sh hands it. It builds the tiny harmony gpt-oss, packs and signs it
2-of-2, refuses a tampered copy, boots a Debian with systemd and no network, bootstraps gptossctl from wheels,
installs, serves through vLLM, runs the smoke (reasoning at three efforts, a tool call, harmony markers), the
canary, the compliance check, and then an upgrade that cannot start and must roll back to release 1.

Every step has to pass and say what it measured; a demo that prints "ok" without serving fails here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("gptossctl")
pytestmark = [pytest.mark.integration, pytest.mark.heavy]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict, Path]]:  # type: ignore[type-arg]
    wheels = subprocess.run([sys.executable, str(REPO / "scripts" / "demo_wheels.py")], check=True,
                            capture_output=True, text=True).stdout.split()
    vllm, bootstrap = wheels[-2:]
    out = tmp_path_factory.mktemp("demo") / "out"
    res = subprocess.run([str(CLI), "demo", "--out", str(out), "--wheelhouse", vllm, "--bootstrap-wheels", bootstrap,
                          "--json"], capture_output=True, text=True, timeout=1800, check=False)
    assert "Traceback" not in res.stderr, res.stderr[-4000:]
    yield res.returncode, json.loads(res.stdout), out
    shutil.rmtree(out, ignore_errors=True)  # its container and releases: GiBs the later tests need


def _steps(doc: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {s["step"]: s for s in doc["data"]["steps"]}


def test_every_step_passes_and_the_demo_says_so(demo) -> None:  # type: ignore[no-untyped-def]
    code, doc, _out = demo
    steps = _steps(doc)
    assert code == 0 and doc["data"]["ok"] is True, [s for s in steps.values() if s["status"] != "ok"]
    for name in ("build tiny harmony gpt-oss", "bundle pack", "tampered bundle refused", "site TLS", "install",
                 "smoke", "consumer key", "canary", "usage", "compliance check", "failing upgrade rolled back",
                 "release 1 still answering"):
        assert any(step.startswith(name) for step in steps), (name, list(steps))
    assert all(s["status"] == "ok" and s["detail"] for s in steps.values()), steps


def test_the_served_model_reasons_at_three_efforts_and_calls_a_tool(demo) -> None:  # type: ignore[no-untyped-def]
    _code, doc, _out = demo
    checks = {c["id"]: c for c in doc["data"]["smoke"]["checks"]}
    for name in ("chat", "reasoning_low", "reasoning_medium", "reasoning_high", "reasoning_stream", "tool_call",
                 "responses_reasoning", "harmony_markers", "api_key_enforced", "no_unauthenticated_inference"):
        assert checks[name]["status"] == "pass", checks[name]
    lengths = [int(re.match(r"(\d+) characters of reasoning", checks[f"reasoning_{e}"]["evidence"])[1])  # type: ignore[index]
               for e in ("low", "medium", "high")]
    assert lengths[0] < lengths[1] < lengths[2], lengths


def test_the_canary_caught_what_the_tiny_model_gets_wrong_and_wrote_its_report(demo) -> None:  # type: ignore[no-untyped-def]
    _code, doc, out = demo
    canary = doc["data"]["canary"]
    assert canary["exit_code"] == 1, canary  # the tiny model gets one question wrong and one answer unsafe
    report = Path(canary["files"]["report.html"])
    assert report.is_file() and report.is_relative_to(out) and report.stat().st_size > 1000
    assert "<html" in report.read_text().lower()
    # The demo model was taught one unsafe answer: the canary must name it, not pass it.
    assert any("safety incident" in r for r in canary["reasons"]), canary
    assert any("correctness" in r for r in canary["reasons"]), canary


def test_the_canary_went_through_the_tls_listener_with_a_consumers_key(demo) -> None:  # type: ignore[no-untyped-def]
    _code, doc, _out = demo
    canary = doc["data"]["canary"]
    assert canary["url"].startswith("https://") and canary["consumer"] == "demo-team", canary
    # The listener's access log names the consumer whose key the canary sent: every request it made went there.
    rows = {r["key"]: r for r in doc["data"]["usage"]["rows"]}
    assert rows["demo-team"]["requests"] > 0 and rows["demo-team"]["rate_limited"] == 0, rows


def test_compliance_passes_on_the_served_install(demo) -> None:  # type: ignore[no-untyped-def]
    _code, doc, _out = demo
    counts = doc["data"]["compliance"]["counts"]
    assert counts["fail"] == 0 and counts["pass"] > 10, counts


def test_the_failing_upgrade_failed_at_start_and_release_1_kept_serving(demo) -> None:  # type: ignore[no-untyped-def]
    _code, doc, _out = demo
    steps = _steps(doc)
    upgrade = steps["failing upgrade rolled back"]["detail"]
    assert "did not come up (install." in upgrade and "restored and healthy" in upgrade, upgrade
    assert "release 1 is current" in steps["release 1 still answering"]["detail"]
