"""Entry point: `gptossctl <noun> <verb>`."""

from __future__ import annotations

import sys

import typer

from gptossctl import __version__
from gptossctl.cli import bundle, compliance, demo, hw, keys, probe, profiles, service
from gptossctl.cli.output import document, emit_json, state

app = typer.Typer(
    name="gptossctl",
    help="Put gpt-oss into production on air-gapped networks: signed bundles, hardware checks, hardened vLLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(keys.app, name="keys")
app.add_typer(bundle.app, name="bundle")
app.add_typer(hw.app, name="hw")
app.add_typer(profiles.app, name="profiles")
app.command("demo")(demo.demo)
app.command("smoke")(probe.smoke)
app.add_typer(probe.canary_app, name="canary")
app.command("install")(service.install)
app.command("status")(service.status)
app.command("rollback")(service.rollback)
app.command("uninstall")(service.uninstall)
app.add_typer(service.audit_app, name="audit")
app.add_typer(compliance.app, name="compliance")
app.command("support-bundle")(compliance.support_bundle)


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    state.debug = debug


def _click():  # type: ignore[no-untyped-def]
    # typer >= 0.22 vendors click as typer._click; older releases depend on click itself.
    try:
        from typer import _click as click  # type: ignore[attr-defined]
    except ImportError:
        import click  # type: ignore[no-redef]
    return click


def main() -> None:
    click = _click()
    try:
        rv = app(standalone_mode=False)
    except click.exceptions.NoArgsIsHelp:
        # Help was printed for a bare group: that is usage, not success.
        sys.exit(2)
    except click.UsageError as exc:
        # Usage errors get the same JSON document as every other failure when --json was asked for.
        if "--json" in sys.argv:
            from gptossctl.errors import UsageError

            emit_json(document(status="error", exit_code=2, error=UsageError(exc.format_message())))
        else:
            exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)
