"""Imports point one way and the CLI starts fast: heavy libraries load only inside commands."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("cryptography", "pydantic", "yaml", "pynvml", "httpx")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return {m.split(".")[0] for m in out.split()}


def test_cli_entry_imports_no_heavy_library() -> None:
    loaded = _modules_after("import gptossctl.cli.main")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_help_does_not_import_heavy_libraries() -> None:
    code = ("import sys; sys.argv=['gptossctl','--help']\nfrom gptossctl.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass")
    loaded = _modules_after(code)
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_domain_packages_never_import_the_cli_stack() -> None:
    loaded = _modules_after("import gptossctl.bundle.verify, gptossctl.pack.pack, gptossctl.bundle.sign, "
                            "gptossctl.install.preflight, gptossctl.probe.canary.run, gptossctl.probe.smoke, "
                            "gptossctl.install.lifecycle, gptossctl.compliance.checks, gptossctl.compliance.support, "
                            "gptossctl.pack.pack, gptossctl.demo.run")
    assert "typer" not in loaded and "rich" not in loaded
