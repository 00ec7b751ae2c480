"""Durations as sysadmins write them: 90d, 12h, 30m, 2w (kept free of heavy imports)."""

from __future__ import annotations

import re

from gptossctl.errors import UsageError

DURATION_RE = re.compile(r"([0-9]{1,12})([smhdw])")  # ASCII digits only; matched whole (fullmatch)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_SECONDS = 100 * 366 * 86400  # a century: anything longer is a typo, and datetime arithmetic overflows


def is_duration(text: str) -> bool:
    return DURATION_RE.fullmatch(text) is not None


def parse_duration(text: str) -> int:
    """'90d' -> seconds. Units s, m, h, d, w; more than zero and at most a century."""
    m = DURATION_RE.fullmatch(text.strip())
    seconds = int(m.group(1)) * _UNITS[m.group(2)] if m else 0
    if not m or seconds == 0 or seconds > MAX_SECONDS:
        raise UsageError(f"duration {text!r} is not a positive duration like 90d, 12h, 30m or 2w, of at most 100 years",
                         code="usage.bad_duration", hint="write a number followed by s, m, h, d or w, e.g. 30m")
    return seconds
