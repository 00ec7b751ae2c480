"""Entry point: `gptossctl <noun> <verb>`."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from typing import Any, TextIO

import typer

from gptossctl import __version__
from gptossctl.cli import bundle, canary, compliance, consumers, demo, hw, keys, probe, profiles, releases, service, trust
from gptossctl.cli.helptext import PlainHelpGroup
from gptossctl.cli.output import StdoutLost, document, emit_json, state
from gptossctl.errors import GptossctlError, UsageError
from gptossctl.fsutil import os_error

app = typer.Typer(
    name="gptossctl",
    help="Put gpt-oss into production on air-gapped networks: signed bundles, hardware checks, hardened vLLM.",
    no_args_is_help=True,
    cls=PlainHelpGroup,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(keys.app, name="keys")
app.add_typer(bundle.app, name="bundle")
app.add_typer(trust.app, name="trust")
app.add_typer(hw.app, name="hw")
app.add_typer(profiles.app, name="profiles")
app.command("demo")(demo.demo)
app.command("smoke")(probe.smoke)
app.add_typer(canary.canary_app, name="canary")
app.command("install")(service.install)
app.command("status")(service.status)
app.command("rollback")(service.rollback)
app.command("uninstall")(service.uninstall)
app.add_typer(releases.app, name="releases")
app.add_typer(service.audit_app, name="audit")
app.add_typer(compliance.app, name="compliance")
app.command("support-bundle")(compliance.support_bundle)
app.add_typer(consumers.app, name="consumers")
app.add_typer(consumers.tls_app, name="tls")
app.command("usage")(consumers.usage)


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    plain: bool = typer.Option(False, "--plain", help="Output for a program or a log even at a terminal: every "
                               "value whole, never cut to the window, and progress as log lines."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr (no bar, no log lines)."),
    progress_interval: float | None = typer.Option(None, "--progress-interval", min=0.001, max=86400.0,
                                                   envvar="GPTOSSCTL_PROGRESS_INTERVAL", hidden=True,
                                                   help="Seconds between progress lines without a terminal."),
) -> None:
    state.debug = debug
    state.plain, state.quiet, state.progress_interval = plain, quiet, progress_interval


class _StderrTee:
    """stderr as people see it, also kept for the `--json` document of a usage error: click prints usage
    errors itself (documented standalone behaviour) and exits 2 before any command runs."""

    def __init__(self, real: TextIO) -> None:
        self.real = real
        self.kept = io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.real.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding: the real stream's
        return getattr(self.real, name)


def _usage_message(text: str) -> str:
    errors = [ln.split("Error:", 1)[1].strip() for ln in text.splitlines() if "Error:" in ln]
    return errors[-1] if errors else "the command line is incomplete or wrong"


_STDOUT_ERRNOS = (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EBADF)


def main() -> None:
    """The console script: typer in standalone mode (usage errors exit 2 with usage text), one JSON document
    with --json whatever happens, exit 4 when stdout cannot take it, and exit 70 only for a bug of ours."""
    # What gptossctl creates gets the modes it asks for, whatever the caller's umask: under 000 the release
    # and /etc/gptoss were world-writable, under 077 the service user could not read its own model. Files
    # that hold secrets are created 0600 explicitly.
    os.umask(0o022)
    try:
        _main()
    except StdoutLost as exc:
        try:  # the interpreter flushes stdout on the way out: point fd 1 at /dev/null so that cannot fail again
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, 1)
            os.close(fd)
        except OSError:
            pass
        sys.stderr.write(f"gptossctl: cannot write the result to stdout ({exc}): free the disk or fix the "
                         "redirection, and run the command again\n")
        sys.exit(4)


def _main() -> None:
    as_json = "--json" in sys.argv[1:]
    tee = _StderrTee(sys.stderr) if as_json else None
    try:
        with contextlib.redirect_stderr(tee) if tee is not None else contextlib.nullcontext():  # type: ignore[arg-type]
            app(prog_name="gptossctl")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 2 and tee is not None and not state.emitted:
            message = _usage_message(tee.kept.getvalue())
            emit_json(document(status="error", exit_code=2, error=UsageError(
                message, code="usage", hint="see the usage above, or run the command with --help")))
        sys.exit(code)
    except StdoutLost:
        raise
    except Exception as exc:  # noqa: BLE001 - outside any command (parsing, callbacks): still a bug of ours
        if isinstance(exc, OSError) and exc.errno in _STDOUT_ERRNOS:
            # Outside any command only click writes (--help, --version, usage): its stdout is what failed.
            raise StdoutLost(exc.strerror or str(exc)) from None
        if state.debug:
            raise
        mapped = os_error(exc)  # a path the system refused (too long, a loop): bad input, not a bug
        bug = mapped if isinstance(mapped, GptossctlError) else GptossctlError(
            f"internal error: {exc.__class__.__name__}: {exc}", hint="rerun with --debug and report the traceback")
        if as_json:
            emit_json(document(status="error", exit_code=bug.exit_code, error=bug))
        else:
            sys.stderr.write(f"error ({bug.code}): {bug.message}\nnext: {bug.hint}\n")
        sys.exit(bug.exit_code)
