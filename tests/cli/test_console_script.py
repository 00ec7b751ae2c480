"""The installed console script, run as a stranger runs it: in a subprocess, not through Typer's test runner.

A green suite once hid a CLI that crashed on every usage error (a private typer module had moved): these go
through the real entry point that pip/uv installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

GPTOSSCTL = Path(sys.executable).with_name("gptossctl")
REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GPTOSSCTL), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv", [(), ("bundle",), ("keys",), ("hw",), ("canary",), ("audit",), ("compliance",)],
                         ids=lambda a: " ".join(a) or "bare")
def test_a_bare_group_is_usage_with_exit_2(argv: tuple[str, ...]) -> None:
    r = run(*argv)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Usage: gptossctl" in r.stdout + r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("argv", [("bundle", "verify", "--bogus"), ("bundle", "pack", "x.yaml"), ("nope",),
                                  ("hw", "check", "--model"), ("install", "b", "--port", "abc"),
                                  ("bundle", "verify", "b", "--workers", "0")],
                         ids=lambda a: " ".join(a))
def test_usage_errors_exit_2_with_usage_text_and_no_traceback(argv: tuple[str, ...]) -> None:
    r = run(*argv)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Error:" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("argv", [("bundle", "--json"), ("bundle", "verify", "--bogus", "--json"),
                                  ("bundle", "pack", "x.yaml", "--json"), ("nope", "--json"),
                                  ("install", "b", "--port", "abc", "--json")],
                         ids=lambda a: " ".join(a))
def test_usage_errors_with_json_print_one_result_document(argv: tuple[str, ...]) -> None:
    r = run(*argv)
    assert r.returncode == 2, (r.stdout, r.stderr)
    doc = json.loads(r.stdout)  # exactly one document: json.loads refuses trailing data
    assert doc["schema"] == "gptossctl.result/1"
    assert doc["exit_code"] == 2 and doc["status"] == "error"
    assert doc["error"]["code"] == "usage" and doc["error"]["message"] and doc["error"]["hint"]
    assert "Traceback" not in r.stderr


def test_version_and_help_exit_0() -> None:
    assert run("--version").stdout.strip() == "0.1.0"
    r = run("bundle", "verify", "--help")
    assert r.returncode == 0 and "--trust" in r.stdout


def test_no_private_module_of_a_dependency_is_imported() -> None:
    """typer's private click module changed under us in a minor release: import only what libraries document."""
    offenders = []
    pattern = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\s+([\w, ()]+)|import\s+([\w.]+))", re.M)
    for path in sorted((REPO / "gptossctl").rglob("*.py")):
        for m in pattern.finditer(path.read_text()):
            module = m.group(1) or m.group(3)
            if module.startswith(("gptossctl", ".", "__future__")):
                continue
            names = [n.strip(" ()") for n in (m.group(2) or "").split(",")]
            if any(part.startswith("_") for part in module.split(".")) or any(n.startswith("_") for n in names if n):
                offenders.append(f"{path.relative_to(REPO)}: {m.group(0).strip()}")
        offenders += [f"{path.relative_to(REPO)}: {a}" for a in re.findall(r"\b(?:hashlib|typer|click)\._\w+", path.read_text())]
    assert not offenders, offenders
