"""Filling the project's templates (systemd units): `{{ name }}` placeholders, every one given a value, none left."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from gptossctl.errors import UsageError

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_UNSAFE_IN_EXEC = re.compile(r"[\x00-\x20\x7f-\x9f%\\$\"'`;]|\s")


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """Fill {{ name }} placeholders; a placeholder without a value is an error, never left in a unit."""
    unknown = sorted(set(_PLACEHOLDER.findall(template)) - set(values))
    if unknown:
        raise UsageError(f"unit template has unknown placeholders: {', '.join(unknown)}", code="service.bad_template")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def check_python(path: Path | str, *, option: str = "--vllm-python") -> Path:
    """The interpreter a unit runs, refused (exit 2, install.bad_python) when systemd would not run exactly
    that file: not absolute, or holding a character ExecStart= gives a meaning (control characters,
    whitespace, %, $, quotes, backslash)."""
    text = str(path)
    bad = _UNSAFE_IN_EXEC.search(text)
    if bad is not None:
        raise UsageError(f"{option} {text!r} holds {bad.group()!r}, which systemd's ExecStart= would not pass "
                         "through as written (a newline adds directives, a space splits the command)",
                         code="install.bad_python", hint=f"give {option} as an absolute path without whitespace, "
                         "control characters, %, $, quotes or backslashes (move or link the environment there)")
    if not text.startswith("/"):
        raise UsageError(f"{option} {text!r} is not an absolute path", code="install.bad_python",
                         hint=f"give {option} as an absolute path, e.g. /opt/vllm/bin/python")
    return Path(text)
