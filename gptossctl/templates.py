"""Filling the project's templates (systemd units): `{{ name }}` placeholders, every one given a value, none left."""

from __future__ import annotations

import re
from collections.abc import Mapping

from gptossctl.errors import UsageError

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")

def fill_template(template: str, values: Mapping[str, str]) -> str:
    """Fill {{ name }} placeholders; a placeholder without a value is an error, never left in a unit."""
    unknown = sorted(set(_PLACEHOLDER.findall(template)) - set(values))
    if unknown:
        raise UsageError(f"unit template has unknown placeholders: {', '.join(unknown)}", code="service.bad_template")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)

