"""Filling the project's templates (systemd units): `{{ name }}` placeholders, every one given a value, none left."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path

from gptossctl.errors import UsageError

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_UNSAFE_IN_EXEC = re.compile(r"[\x00-\x20\x7f-\x9f%\\$\"'`;]|\s")
# Anything that ends or splits a unit file's line (systemd reads \n and \r; editors and other parsers also
# \v, \f, NEL, U+2028/2029), and every other control character: a value holding one would add directives.
_UNSAFE_IN_UNIT = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_unit_value(value: object, what: str) -> str:
    """Every value put into a unit or drop-in (paths of releases, interpreters, key files, model directories,
    instance names) goes through here: a newline or other control character is refused (exit 2,
    service.unsafe_unit_value) before anything is written."""
    text = str(value)
    bad = _UNSAFE_IN_UNIT.search(text)
    if bad is not None:
        raise UsageError(f"{what} {text!r} holds the control character {bad.group()!r}: in a systemd unit a line "
                         "break would add directives of its own", code="service.unsafe_unit_value",
                         hint=f"give {what} without newlines or control characters (rename or link the file)")
    return text


def fill_template(template: str, values: Mapping[str, str], *, lines: Collection[str] = ()) -> str:
    """Fill {{ name }} placeholders; a placeholder without a value is an error, never left in a unit. Every
    value passes check_unit_value; those named in `lines` are several directives, checked line by line."""
    unknown = sorted(set(_PLACEHOLDER.findall(template)) - set(values))
    if unknown:
        raise UsageError(f"unit template has unknown placeholders: {', '.join(unknown)}", code="service.bad_template")
    for name, value in values.items():
        for line in value.split("\n") if name in lines else (value,):
            check_unit_value(line, f"the unit's {name}")
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
