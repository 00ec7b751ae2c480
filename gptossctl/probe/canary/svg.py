"""Inline SVG charts with axes, ticks, units and legends, for pages opened on an air-gapped desk (no
script, no external reference). Every text that came from outside is escaped."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#2f6db5", "#d9822b", "#3b9c5a", "#b5443b", "#7a5ab5", "#6b6b6b")
_W, _H = 520, 240
_L, _R, _T, _B = 58, 16, 44, 46  # margins: room for tick labels and axis titles


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]  # (x, y), x ascending
    color: str = PALETTE[0]
    dashed: bool = False


def nice_ticks(lo: float, hi: float, n: int = 5, *, integer: bool = False) -> list[float]:
    """About n round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps; whole steps for counts)."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = max((hi - lo) / max(1, n), 1.0 if integer else 0.0)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(v, 10))
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.0f}" if v == int(v) else f"{v:.1f}"
    return f"{v:g}" if abs(v) >= 0.01 else f"{v:.1e}"


class _Frame:
    """Plot area, scales, axes and titles."""

    def __init__(self, title: str, xs: tuple[float, float], ys: tuple[float, float], x_label: str, y_label: str,
                 x_format: Callable[[float], str] = _fmt, *, y_counts: bool = False) -> None:
        self.xt, self.yt = nice_ticks(*xs), nice_ticks(*ys, integer=y_counts)
        self.x0, self.x1, self.y0, self.y1 = self.xt[0], self.xt[-1], self.yt[0], self.yt[-1]
        self.title, self.x_label, self.y_label, self.x_format = title, x_label, y_label, x_format

    def x(self, v: float) -> float:
        return _L + (v - self.x0) / ((self.x1 - self.x0) or 1) * (_W - _L - _R)

    def y(self, v: float) -> float:
        return _H - _B - (v - self.y0) / ((self.y1 - self.y0) or 1) * (_H - _T - _B)

    def open(self) -> str:
        parts = [(f'<svg width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
                  f'role="img" aria-label="{escape(self.title)}" font-family="sans-serif" font-size="11">'),
                 (f'<text x="{_W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">'
                  f'{escape(self.title)}</text>')]
        for t in self.yt:
            y = self.y(t)
            parts.append(f'<line x1="{_L}" x2="{_W - _R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                         f'<text x="{_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
        for t in self.xt:
            x = self.x(t)
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_H - _B}" y2="{_H - _B + 4}" stroke="#555"/>'
                         f'<text x="{x:.1f}" y="{_H - _B + 16}" text-anchor="middle">{escape(self.x_format(t))}</text>')
        parts.append(f'<line x1="{_L}" x2="{_W - _R}" y1="{_H - _B}" y2="{_H - _B}" stroke="#555"/>'
                     f'<line x1="{_L}" x2="{_L}" y1="{_T}" y2="{_H - _B}" stroke="#555"/>'
                     f'<text x="{(_L + _W - _R) / 2}" y="{_H - 8}" text-anchor="middle">{escape(self.x_label)}</text>'
                     f'<text transform="translate(14 {(_T + _H - _B) / 2}) rotate(-90)" text-anchor="middle">'
                     f'{escape(self.y_label)}</text>')
        return "".join(parts)


def histogram(values: Sequence[float], *, title: str, x_label: str, bins: int = 20) -> str:
    """Counts of `values` in equal bins, x axis in the values' unit (named in x_label), y axis requests."""
    if not values:
        return f'<p class="note">{escape(title)}: no completed requests.</p>'
    lo, hi = min(values), max(values)
    ticks = nice_ticks(lo, hi if hi > lo else lo + max(abs(lo) * 0.1, 1.0))
    lo, hi = ticks[0], ticks[-1]
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    f = _Frame(title, (lo, hi), (0, max(counts)), x_label, "requests", y_counts=True)
    bars = []
    for i, c in enumerate(counts):
        if not c:
            continue
        x0, x1 = f.x(lo + i * width), f.x(lo + (i + 1) * width)
        bars.append(f'<rect x="{x0:.1f}" y="{f.y(c):.1f}" width="{max(1.0, x1 - x0 - 1):.1f}" '
                    f'height="{f.y(0) - f.y(c):.1f}" fill="{PALETTE[0]}"><title>{_fmt(lo + i * width)}-'
                    f'{_fmt(lo + (i + 1) * width)}: {c} request(s)</title></rect>')
    return f.open() + "".join(bars) + "</svg>"


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
               x_format: Callable[[float], str] = _fmt, y_floor_zero: bool = True,
               reference: tuple[str, float] | None = None, y_counts: bool = False) -> str:
    """One line per series with a marker per point, a legend, and an optional dashed reference line
    (a baseline)."""
    pts = [p for s in series for p in s.points]
    if not pts:
        return f'<p class="note">{escape(title)}: no data.</p>'
    ys = [p[1] for p in pts] + ([reference[1]] if reference else [])
    y_lo = 0.0 if y_floor_zero else min(ys)
    f = _Frame(title, (min(p[0] for p in pts), max(p[0] for p in pts)), (y_lo, max(ys)), x_label, y_label, x_format,
               y_counts=y_counts)
    out = [f.open()]
    if reference:
        y = f.y(reference[1])
        out.append(f'<line x1="{_L}" x2="{_W - _R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#222" stroke-dasharray="5 4">'
                   f'<title>{escape(reference[0])}: {_fmt(reference[1])}</title></line>')
    for s in series:
        coords = " ".join(f"{f.x(x):.1f},{f.y(y):.1f}" for x, y in s.points)
        dash = ' stroke-dasharray="6 3"' if s.dashed else ""
        out.append(f'<polyline points="{coords}" fill="none" stroke="{s.color}" stroke-width="2"{dash}/>')
        out += [f'<circle cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="3" fill="{s.color}"><title>{escape(s.label)}: '
                f'{escape(x_format(x))}, {_fmt(y)}</title></circle>' for x, y in s.points]
    legend = [(s.label, s.color, s.dashed) for s in series] + ([(reference[0], "#222", True)] if reference else [])
    for i, (label, color, dashed) in enumerate(legend):
        lx = _L + 8 + i * ((_W - _L - _R) // max(1, len(legend)))
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        out.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{_T - 12}" y2="{_T - 12}" stroke="{color}" stroke-width="2"'
                   f'{dash}/><text x="{lx + 22}" y="{_T - 8}">{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)
