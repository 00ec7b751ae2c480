"""The frame every command runs in: one result document, Rich on stderr, stable exit codes.

`--json` prints exactly one document on stdout, on success and on failure:
{"schema": "gptossctl.result/1", "command": [...], "status": "ok|failed|error", "exit_code": N,
 "data": {...}, "findings": [...], "error": {"code", "message", "hint"}}
"""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, NoReturn, Protocol, TextIO, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from gptossctl.errors import Finding, GptossctlError, Interrupted, UsageError
from gptossctl.fsutil import os_error

RESULT_SCHEMA = "gptossctl.result/1"
stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, soft_wrap=True)


class _State:
    debug = False
    emitted = False  # a result document is on stdout: main() must not print a second one


state = _State()


_CREDENTIALS = re.compile(r"(://)[^/?#@]*@")


class HasDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


T = TypeVar("T", bound=HasDict)


def document(*, status: str, exit_code: int, data: dict[str, Any] | None = None,
             findings: Sequence[Finding] = (), error: GptossctlError | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "command": [_CREDENTIALS.sub(r"\1***@", a) for a in sys.argv[1:]],  # no user:password@ in logs
        "status": status,
        "exit_code": exit_code,
        "data": data or {},
        "findings": [f.to_dict() for f in findings],
    }
    if error is not None:
        doc["error"] = {"code": error.code, "message": error.message, "hint": error.hint}
    return doc


class StdoutLost(Exception):
    """stdout is closed or cannot be written (a full disk, /dev/full): the result cannot be delivered, which
    main() reports on stderr in one line with exit 4, never as a traceback or as a bug."""


def _stdout() -> TextIO:
    if sys.stdout is None:  # started with fd 1 closed (`>&-`)
        raise StdoutLost("stdout is closed")
    return sys.stdout


def emit_json(doc: dict[str, Any]) -> None:
    state.emitted = True
    text = json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n"
    out = _stdout()
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        raise  # a reader that went away (| head): click's own handling, as before
    except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
        raise StdoutLost(getattr(exc, "strerror", None) or str(exc)) from None


def render_out(render: Callable[[T], None], result: T) -> None:
    """Human output onto stdout, with a failed write turned into StdoutLost."""
    out = _stdout()
    try:
        render(result)
        out.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as exc:
        raise StdoutLost(getattr(exc, "strerror", None) or str(exc)) from None


def print_findings(findings: tuple[Finding, ...] | list[Finding] | Any) -> None:
    if not findings:
        return
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("code", style="red", no_wrap=True)
    table.add_column("subject", overflow="fold")
    table.add_column("finding", overflow="fold")
    for f in findings:
        msg = escape(f.message) + (f"\n[dim]{escape(f.hint)}[/dim]" if f.hint else "")
        table.add_row(f.code, escape(f.subject), msg)
    stderr.print(table)


def ignore_interrupts() -> None:
    """From here on the process reports and exits with the status it reports (a SIGINT would otherwise end it
    by the signal after 'ok' was printed)."""
    with suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def fail(exc: GptossctlError, *, as_json: bool, data: dict[str, Any] | None = None) -> NoReturn:
    ignore_interrupts()
    if as_json:
        emit_json(document(status="failed" if exc.exit_code == 1 else "error", exit_code=exc.exit_code,
                           data={**exc.data, **(data or {})}, findings=exc.findings, error=exc))
    else:
        stderr.print(f"[bold red]error[/bold red] [dim]({exc.code})[/dim]: {escape(exc.message)}")
        print_findings(exc.findings)
        if exc.hint:
            stderr.print(f"[yellow]next:[/yellow] {escape(exc.hint)}")
    raise typer.Exit(exc.exit_code)


def run(action: Callable[[], T], *, as_json: bool, render: Callable[[T], None],
        exit_code: Callable[[T], int] = lambda _r: 0) -> NoReturn:
    """Run one domain call; print its result (JSON or human) and exit with the right code."""
    try:
        result = action()
    except GptossctlError as exc:
        if state.debug:
            stderr.print_exception()
        fail(exc, as_json=as_json)
    except KeyboardInterrupt:  # a command that does not catch it itself: still one document, exit 130
        ignore_interrupts()
        fail(Interrupted("interrupted before the command finished", hint="run the same command again; check "
                         "'gptossctl status' if it was changing the system"), as_json=as_json)
    except typer.Exit:
        raise
    except typer.Abort:  # a prompt answered with Ctrl-C or end of input
        fail(UsageError("not confirmed", code="usage.not_confirmed",
                        hint="pass --yes to confirm without a prompt"), as_json=as_json)
    except Exception as exc:  # a bug: say so plainly, traceback only on request
        if state.debug:
            stderr.print_exception()
        mapped = os_error(exc)  # the system refused a path the user gave: bad input, not a bug
        if isinstance(mapped, GptossctlError):
            fail(mapped, as_json=as_json)
        bug = GptossctlError(f"internal error: {exc.__class__.__name__}: {exc}",
                             hint="rerun with --debug and report the traceback")
        fail(bug, as_json=as_json)
    ignore_interrupts()  # the work is done: a Ctrl-C now must not kill the process after (or while) it reports
    code = exit_code(result)
    if as_json:
        emit_json(document(status="ok" if code == 0 else "failed", exit_code=code, data=result.to_dict(),
                           findings=getattr(result, "findings", ())))
    else:
        render_out(render, result)
    raise typer.Exit(code)


@contextmanager
def progress_bar(description: str, *, enabled: bool = True) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """Yield (set_total, advance) for a bytes-and-throughput bar on stderr."""
    if not enabled or not stderr.is_terminal:
        yield (lambda _n: None), (lambda _n: None)
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=stderr, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield (lambda n: bar.update(task, total=n)), (lambda n: bar.advance(task, n))


JsonOpt = typer.Option(False, "--json", help="Print one JSON result document on stdout.")
