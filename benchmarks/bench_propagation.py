"""Benchmark of graph propagation: forward + backward of a 4-layer LightGCN propagation (d = 64),
and one forward layer (`spmm`) alone.

Graphs: synthetic user-item graphs `Â` with long-tailed (Zipf-like) user and item degrees, of the
Baby, Sports and Clothing sizes and a 10x larger one (10x Clothing's users, items and edges).
Implementations, timed in the same run on the same graph and embeddings:
- reference: `mambarec_fast.reference.propagate` (COO `torch.sparse.mm`, every layer stored);
- torch_csr: torch's CSR `sparse.mm` with the cached (here symmetric) transpose for the backward
  (the fallback path of `mambarec_fast.ops.propagation`);
- fast: `mambarec_fast.ops.propagation.propagate` (the `_C` kernels, fused Horner form).
`python benchmarks/bench_propagation.py [--device cuda] [--sizes baby,clothing] [--markdown FILE]`
prints a table (and writes it as markdown). CPU peak memory is the growth of the process's resident
high-water mark, so 0 means the run fitted in memory the process already held.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import machine_name, measure  # noqa: E402

from mambarec_fast.data.graphs import user_item_graphs  # noqa: E402
from mambarec_fast.ops.graph import Graph  # noqa: E402
from mambarec_fast.ops.propagation import _TorchCsrPropagation, propagate, spmm  # noqa: E402
from mambarec_fast.reference import propagate as reference_propagate  # noqa: E402
from mambarec_fast.reference import spmm as reference_spmm  # noqa: E402

#: (users, items, train edges) of the MMRec datasets, and 10x Clothing.
SIZES = {
    "baby": (19_445, 7_050, 160_792),
    "sports": (35_598, 18_357, 296_337),
    "clothing": (39_387, 23_033, 278_677),
    "10x": (393_870, 230_330, 2_786_770),
}
LAYERS, DIM = 4, 64


def synthetic_pairs(n_users: int, n_items: int, n_edges: int, seed: int = 0) -> torch.Tensor:
    """`[n_edges, 2]` distinct (user, item) pairs with Zipf-like degrees on both sides."""
    gen = torch.Generator().manual_seed(seed)

    def zipf(n: int, exponent: float) -> torch.Tensor:
        weights = torch.arange(1, n + 1, dtype=torch.float64).pow(-exponent)
        return weights[torch.randperm(n, generator=gen)]

    user_w, item_w = zipf(n_users, 0.6), zipf(n_items, 0.9)
    keys = torch.empty(0, dtype=torch.int64)
    while keys.numel() < n_edges:
        draw = int(1.3 * (n_edges - keys.numel())) + 16
        users = torch.multinomial(user_w, draw, replacement=True, generator=gen)
        items = torch.multinomial(item_w, draw, replacement=True, generator=gen)
        keys = torch.unique(torch.cat([keys, users * n_items + items]))
    keys = keys[torch.randperm(keys.numel(), generator=gen)[:n_edges]]
    return torch.stack([keys // n_items, keys % n_items], dim=1)


def _fwd_bwd(fn, x: torch.Tensor, grad: torch.Tensor):
    def step():
        x.grad = None
        fn(x).backward(grad)

    return step


def run(device="cpu", sizes=("baby", "sports", "clothing", "10x"), repeats=5) -> list[dict]:
    """One row per (size, implementation): case, size, device, impl, median_s, peak_mem_bytes,
    speedup_vs_reference (reference median / this median, same run)."""
    rows = []
    for size in sizes:
        n_users, n_items, n_edges = SIZES[size]
        adj, _ = user_item_graphs(n_users, n_items, synthetic_pairs(n_users, n_items, n_edges))
        adj = adj.to(device)
        graph = Graph.from_torch(adj, symmetric=True)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(n_users + n_items, DIM, generator=gen).to(device).requires_grad_()
        grad = torch.randn(n_users + n_items, DIM, generator=gen).to(device)
        cases = {
            "propagate": {  # forward + backward of the 4-layer mean
                "reference": _fwd_bwd(lambda v: reference_propagate(adj, v, LAYERS), x, grad),
                "torch_csr": _fwd_bwd(lambda v: _TorchCsrPropagation.apply(graph, v, LAYERS), x, grad),
                "fast": _fwd_bwd(lambda v: propagate(graph, v, LAYERS), x, grad),
            },
            "spmm": {  # one layer, forward only (to compare with the memory floor on a GPU)
                "reference": lambda: reference_spmm(adj, x.detach()),
                "torch_csr": lambda: torch.sparse.mm(graph.torch_csr(), x.detach()),
                "fast": lambda: spmm(graph, x.detach()),
            },
        }
        label = f"{size} U={n_users} I={n_items} E={n_edges}"
        for case, impls in cases.items():
            base = None
            for impl, fn in impls.items():
                m = measure(fn, device, repeats=repeats, warmup=1)
                base = m.median_s if impl == "reference" else base
                rows.append(dict(case=case, size=label, device=str(device), impl=impl, median_s=m.median_s,
                                 peak_mem_bytes=m.peak_mem_bytes, speedup_vs_reference=base / m.median_s))  # fmt: skip
    return rows


def format_table(rows: list[dict], device: str) -> str:
    lines = [
        f"propagation benchmark: {LAYERS}-layer forward+backward, d={DIM}, fp32, on {machine_name(device)}",
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}",
        "",
        "| case | size | impl | median | peak mem | vs reference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = f"{r['peak_mem_bytes'] / 2**20:.1f} MiB" if r["peak_mem_bytes"] >= 0 else "n/a"
        lines.append(f"| {r['case']} | {r['size']} | {r['impl']} | {r['median_s'] * 1e3:.2f} ms | {mem} | "
                     f"{r['speedup_vs_reference']:.2f}x |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    rows = run(args.device, tuple(s for s in args.sizes.split(",") if s), args.repeats)
    table = format_table(rows, args.device)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
