"""Regenerate the README's results section from the committed benchmark files.

Reads the newest `benchmarks/results/run_<device>_*.json` per device (written by run.py) and
replaces the text between the README's `<!-- results:begin -->` and `<!-- results:end -->` markers
with one table per device, each headed by the machine it was measured on.
Usage: python benchmarks/report.py [--readme README.md]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _fmt_time(seconds):
    if seconds is None:
        return "—"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _fmt_mem(value):
    if value is None or value < 0:
        return "—"
    return f"{value / 2**20:.0f} MiB" if value >= 2**20 else "<1 MiB"


def device_table(path: Path) -> str:
    data = json.loads(path.read_text())
    meta = data["meta"]
    lines = [
        f"**{meta['machine']}** ({meta['device']}; torch {meta['torch']}, Triton {meta.get('triton') or '—'}, "
        f"commit {meta['commit']}, {meta['date']}; median of {meta['repeats']} runs; source: `{path.relative_to(HERE.parent)}`)",
        "",
        "| case | size | impl | median | peak memory | speed-up vs reference |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in data["rows"]:
        speedup = row.get("speedup_vs_reference")
        note = f" ({row['note']})" if row.get("note") else ""
        lines.append(
            f"| {row['case']} | {row['size']} | {row['impl']} | {_fmt_time(row.get('median_s'))} | "
            f"{_fmt_mem(row.get('peak_mem_bytes'))} | {f'{speedup:.1f}x' if speedup else '—'}{note} |"
        )
    return "\n".join(lines)


def results_section(results_dir: Path) -> str:
    newest = {}
    for path in sorted(results_dir.glob("run_*.json")):
        newest[path.stem.split("_")[1]] = path  # names sort by time within a device
    if not newest:
        return "No benchmark results committed yet."
    return "\n\n".join(device_table(newest[device]) for device in sorted(newest))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readme", default=str(HERE.parent / "README.md"))
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{results_section(HERE / 'results')}\n{END}{tail}")
    print(f"updated the results section of {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
