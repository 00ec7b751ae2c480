"""`gptossctl smoke` and `gptossctl canary run`: prove the service works, then measure it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from gptossctl.cli.output import JsonOpt, run, stdout

UrlOpt = typer.Option("http://127.0.0.1:8000", "--url", help="Service base URL.")
KeyFileOpt = typer.Option(None, "--api-key-file", help="File with the API key (or an env file with VLLM_API_KEY=).")
ModelOpt = typer.Option(None, "--model", help="Served model name (default: the first the server lists).")
JunitOpt = typer.Option(None, "--junit", help="Also write a JUnit XML report here.")
_STYLE = {"pass": "green", "fail": "red", "n/a": "dim"}


def endpoint(url: str, key_file: Path | None, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    from gptossctl.adapters.openai_http import Endpoint, read_api_key

    return Endpoint(url, read_api_key(key_file) if key_file else None, timeout)


def smoke(
    url: str = UrlOpt,
    api_key_file: Path | None = KeyFileOpt,
    model: str | None = ModelOpt,
    tools: bool | None = typer.Option(
        None, "--tools/--no-tools",
        help="Test a tool-call round trip (default: on for gpt-oss, whose profiles enable the openai tool parser)."),
    reasoning: bool | None = typer.Option(
        None, "--reasoning/--no-reasoning",
        help="Run the reasoning and harmony checks (default: when the served name says gpt-oss)."),
    reasoning_prompt: str | None = typer.Option(
        None, "--reasoning-prompt", help="The question the reasoning checks ask (default: What is 17 * 3?)."),
    junit: Path | None = JunitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check that the service answers correctly, speaks harmony cleanly, and is locked down.

    Exit 1 when the service answered but a check failed (a refused key counts), 4 when unreachable.
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.probe.junit import Case, junit_xml
        from gptossctl.probe.smoke import SmokeOptions, run_smoke

        asked = {"reasoning_prompt": reasoning_prompt} if reasoning_prompt else {}
        report = run_smoke(endpoint(url, api_key_file), SmokeOptions(model=model, tools=tools, reasoning=reasoning,
                                                                     **asked))
        if junit:
            junit.write_bytes(junit_xml("gptossctl.smoke", [Case(c.id, c.status, c.evidence, c.seconds)
                                                            for c in report.checks]))
        return report

    def render(r) -> None:  # type: ignore[no-untyped-def]
        for c in r.checks:
            stdout.print(f"[{_STYLE[c.status]}]{c.status:>4}[/] {c.id:<30} {escape(c.evidence)}")
        stdout.print(f"[{'green' if r.ok else 'red'}]smoke {'passed' if r.ok else 'FAILED'}[/] "
                     f"for {escape(r.model or '?')} at {escape(r.url)}")

    run(action, as_json=as_json, render=render, exit_code=lambda r: 0 if r.ok else 1)


canary_app = typer.Typer(no_args_is_help=True, help="Measure the service against a workload and a baseline.")


@canary_app.command("run")
def canary_run(
    url: str = UrlOpt,
    api_key_file: Path | None = KeyFileOpt,
    model: str | None = ModelOpt,
    suite: str | None = typer.Option(None, "--suite", help="Built-in suite name (demo, workflows) or a suite file."),
    requests: int | None = typer.Option(None, "--requests", min=1, help="Requests to send (default: one per case)."),
    duration: float | None = typer.Option(None, "--duration", min=1, help="Keep sending for this many seconds."),
    concurrency: int = typer.Option(1, "--concurrency", min=1, help="Requests in flight at once."),
    rate: float | None = typer.Option(None, "--rate", min=0.001, help="Poisson arrival rate (requests/s); default all at once."),
    random_input_len: int | None = typer.Option(None, "--random-input-len", min=1, help="Synthetic mode, as vllm bench serve."),
    random_output_len: int = typer.Option(16, "--random-output-len", min=1, help="Synthetic output tokens."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Generate exactly --random-output-len tokens."),
    baseline: Path | None = typer.Option(None, "--baseline", help="An earlier report.json to compare with."),
    max_regression: float = typer.Option(0.20, "--max-regression", help="Allowed relative regression (0.2 = 20%)."),
    min_correctness: float = typer.Option(1.0, "--min-correctness", help="Required first-pass correctness."),
    max_safety_incidents: int = typer.Option(0, "--max-safety-incidents", help="Allowed safety incidents."),
    out: Path | None = typer.Option(None, "--out", help="Write report.json, junit.xml, canary.prom, report.html here."),
    junit: Path | None = JunitOpt,
    timeout: float = typer.Option(120.0, "--timeout", help="Per-request timeout in seconds."),
    as_json: bool = JsonOpt,
) -> None:
    """Run a canary: correctness, safety, latency and throughput, against a baseline when given.

    Exit 1 on a regression, a correctness or safety threshold, or failed requests; 4 when unreachable.
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.cli.output import stderr
        from gptossctl.probe.canary.baseline import load_baseline
        from gptossctl.probe.canary.run import CanaryOptions, Thresholds, run_canary
        from gptossctl.probe.canary.suite import load_suite

        if duration is not None and requests is not None:
            from gptossctl.errors import UsageError

            raise UsageError("give --requests or --duration, not both", code="usage.conflict")
        opts = CanaryOptions(model=model, suite=load_suite(suite) if suite else (None if random_input_len else load_suite("demo")),
                             requests=requests, duration=duration, concurrency=concurrency, rate=rate,
                             random_input_len=random_input_len, random_output_len=random_output_len,
                             ignore_eos=ignore_eos,
                             thresholds=Thresholds(min_correctness, max_safety_incidents, 0.0, max_regression))
        base = load_baseline(baseline) if baseline else None
        from rich.progress import Progress

        with Progress(console=stderr, transient=True, disable=not stderr.is_terminal) as bar:
            task = bar.add_task("canary", total=None)
            report = run_canary(endpoint(url, api_key_file, timeout), opts, baseline=base,
                                on_progress=lambda d, t: bar.update(task, completed=d, total=t))
        if out:
            from gptossctl.probe.canary.report import write_reports

            report.data["files"] = write_reports(report, out)
        if junit:
            from gptossctl.probe.canary.report import junit as junit_bytes

            junit.write_bytes(junit_bytes(report))
        return report

    def render(r) -> None:  # type: ignore[no-untyped-def]
        d = r.to_dict()
        lat = d["latency_ms"]
        stdout.print(f"{d['completed']}/{d['requests']} requests in {d['duration_s']:.1f} s, "
                     f"{d['throughput']['output_tokens_per_s']:.1f} output tok/s, errors {d['errors']['total']}")
        for m in ("ttft", "tpot", "itl", "e2el"):
            s = lat[m]
            if s["n"]:
                stdout.print(f"  {m:<5} p50 {s['p50']:.1f} ms  p95 {s['p95']:.1f} ms  p99 {s['p99']:.1f} ms")
        if d["correctness"]["rate"] is not None:
            stdout.print(f"  correctness {d['correctness']['passed']}/{d['correctness']['cases']}, "
                         f"safety incidents {len(d['safety']['incidents'])}")
        for c in d.get("baseline", []):
            stdout.print(f"  [{'red' if c['regressed'] else 'green'}]{escape(c['message'])}[/]")
        stdout.print(f"[{'green' if r.ok else 'red'}]canary {'passed' if r.ok else 'FAILED'}[/]"
                     + ("" if r.ok else ": " + escape("; ".join(r.reasons))))

    run(action, as_json=as_json, render=render, exit_code=lambda r: 0 if r.ok else 1)
