"""`gptossctl smoke`: prove the service works (the canary commands are in cli/canary.py)."""

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
    router: bool = typer.Option(
        False, "--router",
        help="The URL is gptossctl's router in front of an instance: /version and /metrics must not be exposed "
             "there (404); install smokes each vLLM replica itself."),
    junit: Path | None = JunitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check that the service answers correctly, speaks harmony cleanly, and is locked down.

    Exit 1 when the service answered but a check failed (a refused key counts), 4 when unreachable.
    """

    def action():  # type: ignore[no-untyped-def]
        from dataclasses import replace

        from gptossctl.fsutil import atomic_write, check_output_path
        from gptossctl.probe.junit import Case, junit_xml
        from gptossctl.probe.smoke import SmokeOptions, run_smoke

        if junit:
            check_output_path(junit, what="--junit")  # before the first request: a bad path costs nothing

        opts = SmokeOptions(model=model, tools=tools, reasoning=reasoning, router=router)
        if reasoning_prompt:
            opts = replace(opts, reasoning_prompt=reasoning_prompt)
        report = run_smoke(endpoint(url, api_key_file), opts)
        if junit:
            atomic_write(junit, junit_xml("gptossctl.smoke", [Case(c.id, c.status, c.evidence, c.seconds)
                                                              for c in report.checks]))
        return report

    def render(r) -> None:  # type: ignore[no-untyped-def]
        for c in r.checks:
            stdout.print(f"[{_STYLE[c.status]}]{c.status:>4}[/] {c.id:<30} {escape(c.evidence)}")
        stdout.print(f"[{'green' if r.ok else 'red'}]smoke {'passed' if r.ok else 'FAILED'}[/] "
                     f"for {escape(r.model or '?')} at {escape(r.url)}")

    run(action, as_json=as_json, render=render, exit_code=lambda r: 0 if r.ok else 1)
