"""Durations as sysadmins write them: 90d, 12h, 30m, 2w (kept free of heavy imports)."""

from __future__ import annotations

import re

from gptossctl.errors import UsageError

DURATION_RE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """'90d' -> seconds. Units s, m, h, d, w."""
    m = DURATION_RE.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise UsageError(f"duration {text!r} is not like 90d, 12h, 30m or 2w", code="usage.bad_duration")
    return int(m.group(1)) * _UNITS[m.group(2)]
