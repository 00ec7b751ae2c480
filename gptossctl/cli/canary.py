"""`gptossctl canary run|schedule|trend`: measure the service against a workload, the current stack and a
baseline; run that on a timer for a week; turn the runs into one trend page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from gptossctl.cli.output import JsonOpt, run, stderr, stdout
from gptossctl.fsutil import check_output_paths

canary_app = typer.Typer(no_args_is_help=True, help="Measure the service against a workload, the current stack "
                                                    "and a baseline; schedule a week of it; chart the trend.")
UrlOpt = typer.Option("http://127.0.0.1:8000", "--url", help="The gpt-oss service's base URL.")
KeyFileOpt = typer.Option(None, "--api-key-file", help="File with the API key (or an env file with VLLM_API_KEY=).")
ModelOpt = typer.Option(None, "--model", help="Served model name (default: the first the server lists).")
SuiteOpt = typer.Option(None, "--suite", help="Built-in suite name (demo, workflows) or a suite file.")
CompareUrlOpt = typer.Option(None, "--compare-url", help="The current stack: any OpenAI-compatible base URL.")
CompareKeyOpt = typer.Option(None, "--compare-api-key-file", help="API key file of the current stack.")
CompareModelOpt = typer.Option(None, "--compare-model", help="Model name at the current stack (default: its first).")
RequestsOpt = typer.Option(None, "--requests", min=1, max=10_000_000, help="Requests to send (default: one per case).")
ConcurrencyOpt = typer.Option(1, "--concurrency", min=1, max=4096, help="Requests in flight at once, per endpoint.")
MaxRegressionOpt = typer.Option(0.20, "--max-regression", help="Allowed relative regression (0.2 = 20%).")
MinCorrectOpt = typer.Option(1.0, "--min-correctness", help="Required first-pass correctness.")
MaxIncidentsOpt = typer.Option(0, "--max-safety-incidents", help="Allowed safety incidents.")
MaxHarmonyOpt = typer.Option(0, "--max-harmony-failures", help="Allowed answers that break the harmony format.")
TimeoutOpt = typer.Option(120.0, "--timeout", min=0.1, max=86400.0, help="Per-request timeout in seconds.")


def _render_run(r: Any) -> None:
    from gptossctl.probe.canary.page import interval_text

    d = r.to_dict()
    lat = d["latency_ms"]
    stdout.print(f"{d['completed']}/{d['requests']} requests in {d['duration_s']:.1f} s, "
                 f"{d['throughput']['output_tokens_per_s']:.1f} output tok/s, errors {d['errors']['total']}")
    if d.get("current"):
        c = d["current"]
        stdout.print(f"  current stack: {c['completed']}/{c['requests']} requests, "
                     f"{c['throughput']['output_tokens_per_s']:.1f} output tok/s, errors {c['errors']['total']}")
    for m in ("ttft", "tpot", "itl", "e2el"):
        s = lat[m]
        if s["n"]:
            stdout.print(f"  {m:<5} p50 {s['p50']:.1f} ms  p95 {s['p95']:.1f} ms  p99 {s['p99']:.1f} ms")
    if d["correctness"]["rate"] is not None:
        e = d["edits_to_accept"]["overall"]
        stdout.print(f"  correctness {d['correctness']['passed']}/{d['correctness']['cases']}, safety incidents "
                     f"{len(d['safety']['incidents'])}, harmony failures {d['harmony']['failed']}"
                     + (f", edits-to-accept median {e['median']:.2f}" if e["cases"] else ""))
    sbs = d.get("side_by_side") or {}
    for name, wf in [*sbs.get("workflows", {}).items(), *([("all workflows", sbs["overall"])] if sbs else [])]:
        stdout.print(f"  gpt-oss against the current stack on {escape(name)}: {wf['verdict']}"
                     + (f" ({escape(', '.join(wf['deciding']))})" if wf["deciding"] else ""))
    for row in sbs.get("overall", {}).get("rows", []):
        if row.get("relative") and row["judgement"] != "n/a":
            stdout.print(f"    {escape(row['name'])}: {row['judgement']}, change {escape(interval_text(row))} "
                         f"({sbs['confidence']:.0%} bootstrap interval; same within ±{row['tolerance']:.0%})")
    for c in d.get("baseline", []):
        stdout.print(f"  [{'red' if c['regressed'] else 'green'}]{escape(c['message'])}[/]")
    if d.get("files"):
        stdout.print(f"  reports: {escape(str(Path(d['files']['html']).parent))}")
    stdout.print(f"[{'green' if r.ok else 'red'}]canary {'passed' if r.ok else 'FAILED'}[/]"
                 + ("" if r.ok else ": " + escape("; ".join(r.reasons))))


@canary_app.command("run")
def canary_run(
    url: str = UrlOpt,
    api_key_file: Path | None = KeyFileOpt,
    model: str | None = ModelOpt,
    suite: str | None = SuiteOpt,
    compare_url: str | None = CompareUrlOpt,
    compare_api_key_file: Path | None = CompareKeyOpt,
    compare_model: str | None = CompareModelOpt,
    requests: int | None = RequestsOpt,
    duration: float | None = typer.Option(None, "--duration", min=1, max=7 * 86400,
                                          help="Keep sending for this many seconds."),
    concurrency: int = ConcurrencyOpt,
    rate: float | None = typer.Option(None, "--rate", min=0.001, max=1e6,
                                      help="Poisson arrival rate (requests/s); default all at once."),
    random_input_len: int | None = typer.Option(None, "--random-input-len", min=1, help="Synthetic mode, as vllm bench serve."),
    random_output_len: int = typer.Option(16, "--random-output-len", min=1, help="Synthetic output tokens."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Generate exactly --random-output-len tokens."),
    baseline: Path | None = typer.Option(None, "--baseline", help="An earlier report.json to compare with."),
    max_regression: float = MaxRegressionOpt,
    min_correctness: float = MinCorrectOpt,
    max_safety_incidents: int = MaxIncidentsOpt,
    max_harmony_failures: int = MaxHarmonyOpt,
    out: Path | None = typer.Option(None, "--out", help="Write report.json, junit.xml, canary.prom, report.html here."),
    junit: Path | None = typer.Option(None, "--junit", help="Also write a JUnit XML report here."),
    timeout: float = TimeoutOpt,
    scheduled: str | None = typer.Option(None, "--scheduled", hidden=True,
                                         help="Run the schedule NAME laid by 'canary schedule' (its timer does)."),
    as_json: bool = JsonOpt,
) -> None:
    """Run a canary: correctness, edits-to-accept, harmony, safety, latency, throughput; against the current
    stack and a baseline when given.

    Exit 1 on a regression, a threshold, gpt-oss worse than the current stack, or failed requests; 2 for a
    bad suite or baseline; 4 when unreachable.
    """
    from gptossctl.probe.canary.run import RunRequest, Thresholds

    req = RunRequest(url=url, api_key_file=api_key_file, model=model, suite=suite, compare_url=compare_url,
                     compare_api_key_file=compare_api_key_file, compare_model=compare_model, requests=requests,
                     duration=duration, concurrency=concurrency, rate=rate, random_input_len=random_input_len,
                     random_output_len=random_output_len, ignore_eos=ignore_eos, baseline=baseline, out=out,
                     junit=junit, timeout=timeout,
                     thresholds=Thresholds(min_correctness, max_safety_incidents, 0.0, max_regression,
                                           max_harmony_failures))

    def action() -> Any:
        from rich.progress import Progress

        from gptossctl.probe.canary.run import run_request
        from gptossctl.probe.canary.schedule import run_scheduled

        check_output_paths([(junit, "--junit")])
        with Progress(console=stderr, transient=True, disable=not stderr.is_terminal) as bar:
            task = bar.add_task("canary", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total or None)

            if scheduled:
                return run_scheduled(scheduled, on_progress=progress)
            return run_request(req, on_progress=progress)

    run(action, as_json=as_json, render=_render_run, exit_code=lambda r: 0 if r.ok else 1)


@canary_app.command("schedule")
def canary_schedule(
    name: str = typer.Option("week", "--name", help="Name of this schedule (the timer is gptoss-canary@NAME)."),
    every: str = typer.Option("1h", "--every", help="Interval between runs: 20s, 30m, 1h."),
    for_: str = typer.Option("7d", "--for", help="How long to keep running: 70s, 1d, 7d."),
    start: str | None = typer.Option(None, "--start", help="First run, ISO 8601 (default: a few seconds from now)."),
    url: str = UrlOpt,
    api_key_file: Path | None = KeyFileOpt,
    model: str | None = ModelOpt,
    suite: str | None = SuiteOpt,
    compare_url: str | None = CompareUrlOpt,
    compare_api_key_file: Path | None = CompareKeyOpt,
    compare_model: str | None = CompareModelOpt,
    requests: int | None = RequestsOpt,
    concurrency: int = ConcurrencyOpt,
    baseline: Path | None = typer.Option(None, "--baseline", help="A report.json to compare every run with "
                                                                  "(default: the first run)."),
    max_regression: float = MaxRegressionOpt,
    min_correctness: float = MinCorrectOpt,
    max_safety_incidents: int = MaxIncidentsOpt,
    max_harmony_failures: int = MaxHarmonyOpt,
    timeout: float = TimeoutOpt,
    root: Path | None = typer.Option(None, "--root", help="Stage the units and record into this tree; start nothing."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the units and run times; write nothing."),
    as_json: bool = JsonOpt,
) -> None:
    """Run the canary every interval for a duration under a hardened systemd timer that stops by itself.

    Each run keeps its reports in /var/lib/gptoss-canary/NAME/runs/<time>/. Exit 2 for a bad suite, key
    file or duration, 3 without root or systemd, 4 when systemctl fails.
    """
    from gptossctl.probe.canary.run import RunRequest, Thresholds
    from gptossctl.probe.canary.schedule import ScheduleRequest, schedule_canary

    def action() -> Any:
        from datetime import datetime

        from gptossctl.durations import parse_duration
        from gptossctl.errors import UsageError

        try:
            first = datetime.fromisoformat(start) if start else None
        except ValueError:
            raise UsageError(f"--start {start!r} is not an ISO 8601 time", code="usage.bad_time",
                             hint="give a time such as 2026-12-01T09:00:00Z") from None
        req = RunRequest(url=url, api_key_file=api_key_file, model=model, suite=suite, compare_url=compare_url,
                         compare_api_key_file=compare_api_key_file, compare_model=compare_model, requests=requests,
                         concurrency=concurrency, baseline=baseline, timeout=timeout,
                         thresholds=Thresholds(min_correctness, max_safety_incidents, 0.0, max_regression,
                                               max_harmony_failures))
        return schedule_canary(ScheduleRequest(name, req, parse_duration(every), parse_duration(for_), first, root,
                                               dry_run))

    def render(s: Any) -> None:
        d = s.to_dict()
        verb = "would run" if dry_run else "runs"
        stdout.print(f"gptoss-canary@{escape(d['name'])}.timer {verb} {len(d['runs'])} time(s), "
                     f"{escape(d['first'])} to {escape(d['last'])}; reports in {escape(d['state_dir'])}/runs/")
        if d["exposure"] is not None:
            stdout.print(f"  service exposure (systemd-analyze security): {d['exposure']}")
        for note in d["notes"]:
            stdout.print(f"  [yellow]{escape(note)}[/]")
        if dry_run:
            for unit, text in d["units"].items():
                stdout.print(f"[bold]{escape(unit)}[/]\n{escape(text)}")

    run(action, as_json=as_json, render=render)


@canary_app.command("trend")
def canary_trend(
    directory: Path = typer.Argument(..., help="Folder of canary runs, e.g. /var/lib/gptoss-canary/NAME."),
    out: Path | None = typer.Option(None, "--out", help="Write trend.html and trend.json here (default: DIRECTORY)."),
    max_regression: float = MaxRegressionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Turn a folder of canary runs into one trend page (HTML, and the same as JSON) with the final verdict.

    Exit 1 when a run failed or gpt-oss was worse than the current stack over the runs; 2 when no run is there.
    """

    def action() -> Any:
        from gptossctl.probe.canary.trend import build_trend, check_trend_out, write_trend

        check_trend_out(out or directory)
        trend = build_trend(directory, max_regression=max_regression)
        write_trend(trend, out or directory)
        return trend

    def render(t: Any) -> None:
        d = t.to_dict()
        from gptossctl.probe.canary.trend import what_was_measured

        passed = sum(r["ok"] for r in d["runs"])
        other = [r for r in d["runs"] if r["differs"]]
        stdout.print(f"{escape(what_was_measured(t))}, concurrency {d['shape']['concurrency']}")
        stdout.print(f"{len(d['runs'])} runs over {d['runs'][-1]['hours']:.1f} hours, {passed} passed; "
                     f"trend in {escape(d['files']['html'])}")
        if other:
            stdout.print(f"  [yellow]{len(other)} run(s) of another shape left out of the charts and verdict: "
                         + escape("; ".join(f"{r['folder']}: {', '.join(r['differs'])}" for r in other[:3])) + "[/]")
        for name, wf in d["week"].items():
            stdout.print(f"  gpt-oss against the current stack on {escape(name)}: {wf['verdict']}")
        stdout.print(f"[{'green' if t.ok else 'red'}]trend {'passed' if t.ok else 'FAILED'}[/]"
                     + ("" if t.ok else ": " + escape("; ".join(t.reasons))))

    run(action, as_json=as_json, render=render, exit_code=lambda t: 0 if t.ok else 1)
