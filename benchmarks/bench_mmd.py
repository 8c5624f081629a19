"""Benchmark of the Gaussian-kernel MMD² (SPEC §6): forward + backward, x and y `[B, 64]` fp32.

Implementations, timed in the same run on the same inputs:
- reference: `mambarec_fast.reference.mmd_loss` (three `[B, B, d]` difference tensors);
- compile: `torch.compile` of the reference;
- fast: `mambarec_fast.ops.mmd.mmd` (Triton kernels on CUDA, the blocked path on a CPU).
The reference and its compiled form need about `3·B²·d·4` bytes (768 GiB at B = 32768): they are
skipped, with a note, where that exceeds the memory available. Triton is not timed on a CPU
(interpreter timings say nothing about a GPU), so on a CPU "fast" is the blocked path.
`python benchmarks/bench_mmd.py [--device cuda] [--sizes 256,2048] [--repeats 5] [--no-compile] [--threads N]`
prints a table with the machine name.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import machine_name, measure  # noqa: E402

from mambarec_fast.ops.mmd import mmd  # noqa: E402
from mambarec_fast.reference import mmd_loss  # noqa: E402

DIM, SIGMA = 64, 1.0


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _reference_bytes(size: int) -> int:
    """The reference's three `[B, B, d]` fp32 difference tensors."""
    return 3 * size * size * DIM * 4


def _fwd_bwd(fn, x: torch.Tensor, y: torch.Tensor):
    def step():
        x.grad = None
        y.grad = None
        fn(x, y, SIGMA).backward()

    return step


def run(device="cpu", sizes=(256, 2048, 8192, 32768), repeats=5, compile_reference=True) -> list[dict]:
    """One row per (size, implementation): case, size, device, impl, median_s, peak_mem_bytes,
    speedup_vs_reference (None where the reference did not run), note (why a row is empty)."""
    device = torch.device(device)
    compiled = torch.compile(mmd_loss) if compile_reference else None
    rows = []
    for size in sizes:
        gen = torch.Generator().manual_seed(size)
        x = torch.randn(size, DIM, generator=gen).to(device).requires_grad_()
        y = (torch.randn(size, DIM, generator=gen) + 0.1).to(device).requires_grad_()
        too_big = _reference_bytes(size) > 0.8 * _available_bytes(device)
        skip_note = f"skipped: needs ~{_reference_bytes(size) / 2**30:.0f} GiB (3·B²·d·4 bytes)" if too_big else None
        cases = [
            ("reference", mmd_loss, skip_note),
            ("compile", compiled, skip_note or (None if compiled else "skipped: --no-compile")),
            ("fast", mmd, None),
        ]
        reference_s = None
        for impl, fn, note in cases:
            row = dict(case="mmd", size=size, device=str(device), impl=impl, median_s=None, peak_mem_bytes=None, speedup_vs_reference=None)
            if note is None:
                try:
                    m = measure(_fwd_bwd(fn, x, y), device, repeats=repeats, warmup=1)
                    row.update(median_s=m.median_s, peak_mem_bytes=m.peak_mem_bytes)
                except Exception as exc:  # a compile failure is a result to report, not a crash
                    note = f"failed: {type(exc).__name__}: {exc}"[:200]
            if impl == "reference":
                reference_s = row["median_s"]
            if reference_s and row["median_s"]:
                row["speedup_vs_reference"] = reference_s / row["median_s"]
            if note:
                row["note"] = note
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| B | impl | median fwd+bwd | peak memory | vs reference | note |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        t, mem, ratio = r["median_s"], r["peak_mem_bytes"], r["speedup_vs_reference"]
        time_s = "-" if t is None else (f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s")
        mem_s = "-" if mem is None else f"{mem / 2**20:.1f} MiB"
        ratio_s = "-" if ratio is None else f"{ratio:.0f}x"
        lines.append(f"| {r['size']} | {r['impl']} | {time_s} | {mem_s} | {ratio_s} | {r.get('note', '')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="256,2048,8192,32768")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="time torch.compile of the reference")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    rows = run(args.device, sizes, args.repeats, args.compile)
    print(f"MMD² forward+backward, d = {DIM}, fp32, sigma = {SIGMA}; median of {args.repeats} runs after a warm-up")
    print(f"machine: {machine_name(args.device)}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
