#!/usr/bin/env python3
"""Chart of ../shared/bench results: one SVG from one or more of the harness's rows.tsv files.

    python3 scripts/bench_chart.py -o docs/bench.svg run/results/A/rows.tsv run/results/B/rows.tsv
    python3 scripts/bench_chart.py --markdown run/results/A/rows.tsv   # the medians as a table

For each scenario and target it takes the median over the rounds of req/s and of cpu/kreq
(CPU ms per 1000 requests) and draws two grouped bar panels: req/s relative to nginx in the
same file, and cpu/kreq (lower is better). Targets are named as the harness named them (set
PUT_NAME per run to tell builds apart); a target found in several files keeps the first file's
rows, nginx and the floor included. Python's standard library only (no matplotlib here).
"""

import argparse
import statistics
import sys
from xml.sax.saxutils import escape

COLORS = ["#888888", "#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974", "#64b5cd",
          "#dd8452", "#937860", "#da8bc3"]


def read_rows(path):
    """(scenario, target) -> {'rps': [...], 'cpu': [...]} from the OK rows of one rows.tsv."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 8 or cols[3] != "OK":
                continue
            scenario, target = cols[0], cols[1]
            cell = out.setdefault((scenario, target), {"rps": [], "cpu": []})
            try:
                cell["rps"].append(float(cols[4]))
            except ValueError:
                continue
            try:
                cell["cpu"].append(float(cols[7]))
            except ValueError:
                pass  # "-": no pid to account the CPU to
    return out


def merge(paths, exclude):
    """Medians per (scenario, target), the nginx of each file kept to scale that file's rows."""
    data, targets, scenarios = {}, [], []
    for path in paths:
        rows = read_rows(path)
        for (s, t), cell in rows.items():
            if t in exclude:
                continue
            if s not in scenarios:
                scenarios.append(s)
            if t not in targets:
                targets.append(t)
            if (s, t) in data:
                continue
            nginx = rows.get((s, "nginx"), {}).get("rps")
            floor = rows.get((s, "floor"), {}).get("rps")
            rps = statistics.median(cell["rps"]) if cell["rps"] else None
            data[(s, t)] = {
                "rps": rps,
                "vs": rps / statistics.median(nginx) if rps and nginx else None,
                "vs_floor": rps / statistics.median(floor) if rps and floor else None,
                "cpu": statistics.median(cell["cpu"]) if cell["cpu"] else None,
            }
    return data, sorted(scenarios), targets


def panel(out, data, scenarios, targets, key, title, x0, y0, w, h, fmt):
    values = [d[key] for d in data.values() if d[key] is not None]
    top = max(values) * 1.15 if values else 1.0
    out.append(f'<text x="{x0}" y="{y0 - 8}" font-size="14" font-weight="bold">{escape(title)}</text>')
    out.append(f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}" stroke="#333"/>')
    group_w = w / max(len(scenarios), 1)
    bar_w = (group_w * 0.8) / max(len(targets), 1)
    for i, s in enumerate(scenarios):
        gx = x0 + i * group_w + group_w * 0.1
        out.append(f'<text x="{gx + group_w * 0.4:.1f}" y="{y0 + h + 16}" font-size="12" '
                   f'text-anchor="middle">{escape(s)}</text>')
        for j, t in enumerate(targets):
            v = data.get((s, t), {}).get(key)
            if v is None:
                continue
            bh = h * v / top
            bx = gx + j * bar_w
            out.append(f'<rect x="{bx:.1f}" y="{y0 + h - bh:.1f}" width="{bar_w * 0.9:.1f}" '
                       f'height="{bh:.1f}" fill="{COLORS[j % len(COLORS)]}">'
                       f'<title>{escape(s)} {escape(t)}: {fmt(v)}</title></rect>')
            out.append(f'<text x="{bx + bar_w * 0.45:.1f}" y="{y0 + h - bh - 3:.1f}" font-size="8" '
                       f'text-anchor="middle">{fmt(v)}</text>')


def markdown(data, scenarios, targets):
    """The same medians as a Markdown table: req/s, vs nginx, cpu/kreq per scenario and target."""
    lines = ["| scenario | target | req/s | vs nginx | vs floor | cpu ms/kreq |",
             "|---|---|---|---|---|---|"]
    for s in scenarios:
        for t in targets:
            d = data.get((s, t))
            if d is None:
                continue
            rps = f"{d['rps']:,.0f}" if d["rps"] is not None else "-"
            vs = f"{d['vs']:.2f}" if d["vs"] is not None else "-"
            vf = f"{d['vs_floor']:.2f}" if d["vs_floor"] is not None else "-"
            cpu = f"{d['cpu']:.1f}" if d["cpu"] is not None else "-"
            lines.append(f"| {s} | {t} | {rps} | {vs} | {vf} | {cpu} |")
    return "\n".join(lines) + "\n"


def render(data, scenarios, targets, title):
    width, ph = 980, 230
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{2 * ph + 170}" '
           f'font-family="sans-serif">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="20" y="24" font-size="16" font-weight="bold">{escape(title)}</text>']
    panel(out, data, scenarios, targets, "vs", "req/s relative to nginx (median of rounds; higher is better)",
          40, 60, width - 60, ph - 40, lambda v: f"{v:.2f}")
    panel(out, data, scenarios, targets, "cpu", "CPU ms per 1000 requests (proxy + Redis; lower is better)",
          40, 60 + ph + 20, width - 60, ph - 40, lambda v: f"{v:.0f}")
    ly = 2 * ph + 120
    for j, t in enumerate(targets):
        lx = 40 + (j % 4) * 235
        y = ly + (j // 4) * 18
        out.append(f'<rect x="{lx}" y="{y - 10}" width="12" height="12" fill="{COLORS[j % len(COLORS)]}"/>')
        out.append(f'<text x="{lx + 16}" y="{y}" font-size="12">{escape(t)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", nargs="+", help="rows.tsv files written by ../shared/bench/run.sh")
    ap.add_argument("-o", "--output", default="-", help="SVG file (default: stdout)")
    ap.add_argument("--title", default="Rampart vs nginx and the Pingora floor (../shared/bench)")
    # The origin alone serves g ~60x faster than any proxy gzips: it would flatten every bar.
    ap.add_argument("--exclude", default="direct", help="comma-separated targets left out (default: direct)")
    ap.add_argument("--markdown", action="store_true", help="print the medians as a Markdown table instead")
    args = ap.parse_args()
    data, scenarios, targets = merge(args.rows, set(filter(None, args.exclude.split(","))))
    if not data:
        sys.exit("bench_chart: no OK rows in " + ", ".join(args.rows))
    svg = (markdown if args.markdown else lambda *a: render(*a, args.title))(data, scenarios, targets)
    if args.output == "-":
        sys.stdout.write(svg)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(svg)


if __name__ == "__main__":
    main()
