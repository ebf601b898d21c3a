#!/usr/bin/env python3
"""Draws the mass-close chart of BENCHMARKS.md from the benchmark's JSON figures.

    cargo bench --bench shutdown -- --json target/bench-results.json
    scripts/chart.py target/bench-results.json docs/mass-close.svg

Two panels against the number of connections closed at once on one thread: the
time until the last report, and the process's peak RSS. Plain SVG, no
dependencies beyond the standard library.
"""

import json
import sys

W, H = 960, 380
PANEL_W, PANEL_H = 360, 260
MARGIN_L, MARGIN_T = 70, 60


def nice_max(v):
    """A round upper bound for an axis."""
    if v <= 0:
        return 1
    mag = 10 ** (len(str(int(v))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if v <= step * mag:
            return step * mag
    return 10 * mag


def panel(x0, title, xs, ys, ylabel, color):
    xmax, ymax = nice_max(max(xs)), nice_max(max(ys))
    px = lambda x: x0 + PANEL_W * x / xmax
    py = lambda y: MARGIN_T + PANEL_H - PANEL_H * y / ymax
    out = [
        f'<text x="{x0 + PANEL_W / 2}" y="{MARGIN_T - 20}" text-anchor="middle" '
        f'font-size="15" font-weight="bold">{title}</text>',
        f'<line x1="{x0}" y1="{MARGIN_T + PANEL_H}" x2="{x0 + PANEL_W}" y2="{MARGIN_T + PANEL_H}" stroke="#333"/>',
        f'<line x1="{x0}" y1="{MARGIN_T}" x2="{x0}" y2="{MARGIN_T + PANEL_H}" stroke="#333"/>',
    ]
    for i in range(6):
        yv = ymax * i / 5
        y = py(yv)
        out.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + PANEL_W}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 8}" y="{y + 4}" text-anchor="end" font-size="11">{yv:g}</text>')
        xv = xmax * i / 5
        x = px(xv)
        out.append(f'<text x="{x}" y="{MARGIN_T + PANEL_H + 16}" text-anchor="middle" font-size="11">{int(xv):,}</text>')
    out.append(
        f'<text x="{x0 + PANEL_W / 2}" y="{MARGIN_T + PANEL_H + 36}" text-anchor="middle" '
        f'font-size="12">connections closed at once</text>'
    )
    out.append(
        f'<text transform="translate({x0 - 50},{MARGIN_T + PANEL_H / 2}) rotate(-90)" '
        f'text-anchor="middle" font-size="12">{ylabel}</text>'
    )
    points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
    out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
    for x, y in zip(xs, ys):
        out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{color}"/>')
        out.append(f'<text x="{px(x) + 6:.1f}" y="{py(y) - 8:.1f}" font-size="10">{y:.0f}</text>')
    return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    data = json.load(open(src))
    runs = data["mass_close"]["runs"]
    n = [r["connections"] for r in runs]
    t = [r["last_report_ms"] for r in runs]
    rss = [r["peak_rss_bytes"] / 1048576 for r in runs]
    m = data["machine"]
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'font-family="sans-serif" viewBox="0 0 {W} {H}">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        *panel(MARGIN_L, "Time until the last report (ms)", n, t, "milliseconds", "#1f77b4"),
        *panel(MARGIN_L + PANEL_W + 110, "Peak RSS of the closing process (MiB)", n, rss, "MiB", "#d62728"),
        f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle" font-size="11" fill="#555">'
        f'closenotify Closer, one thread, clean bidirectional shutdowns, loopback; '
        f'{m["cpu"]}, {m["cores"]} cores, {m["openssl"]}</text>',
        "</svg>",
    ]
    with open(dst, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
