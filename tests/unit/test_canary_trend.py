"""The canary trend (issue 22, point 7): it names the model, URLs and suite, marks runs of another shape
instead of mixing them in, puts time in hours or days, and judges the week with a confidence statement.
Built from report files written here (no server): the trend reads only report.json."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gptossctl.probe.canary.baseline import load_baseline
from gptossctl.probe.canary.trend import build_trend, trend_html

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _endpoint(model: str, url: str, e2el: float, tokens_per_s: float) -> dict[str, Any]:
    edits = {"cases": 0, "median": None, "p90": None, "no_edit_share": None}
    wf = {"cases": 2, "passed": 2, "rate": 1.0, "results": [], "edits_to_accept": edits, "harmony_failures": 0,
          "latency_ms": {"ttft_p50": e2el / 2, "e2el_p50": e2el}}
    return {"model": model, "url": url, "correctness": {"cases": 2, "passed": 2, "rate": 1.0, "workflows": {"qa": wf}},
            "edits_to_accept": {"overall": edits, "workflows": {}}, "harmony": {"checked": 2, "failed": 0},
            "latency_ms": {"ttft": {"p50": e2el / 2, "p95": e2el}, "e2el": {"p50": e2el, "p95": e2el}},
            "safety": {"cases": 0, "refused": 0, "incidents": []}, "errors": {"total": 0, "rate": 0.0},
            "throughput": {"output_tokens_per_s": tokens_per_s, "requests_per_s": 1.0}}


def write_run(state: Path, hours: float, *, concurrency: int = 4, suite: str = "workflows",
              e2el: float = 100.0, current_e2el: float = 100.0, tokens: float = 160.0, current_tokens: float = 100.0,
              schema: str = "gptossctl.canary-report/3") -> None:
    started = T0 + timedelta(hours=hours)
    d = {"schema": schema, "mode": "suite", "suite": suite, "started": started.isoformat(), "duration_s": 30.0,
         "concurrency": concurrency, "rate": None, "ok": True, "reasons": [],
         **_endpoint("gpt-oss-20b", "http://127.0.0.1:8000", e2el, tokens),
         "current": _endpoint("llama-current", "http://10.0.0.5:9000", current_e2el, current_tokens)}
    folder = state / "runs" / started.strftime("%Y%m%dT%H%M%S")
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(d))


def test_the_trend_names_model_urls_and_suite(tmp_path: Path) -> None:
    for h in range(4):
        write_run(tmp_path, h)
    t = build_trend(tmp_path)
    d = t.to_dict()
    assert (d["model"], d["url"], d["suite"]) == ("gpt-oss-20b", "http://127.0.0.1:8000", "workflows")
    assert d["current"] == {"model": "llama-current", "url": "http://10.0.0.5:9000"}
    page = trend_html(t)
    for text in ("gpt-oss-20b", "http://127.0.0.1:8000", "llama-current", "http://10.0.0.5:9000", "suite workflows"):
        assert text in page.split("</h1>")[0], text  # in the headline


@pytest.mark.parametrize(("odd", "why"), [({"concurrency": 32}, "concurrency 32 (the others: 4)"),
                                          ({"suite": "demo"}, "suite demo (the others: workflows)")])
def test_runs_of_another_shape_are_marked_and_left_out(tmp_path: Path, odd: dict[str, Any], why: str) -> None:
    for h in range(4):
        write_run(tmp_path, h)
    write_run(tmp_path, 4, e2el=900.0, **odd)  # would make gpt-oss look worse if it were mixed in
    d = build_trend(tmp_path).to_dict()
    marked = [r for r in d["runs"] if r["differs"]]
    assert len(d["runs"]) == 5 and len(marked) == 1 and marked[0]["differs"] == [why]
    assert len(d["series"]["gpt-oss"]["all workflows"]["e2el_p50"]) == 4
    assert d["week"]["all workflows"]["verdict"] != "worse"
    assert "another shape" in trend_html(build_trend(tmp_path))


def test_time_is_in_hours_or_days(tmp_path: Path) -> None:
    for h in (0, 0.5, 1.0, 1.5, 2.0):  # two hours: the axis is hours, not minutes
        write_run(tmp_path, h)
    t = build_trend(tmp_path)
    assert [p[0] for p in t.series["gpt-oss"]["all workflows"]["e2el_p50"]] == [0, 0.5, 1.0, 1.5, 2.0]
    assert [r["hours"] for r in t.runs] == [0, 0.5, 1.0, 1.5, 2.0]
    page = trend_html(t)
    assert "hours since the first run" in page and "minutes" not in page and "seconds since" not in page
    for h in (24, 48, 96):  # five days: days
        write_run(tmp_path, h)
    assert "days since the first run" in trend_html(build_trend(tmp_path))


def test_the_week_is_judged_with_an_interval_and_60_percent_throughput_is_better(tmp_path: Path) -> None:
    for h in range(5):
        write_run(tmp_path, h, tokens=160.0 + h, current_tokens=100.0 - h)
    rows = {r["metric"]: r for r in build_trend(tmp_path).to_dict()["week"]["all workflows"]["rows"]}
    thr = rows["output_tokens_per_s"]
    assert thr["judgement"] == "better" and thr["interval"][0] > 0.2 and thr["samples"] == [5, 5]
    assert rows["e2el_p50"]["judgement"] == "same"


def test_too_few_runs_are_not_enough_data(tmp_path: Path) -> None:
    for h in range(2):
        write_run(tmp_path, h, e2el=300.0)
    d = build_trend(tmp_path).to_dict()
    rows = {r["metric"]: r for r in d["week"]["all workflows"]["rows"]}
    assert rows["e2el_p50"]["judgement"] == "not enough data" and d["min_runs"] == 3


def test_older_reports_are_still_read(tmp_path: Path) -> None:
    for h in range(3):
        write_run(tmp_path, h, schema="gptossctl.canary-report/2")
    write_run(tmp_path, 3)
    d = build_trend(tmp_path).to_dict()
    assert d["schema"] == "gptossctl.canary-trend/2" and len(d["runs"]) == 4
    # Before /3 both endpoints showed the run's throughput: those runs do not count towards it.
    assert len(d["series"]["current"]["all workflows"]["output_tokens_per_s"]) == 1
    assert len(d["series"]["current"]["all workflows"]["e2el_p50"]) == 4
    for schema in ("gptossctl.canary-report/1", "gptossctl.canary-report/2", "gptossctl.canary-report/3"):
        p = tmp_path / f"{schema[-1]}.json"
        p.write_text(json.dumps({"schema": schema, "latency_ms": {"ttft": {"p95": 12.5}}}))
        assert load_baseline(p)["schema"] == schema


def test_the_trend_command_names_what_was_measured_and_the_runs_left_out(tmp_path: Path) -> None:
    for h in range(4):
        write_run(tmp_path, h * 2)
    write_run(tmp_path, 9, concurrency=32)
    res = subprocess.run([str(Path(sys.executable).with_name("gptossctl")), "canary", "trend", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    out = " ".join(res.stdout.split())
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert ("suite workflows on gpt-oss-20b at http://127.0.0.1:8000 against the current stack llama-current at "
            "http://10.0.0.5:9000, concurrency 4") in out
    assert "5 runs over 9.0 hours" in out
    assert "1 run(s) of another shape left out of the charts and verdict" in out and "concurrency 32" in out
