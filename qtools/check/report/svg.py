"""Plots as inline SVG strings (no plotting library, no external assets): grouped bar charts and a histogram."""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#3b6fb6", "#e07b39", "#4a9d5b", "#b84a62", "#7a5cb8", "#8c8c8c")
WIDTH, HEIGHT = 960, 320
LEFT, RIGHT, TOP, BOTTOM = 110, 16, 36, 90


def _nice_max(value: float) -> float:
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def bar_chart(
    title: str,
    categories: list[str],
    series: dict[str, list[float | None]],
    y_label: str = "",
    y_max: float | None = None,
    cap: float | None = None,
) -> str:
    """Grouped bars: one group per category, one bar per series. None values leave a gap; values above `cap`
    (e.g. infinite SQNR of identical weights) are drawn at the cap with a '∞' mark."""
    finite = [v for values in series.values() for v in values if v is not None and math.isfinite(v)]
    if cap is not None:
        finite = [min(v, cap) for v in finite]
    top = y_max if y_max is not None else _nice_max(max(finite, default=1.0) if cap is None else cap)
    low = min(0.0, min(finite, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    group_w = plot_w / max(1, len(categories))
    bar_w = max(1.0, group_w * 0.8 / max(1, len(series)))

    def y(value: float) -> float:
        return TOP + plot_h * (top - value) / (top - low)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    for tick in range(6):
        value = low + (top - low) * tick / 5
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11">{value:.4g}</text>'
        )
    for group, category in enumerate(categories):
        x0 = LEFT + group * group_w + group_w * 0.1
        for number, (name, values) in enumerate(series.items()):
            value = values[group]
            if value is None or math.isnan(value):
                continue
            capped = cap is not None and value > cap
            shown = min(value, cap) if cap is not None else value
            shown = min(shown, top)
            x = x0 + number * bar_w
            y_top, y_zero = y(max(shown, 0)), y(min(shown, 0))
            label = "inf" if math.isinf(value) else f"{value:.4g}"
            parts.append(
                f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{bar_w:.1f}" height="{max(0.5, y_zero - y_top):.1f}" '
                f'fill="{PALETTE[number % len(PALETTE)]}">'
                f"<title>{escape(category)} {escape(name)}: {label}</title></rect>"
            )
            if capped:
                parts.append(
                    f'<text x="{x + bar_w / 2:.1f}" y="{y_top - 2:.1f}" text-anchor="middle" font-size="10">∞</text>'
                )
        if len(categories) <= 40 or group % math.ceil(len(categories) / 40) == 0:
            cx = LEFT + (group + 0.5) * group_w
            parts.append(
                f'<text x="{cx:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="end" font-size="11" '
                f'transform="rotate(-30 {cx:.1f} {HEIGHT - BOTTOM + 14})">{escape(category)}</text>'
            )
    for number, name in enumerate(series if len(series) > 1 else ()):
        lx = LEFT + number * 190
        parts.append(
            f'<rect x="{lx}" y="{HEIGHT - 16}" width="10" height="10" fill="{PALETTE[number % len(PALETTE)]}"/>'
            f'<text x="{lx + 14}" y="{HEIGHT - 7}" font-size="11">{escape(name)}</text>'
        )
    if y_label:
        parts.append(
            f'<text x="{LEFT - 56}" y="{TOP + plot_h / 2}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 {LEFT - 56} {TOP + plot_h / 2})">{escape(y_label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def histogram(title: str, edges: list[float], counts: list[int], underflow: int, x_label: str) -> str:
    """Bars of `counts` over log-spaced `edges` (drawn evenly, labelled by their lower edge), with the
    underflow count (values below the first edge, exact zeros included) as the first bar."""
    labels = [f"<{edges[0]:.0e}"] + [f"{edge:.0e}" for edge in edges[:-1]]
    return bar_chart(title, labels, {"tokens": [float(underflow), *map(float, counts)]}, y_label=x_label)
