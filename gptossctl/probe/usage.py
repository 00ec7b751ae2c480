"""Usage per consumer, day or route, from the router's JSON access log (install/edge.py's log_format).

Each line: time, consumer (a name, never a key), method, route, status, bytes, request_time, upstream,
request_id. Tokens are not counted: nginx-light (Debian) has no njs and no body filter, so the router
never sees the `usage` object in vLLM's replies; requests, errors, 429s, latency and bytes are exact.
Lines that are not the router's JSON are counted as `unreadable`, never a crash.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

BY = ("consumer", "day", "route")


@dataclass(frozen=True)
class UsageRow:
    key: str
    requests: int
    errors: int  # 5xx and 4xx other than 429
    limited: int  # 429
    p50_s: float | None
    p95_s: float | None
    bytes_sent: int
    tokens: int | None = None  # not known at the router: see the module docstring

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "requests": self.requests, "errors": self.errors, "rate_limited": self.limited,
                "p50_s": self.p50_s, "p95_s": self.p95_s, "bytes_sent": self.bytes_sent, "tokens": self.tokens}


@dataclass(frozen=True)
class UsageSummary:
    by: str
    since: str
    rows: tuple[UsageRow, ...]
    unreadable: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "gptossctl.usage/1", "by": self.by, "since": self.since,
                "rows": [r.to_dict() for r in self.rows], "unreadable_lines": self.unreadable,
                "tokens": "not counted: the router (nginx without njs) does not see response bodies"}

    def csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow([self.by, "requests", "errors", "rate_limited", "p50_s", "p95_s", "bytes_sent"])
        for r in self.rows:
            w.writerow([r.key, r.requests, r.errors, r.limited, r.p50_s, r.p95_s, r.bytes_sent])
        return out.getvalue()

    def prometheus(self) -> str:
        label = self.by
        lines: list[str] = []
        families = (("gptoss_usage_requests_total", "Requests through the router", "requests"),
                    ("gptoss_usage_errors_total", "Requests answered 4xx/5xx other than 429", "errors"),
                    ("gptoss_usage_rate_limited_total", "Requests answered 429", "limited"),
                    ("gptoss_usage_bytes_sent_total", "Response bytes", "bytes_sent"))
        for metric, help_, attr in families:
            lines += [f"# HELP {metric} {help_} (since {self.since}).", f"# TYPE {metric} counter"]
            lines += [f'{metric}{{{label}="{_esc(r.key)}"}} {getattr(r, attr)}' for r in self.rows]
        return "\n".join(lines) + "\n"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))], 3)


def summarise(lines: Iterable[str | bytes], *, by: str = "consumer", since: datetime | None = None) -> UsageSummary:
    if by not in BY:
        raise ValueError(by)
    groups: dict[str, list[dict[str, Any]]] = {}
    unreadable = 0
    for raw in lines:
        try:
            rec = json.loads(raw)
            t = datetime.fromisoformat(rec["time"])
            status, rt = int(rec["status"]), float(rec["request_time"])
        except (ValueError, KeyError, TypeError):
            unreadable += 1
            continue
        if since is not None and t < since:
            continue
        key = {"consumer": rec.get("consumer") or "-", "day": t.astimezone(UTC).date().isoformat(),
               "route": str(rec.get("route", "-"))}[by]
        groups.setdefault(key, []).append({"status": status, "rt": rt, "bytes": int(rec.get("bytes_sent") or 0)})
    rows = []
    for key, recs in sorted(groups.items()):
        times = [r["rt"] for r in recs]
        rows.append(UsageRow(key, len(recs), sum(1 for r in recs if r["status"] >= 400 and r["status"] != 429),
                             sum(1 for r in recs if r["status"] == 429), _quantile(times, 0.5), _quantile(times, 0.95),
                             sum(r["bytes"] for r in recs)))
    return UsageSummary(by, since.isoformat() if since else "the log's start", tuple(rows), unreadable)
