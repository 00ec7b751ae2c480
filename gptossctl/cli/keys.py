"""`gptossctl keys ...`: Ed25519 signing keys."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from gptossctl.cli.output import JsonOpt, run, stderr, stdout

app = typer.Typer(no_args_is_help=True, help="Create and show Ed25519 signing keys.")


def _new_passphrase() -> bytes:
    from gptossctl.bundle.keys import PASSPHRASE_ENV, checked_passphrase
    from gptossctl.errors import EnvironmentNotReady

    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return checked_passphrase(value)
    if not os.isatty(0):
        raise EnvironmentNotReady("no passphrase for the new key", code="key.passphrase_missing",
                                  hint=f"set {PASSPHRASE_ENV}, run on a terminal, or pass --unencrypted")
    import getpass

    first = getpass.getpass("Passphrase for the new key: ")
    if not first or first != getpass.getpass("Again: "):
        from gptossctl.errors import UsageError

        raise UsageError("passphrases were empty or did not match", code="key.passphrase_mismatch")
    return checked_passphrase(first)


@app.command("generate")
def generate(
    out: Path = typer.Option(..., "--out", help="Directory for NAME.key and NAME.pub."),
    name: str = typer.Option(..., "--name", help="Base name of the key files."),
    unencrypted: bool = typer.Option(False, "--unencrypted", help="Write the private key without a passphrase (insecure)."),
    as_json: bool = JsonOpt,
) -> None:
    """Generate an Ed25519 key pair: NAME.key (0600, passphrase-encrypted) and NAME.pub.

    The passphrase comes from GPTOSSCTL_KEY_PASSPHRASE or a prompt. Exit 2 if the files exist.
    """
    from gptossctl.bundle.keys import generate_key

    def action():  # type: ignore[no-untyped-def]
        if unencrypted:
            stderr.print("[yellow]warning:[/yellow] writing an UNENCRYPTED private key: anyone who can read "
                         "the file can sign bundles")
        return generate_key(out, name, passphrase=None if unencrypted else _new_passphrase())

    run(action, as_json=as_json, render=lambda r: stdout.print(
        f"key id {r.keyid}\nprivate {r.private_path} (0600{'' if r.encrypted else ', UNENCRYPTED'})\n"
        f"public  {r.public_path}"))


@app.command("show")
def show(file: Path = typer.Argument(..., help="A .pub or .key file."), as_json: bool = JsonOpt) -> None:
    """Print the key id (SHA-256 of the raw public key) of a key file."""
    from gptossctl.bundle.keys import load_key_any

    run(lambda: load_key_any(file), as_json=as_json, render=lambda r: stdout.print(r.keyid))
