"""DREAM benchmark: the fast block against the reference (eager and `torch.compile`d), same run.

Cases: `dream_train` (train-mode forward + backward of `[N, 64]`), `dream_eval` (eval-mode
forward, no grad), `dream_map_train` / `dream_map_eval` (the same on a `[32, 64, 64, 64]` map: the
general path). Run as a script to print a table; `run()` returns the rows.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import machine_name, measure  # noqa: E402

from mambarec_fast.ops.dream import DREAM  # noqa: E402
from mambarec_fast.reference import DREAM as ReferenceDREAM  # noqa: E402

CHANNELS = 64
MAP_SHAPE = (32, 64, 64, 64)


def _modules(device: str):
    torch.manual_seed(0)
    ref = ReferenceDREAM(CHANNELS, CHANNELS).to(device)
    fast = DREAM(CHANNELS, CHANNELS).to(device)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _train_step(module, x):
    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).sum().backward()

    return step


def _eval_step(module, x):
    def step():
        with torch.no_grad():
            module(x)

    return step


def _impls(device: str, with_compile: bool):
    ref, fast = _modules(device)
    impls = {"reference": ref, "fast": fast}
    if with_compile:
        impls["compile"] = torch.compile(ref)
    return impls


def _case_rows(case, size, device, impls, make_step, x, repeats):
    rows = []
    for impl, module in impls.items():
        module.train(not case.endswith("_eval"))
        try:
            m = measure(make_step(module, x), device=device, repeats=repeats, warmup=2 if impl == "compile" else 1)
        except Exception as exc:  # a failed compile is reported, not fatal
            print(f"{case} {size} {impl}: skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
            continue
        rows.append(dict(case=case, size=size, device=device, impl=impl, median_s=m.median_s, peak_mem_bytes=m.peak_mem_bytes))
    base = next((r["median_s"] for r in rows if r["impl"] == "reference"), None)
    for row in rows:
        row["speedup_vs_reference"] = base / row["median_s"] if base else float("nan")
    return rows


def run(device="cpu", sizes=(7050, 18357, 23033, 100000), repeats=5, with_compile=True, with_map=True) -> list[dict]:
    """Rows: case, size, device, impl ("reference" | "compile" | "fast"), median_s, peak_mem_bytes,
    speedup_vs_reference (the reference measured in the same run)."""
    impls = _impls(device, with_compile)
    rows = []
    for size in sizes:
        x = torch.randn(size, CHANNELS, device=device, requires_grad=True)
        rows += _case_rows("dream_train", size, device, impls, _train_step, x, repeats)
        rows += _case_rows("dream_eval", size, device, impls, _eval_step, x.detach(), repeats)
    if with_map:
        x = torch.randn(MAP_SHAPE, device=device, requires_grad=True)
        map_impls = {k: v for k, v in impls.items() if k != "compile" or device != "cpu"}
        size = "x".join(map(str, MAP_SHAPE))
        map_repeats = max(1, repeats // 2)
        rows += _case_rows("dream_map_train", size, device, map_impls, _train_step, x, map_repeats)
        rows += _case_rows("dream_map_eval", size, device, map_impls, _eval_step, x.detach(), map_repeats)
    return rows


def format_table(rows: list[dict], device: str) -> str:
    lines = [
        f"machine: {machine_name(device)}; torch {torch.__version__}",
        "",
        "| case | size | impl | median s | peak mem MiB | speed-up vs reference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['size']} | {r['impl']} | {r['median_s']:.4f} | "
            f"{r['peak_mem_bytes'] / 2**20:.1f} | {r['speedup_vs_reference']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[7050, 18357, 23033, 100000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-map", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.device, tuple(args.sizes), args.repeats, not args.no_compile, not args.no_map)
    print(format_table(rows, args.device))


if __name__ == "__main__":
    main()
