"""Charts as inline SVG, built by hand: stacked bars over time buckets, lines with gaps, and a
histogram; each with its axes, a legend and an accessible ``<title>`` and ``<desc>``.

Every text that reaches the SVG (a relay's or a sender's name, a label) is escaped; colours and
sizes are presentation attributes, not ``style``, so the view's Content-Security-Policy (which
allows no inline style but its one stylesheet) lets them through. Each bar and point carries its
own ``<title>``: a browser shows it on hover.

A chart's ``<svg>`` says what it shows in ``data-`` attributes (``data-chart``, and each
series' ``<g data-series=... data-total=...>``), for tests and for whoever reads the source.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Series", "bars", "lines", "nice_top"]

WIDTH = 760
HEIGHT = 240
LEGEND_ROW = 16
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 14, 58
FONT = 'font-family="system-ui,sans-serif" font-size="11"'
AXIS = "#69707d"
GRID = "#e3e6eb"


@dataclass(frozen=True)
class Series:
    """One named series: a value per bucket (None: nothing there, a gap in a line)."""

    name: str
    colour: str
    values: Sequence[float | None]

    @property
    def total(self) -> float:
        return sum(v for v in self.values if v is not None)


def x(value: object) -> str:
    """``value`` escaped for SVG (XML) text and attribute values."""
    return html.escape(str(value), quote=True)


def nice_top(peak: float) -> tuple[float, float]:
    """A round top for an axis reaching ``peak``, and the step of its (about four) gridlines."""
    if peak <= 0:
        return 1.0, 0.25 if peak < 0 else 1.0
    raw = peak / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return step * math.ceil(peak / step - 1e-9), step


def _number(value: float) -> str:
    return f"{value:g}" if value < 10000 else f"{value / 1000:g}k"


class _Frame:
    """The plot area of one chart and its coordinates."""

    def __init__(self, count: int, top: float) -> None:
        self.count = max(1, count)
        self.top = top or 1.0
        self.width = WIDTH - LEFT - RIGHT
        self.height = HEIGHT - TOP - BOTTOM

    def x_of(self, index: float) -> float:
        return LEFT + self.width * index / self.count

    def y_of(self, value: float) -> float:
        return TOP + self.height * (1 - min(value, self.top) / self.top)


def _open(
    ident: str, kind: str, title: str, desc: str, series: Sequence[Series], height: float
) -> list[str]:
    names = " ".join(s.name.replace(" ", "_") for s in series)
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:g}" '
        f'width="100%" role="img" aria-labelledby="{ident}-t {ident}-d" class="chart" '
        f'data-chart="{x(ident)}" data-kind="{kind}" data-series="{x(names)}" {FONT}>',
        f'<title id="{ident}-t">{x(title)}</title><desc id="{ident}-d">{x(desc)}</desc>',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height:g}" fill="#ffffff"/>',
    ]


def _y_axis(frame: _Frame, step: float, label: Callable[[float], str]) -> list[str]:
    parts = []
    ticks = round(frame.top / step)
    for i in range(ticks + 1):
        value = step * i
        y = frame.y_of(value)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{GRID if i else AXIS}" stroke-width="1"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{AXIS}">'
            f"{x(label(value))}</text>"
        )
    return parts


def _x_axis(frame: _Frame, labels: Sequence[str], *, centred: bool) -> list[str]:
    every = max(1, math.ceil(len(labels) / 8))
    parts = []
    for i, label in enumerate(labels):
        if i % every:
            continue
        at = frame.x_of(i + 0.5) if centred else frame.x_of(i)
        parts.append(
            f'<line x1="{at:.1f}" x2="{at:.1f}" y1="{TOP + frame.height}" '
            f'y2="{TOP + frame.height + 4}" stroke="{AXIS}"/>'
            f'<text x="{at:.1f}" y="{TOP + frame.height + 16}" text-anchor="middle" '
            f'fill="{AXIS}">{x(label)}</text>'
        )
    return parts


def _legend(series: Sequence[Series], total: Callable[[Series], str]) -> tuple[list[str], int]:
    """The legend under the axis, in as many rows as it takes; and how many more rows than one
    (each makes the chart ``LEGEND_ROW`` taller)."""
    parts = ['<g class="legend">']
    at, row = float(LEFT), 0
    for s in series:
        text = f"{s.name} ({total(s)})"
        width = 30 + 6.2 * len(text)
        if at > LEFT and at + width > WIDTH - RIGHT:
            at, row = float(LEFT), row + 1
        y = HEIGHT - 14 + row * LEGEND_ROW
        parts.append(
            f'<rect x="{at:.1f}" y="{y - 9}" width="10" height="10" fill="{x(s.colour)}"/>'
            f'<text x="{at + 14:.1f}" y="{y}" fill="#1d2330">{x(text)}</text>'
        )
        at += width
    parts.append("</g>")
    return parts, row


def _empty_note(frame: _Frame, note: str) -> str:
    return (
        f'<text x="{LEFT + frame.width / 2:.1f}" y="{TOP + frame.height / 2:.1f}" '
        f'text-anchor="middle" fill="{AXIS}" font-size="13">{x(note)}</text>'
    )


def bars(
    ident: str,
    *,
    title: str,
    desc: str,
    labels: Sequence[str],
    tips: Sequence[str],
    series: Sequence[Series],
    empty: str = "Nothing in this window",
) -> str:
    """Stacked bars, one per bucket (``labels`` under the axis, ``tips`` naming each bucket in
    its bars' hover titles), the series stacked in the order given."""
    count = len(labels)
    stacks = [sum(s.values[i] or 0 for s in series) for i in range(count)]
    top, step = nice_top(max(stacks, default=0))
    frame = _Frame(count, top)
    legend, more = _legend(series, lambda s: f"{s.total:g}")
    parts = _open(ident, "bars", title, desc, series, HEIGHT + more * LEGEND_ROW)
    parts += _y_axis(frame, step, _number)
    width = frame.width / frame.count
    gap = min(2.0, width * 0.15)
    base = [0.0] * count
    for s in series:
        parts.append(f'<g data-series="{x(s.name)}" data-total="{s.total:g}">')
        for i, value in enumerate(s.values):
            if not value:
                continue
            y_high, y_low = frame.y_of(base[i] + value), frame.y_of(base[i])
            parts.append(
                f'<rect x="{frame.x_of(i) + gap / 2:.1f}" y="{y_high:.1f}" '
                f'width="{max(0.5, width - gap):.1f}" height="{max(0.5, y_low - y_high):.1f}" '
                f'fill="{x(s.colour)}"><title>{x(tips[i])}: {x(s.name)} {value:g}</title></rect>'
            )
            base[i] += value
        parts.append("</g>")
    parts += _x_axis(frame, labels, centred=True)
    if not any(stacks):
        parts.append(_empty_note(frame, empty))
    parts += legend
    parts.append("</svg>")
    return "".join(parts)


def lines(
    ident: str,
    *,
    title: str,
    desc: str,
    labels: Sequence[str],
    tips: Sequence[str],
    series: Sequence[Series],
    unit: Callable[[float], str],
    empty: str = "Nothing in this window",
) -> str:
    """A line per series over the buckets, broken where a value is None; a dot per value."""
    count = len(labels)
    peak = max((v for s in series for v in s.values if v is not None), default=0.0)
    top, step = nice_top(peak)
    frame = _Frame(count, top)

    def legend_value(s: Series) -> str:
        present = [v for v in s.values if v is not None]
        return f"max {unit(max(present))}" if present else "none"

    legend, more = _legend(series, legend_value)
    parts = _open(ident, "lines", title, desc, series, HEIGHT + more * LEGEND_ROW)
    parts += _y_axis(frame, step, unit)
    for s in series:
        present = [v for v in s.values if v is not None]
        parts.append(f'<g data-series="{x(s.name)}" data-points="{len(present)}">')
        path: list[str] = []
        dots: list[str] = []
        pen_up = True
        for i, value in enumerate(s.values):
            if value is None:
                pen_up = True
                continue
            px, py = frame.x_of(i + 0.5), frame.y_of(value)
            path.append(f"{'M' if pen_up else 'L'}{px:.1f} {py:.1f}")
            pen_up = False
            dots.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{x(s.colour)}">'
                f"<title>{x(tips[i])}: {x(s.name)} {x(unit(value))}</title></circle>"
            )
        if path:
            parts.append(
                f'<path d="{" ".join(path)}" fill="none" stroke="{x(s.colour)}" '
                'stroke-width="2" stroke-linejoin="round"/>'
            )
        parts += dots
        parts.append("</g>")
    parts += _x_axis(frame, labels, centred=True)
    if peak <= 0:
        parts.append(_empty_note(frame, empty))
    parts += legend
    parts.append("</svg>")
    return "".join(parts)
