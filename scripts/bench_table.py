#!/usr/bin/env python3
"""The JSON files of several scripts/bench.py runs (say graph fp32, eager fp32, graph TF32)
as one Markdown table, a column per run, for docs/benchmarks.md:

    python scripts/bench_table.py OUT/bench_graph.json OUT/bench_eager.json OUT/bench_tf32.json

Each cell: gpucnn and PyTorch images/s, their ratio, and both peak memories.
"""
import json
import sys


def _k(v):
    """12,345 -> 12.3k, 1,530,000 -> 1.53M."""
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def cell(row):
    if row is None:
        return ""
    if "error" in row:
        return f"FAILED: {row['error']}"
    text = f"{_k(row['gpucnn_img_s'])} vs {_k(row['torch_img_s'])}"
    if row.get("ratio") is not None:
        text += f" = {row['ratio']:.2f}x"
    if row.get("gpucnn_peak_mib") is not None:
        torch_mib = row.get("torch_peak_mib")
        text += f"; {row['gpucnn_peak_mib']:,.0f} vs {torch_mib:,.0f} MiB" if torch_mib else f"; {row['gpucnn_peak_mib']:,.0f} MiB"
    return text


def table(reports):
    """Markdown lines: a row per case (in first-seen order), a column per report."""
    cases = list(dict.fromkeys(r["case"] for rep in reports for r in rep["rows"]))
    heads = [rep.get("mode") or "?" for rep in reports]
    lines = [f"| case (gpucnn vs PyTorch img/s = ratio; peak memory) | {' | '.join(heads)} |",
             "| --- |" + " --- |" * len(reports)]
    for case in cases:
        cells = [cell(next((r for r in rep["rows"] if r["case"] == case), None)) for rep in reports]
        lines.append(f"| {case} | {' | '.join(cells)} |")
    devices = sorted({rep.get("device") for rep in reports if rep.get("device")})
    if devices:
        lines.append("")
        lines.append(f"Device: {', '.join(devices)}.")
    return lines


def main(paths):
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    reports = []
    for path in paths:
        with open(path) as f:
            reports.append(json.load(f))
    print("\n".join(table(reports)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
