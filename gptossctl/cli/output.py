"""The frame every command runs in: one result document, Rich on stderr, stable exit codes.

Who reads the output decides its shape, here and nowhere else: at a terminal, Rich fits it to the window;
through a pipe, a file, Ansible or a log (or with `gptossctl --plain`), nothing is cut to a width (every
path, version, URL, key id and digest is printed whole) and progress is a log line on stderr every
GPTOSSCTL_PROGRESS_INTERVAL seconds (10) instead of a bar; `gptossctl --quiet` shows no progress at all.

`--json` prints exactly one document on stdout, on success and on failure:
{"schema": "gptossctl.result/1", "command": [...], "status": "ok|failed|error", "exit_code": N,
 "data": {...}, "findings": [...], "error": {"code", "message", "hint"}}
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, NoReturn, Protocol, TextIO, TypeVar

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape

from gptossctl.errors import Finding, GptossctlError, Interrupted, UsageError
from gptossctl.fsutil import os_error

RESULT_SCHEMA = "gptossctl.result/1"
PROGRESS_INTERVAL = 10.0  # seconds between progress lines without a terminal (GPTOSSCTL_PROGRESS_INTERVAL)
WHOLE = 1 << 20  # the width a console has for a reader that is not a person at a terminal: no cell is cut


class _State:
    debug = False
    emitted = False  # a result document is on stdout: main() must not print a second one
    plain = False  # --plain: print for a program or a log even at a terminal
    quiet = False  # --quiet: no progress, neither bar nor lines
    progress_interval: float | None = None  # --progress-interval / GPTOSSCTL_PROGRESS_INTERVAL


state = _State()


class _Console(Console):
    """A Rich console that cuts nothing unless a person reads it at a terminal. Rich fits tables to a width
    and ends cells that do not fit with "…"; without a terminal that width is 80 (or whatever window stdin
    happens to be), so a pipe, Ansible or a log got `2026120714…` and `http://127.…`. Off a terminal, or with
    --plain, the width is unbounded: a table is as wide as its values, every value whole."""

    @property
    def size(self) -> ConsoleDimensions:
        real = super().size
        return ConsoleDimensions(WHOLE, real.height) if self.whole else real

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    @property
    def whole(self) -> bool:
        """True when values must be printed whole: no terminal, or --plain."""
        return state.plain or not self.is_terminal


stderr = _Console(stderr=True, highlight=False)
stdout = _Console(highlight=False, soft_wrap=True)


def ident(value: str, *, short: int = 16) -> str:
    """A key id, digest or other long identifier: whole for a program or a log, its first `short` characters
    at a terminal (where the whole one is a command away: --json, or 'gptossctl keys show')."""
    return value if stdout.whole or len(value) <= short else value[:short]


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


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _duration(s: float) -> str:
    s = int(s + 0.5)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_interval() -> float:
    """Seconds between progress lines: --progress-interval, else GPTOSSCTL_PROGRESS_INTERVAL, else 10."""
    if state.progress_interval is not None:
        return state.progress_interval
    try:
        value = float(os.environ.get("GPTOSSCTL_PROGRESS_INTERVAL", PROGRESS_INTERVAL))
    except ValueError:
        return PROGRESS_INTERVAL
    return value if 0 < value < float("inf") else PROGRESS_INTERVAL


class ProgressLog:
    """Progress for a log: a line on stderr every `interval` seconds while the work runs (bytes done, of how
    many, the rate over the last interval, the time left at the average rate), also when no byte moved (a
    stalled disk shows as 0 B/s rather than as silence), until one line has said every byte is done.
    `advance` may be called from any thread."""

    def __init__(self, description: str, interval: float, *, write: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.description = description
        self.interval = interval
        self.total: int | None = None
        self.done = 0
        self._clock = clock
        self._write = write or (lambda line: stderr.print(line, markup=False, highlight=False, soft_wrap=True))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._start = self._last_time = clock()
        self._last_done = 0
        self._thread = threading.Thread(target=self._run, name="gptossctl-progress", daemon=True)

    def set_total(self, n: int) -> None:
        self.total = n

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n

    def line(self) -> str:
        now = self._clock()
        with self._lock:
            done = self.done
        rate = (done - self._last_done) / max(now - self._last_time, 1e-9)
        average = done / max(now - self._start, 1e-9)
        self._last_time, self._last_done = now, done
        text = f"{self.description}: {_size(done)}"
        if self.total:
            text += f" of {_size(self.total)} ({100 * done / self.total:.0f}%)"
        text += f", {_size(rate)}/s, {_duration(now - self._start)} elapsed"
        if self.total and average > 0:
            text += f", ETA {_duration(max(self.total - done, 0) / average)}"
        return text

    def _run(self) -> None:
        complete_shown = False  # once every byte is done, one line says so; the rest of the command is not bytes
        while not self._stop.wait(self.interval):
            with self._lock:
                complete = self.total is not None and self.done >= self.total
            if not (complete and complete_shown):
                self._write(self.line())
            complete_shown = complete

    def __enter__(self) -> ProgressLog:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def progress_bar(description: str, *, enabled: bool = True) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """Yield (set_total, advance) for progress on stderr: a bytes-and-throughput bar at a terminal, a log line
    every progress_interval() seconds otherwise (or with --plain), nothing with --quiet."""
    if not enabled or state.quiet:
        yield (lambda _n: None), (lambda _n: None)
        return
    if stderr.whole:
        with ProgressLog(description, progress_interval()) as log:
            yield log.set_total, log.advance
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=stderr, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield (lambda n: bar.update(task, total=n)), (lambda n: bar.advance(task, n))


JsonOpt = typer.Option(False, "--json", help="Print one JSON result document on stdout.")
