"""The frame of the canary's HTML pages (the run report and the trend): one self-contained document, a
Content-Security-Policy that forbids every external load, no script, inline SVG charts. Helpers for
verdict banners, tiles and tables; every value from outside goes through html.escape."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; base-uri 'none'"
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f5f6f8;color:#1d2430}
main{max-width:1120px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:22px;margin:8px 0 4px} h2{font-size:18px;margin:30px 0 8px;border-bottom:2px solid #dde1e7;
padding-bottom:4px} h3{font-size:15px;margin:18px 0 6px}
.facts{color:#4a5363;font-size:13px;margin:4px 0 14px}
.verdict{border-radius:6px;padding:12px 16px;margin:10px 0;font-size:15px}
.verdict b{font-size:18px;display:block;margin-bottom:4px}
.verdict.pass{background:#e3f4e6;border-left:6px solid #2e8b46} .verdict.fail{background:#fbe5e3;border-left:6px solid #c0392b}
.verdict ul{margin:4px 0 0 18px;padding:0}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.tile{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px 14px;min-width:140px}
.tile .v{font-size:22px;font-weight:600} .tile .l{font-size:12px;color:#4a5363}
.tile.bad .v{color:#c0392b} .tile.good .v{color:#2e8b46}
table{border-collapse:collapse;margin:8px 0 14px;background:#fff;font-size:13px}
th,td{border:1px solid #dde1e7;padding:5px 9px;text-align:left;vertical-align:top}
th{background:#eef1f5} td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.bad td{background:#fdf0ee} tr.good td{background:#f0f8f1}
.tag{display:inline-block;border-radius:3px;padding:0 6px;font-size:12px;font-weight:600}
.tag.pass,.tag.better{background:#d5efda;color:#1e6b34} .tag.fail,.tag.worse{background:#f7d4cf;color:#8e2a1f}
.tag.mixed{background:#fbe3c4;color:#8a4b00}
.tag.same,.tag.on.par,.tag.na{background:#e6e9ee;color:#3b4250}
.tag.inconclusive,.tag.not.enough.data{background:#fff3c4;color:#6b5400}
.charts{display:flex;flex-wrap:wrap;gap:12px} .charts svg{background:#fff;border:1px solid #dde1e7;border-radius:6px}
.note{color:#4a5363;font-size:13px} code,.mono{font-family:ui-monospace,Menlo,monospace;font-size:12px}
.answer{white-space:pre-wrap;font-family:ui-monospace,Menlo,monospace;font-size:12px;max-width:420px}
"""


def page(title: str, body: str, *, css: str = "") -> str:
    """`css`: a page's own rules after the shared ones (the compliance page's cards); never from outside."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title><style>{_CSS}{css}</style></head>\n<body><main>\n{body}\n</main></body></html>\n")


def verdict_box(ok: bool, headline: str, reasons: Sequence[str]) -> str:
    items = "".join(f"<li>{escape(r)}</li>" for r in reasons)
    return (f'<div class="verdict {"pass" if ok else "fail"}"><b>{escape(headline)}</b>'
            + (f"<ul>{items}</ul>" if items else "") + "</div>")


def tile(label: str, value: str, state: str = "") -> str:
    return f'<div class="tile {state}"><div class="v">{escape(value)}</div><div class="l">{escape(label)}</div></div>'


def tag(text: str) -> str:
    return f'<span class="tag {escape(text.replace("/", ""))}">{escape(text)}</span>'


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: Sequence[int] = (),
          row_class: Sequence[str] | None = None) -> str:
    """Cells are escaped unless given as Raw."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        cells = "".join(f'<td{" class=n" if j in numeric else ""}>{c.html if isinstance(c, Raw) else escape(str(c))}</td>'
                        for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


class Raw:
    """HTML built here (a tag, a chart), not to be escaped again."""

    def __init__(self, html: str) -> None:
        self.html = html


def num(v: float | None, digits: int = 1, unit: str = "") -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{(' ' + unit) if unit else ''}"


def pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.0%}"


def interval_text(row: dict[str, Any]) -> str:
    """A comparison row's bootstrap interval of the change ('+12% to +30%', or '+0.10 to +0.20' for a
    difference), or why there is none."""
    iv = row.get("interval")
    if iv is None:
        n = row.get("samples")
        return f"– (n {n[0]}/{n[1]})" if n else "–"
    lo, hi = iv
    text = f"{lo:+.0%} to {hi:+.0%}" if row.get("relative") else f"{lo:+.2f} to {hi:+.2f}"
    return text + (f" (n {row['samples'][0]}/{row['samples'][1]})" if row.get("samples") else "")
