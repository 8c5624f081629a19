"""The project's main benchmark: fast vs reference (vs torch.compile of the reference), side by side.

Cases: a whole training step and a whole evaluation of MambaRec on the embedded default (the `baby`
synthetic preset, or a dataset folder given with --data), plus each op's own benchmark
(bench_mmd, bench_dream, bench_propagation) when present. Each figure is the median of several
runs after a warm-up, with peak memory; ratios are to the reference measured in the same run.
Writes a table to the terminal and JSON, CSV and PNG files under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from timing import machine_name, measure  # noqa: E402

from mambarec_fast.config import DEFAULTS  # noqa: E402
from mambarec_fast.data import TrainSampler, build_graphs, load_dataset  # noqa: E402
from mambarec_fast.evaluation import UserItems, evaluate_model  # noqa: E402
from mambarec_fast.reference.evaluation import evaluate_model as reference_evaluate_model  # noqa: E402
from mambarec_fast.training import IMPLEMENTATIONS, build_model  # noqa: E402

#: Per-op benchmark modules: their `run` arguments for the quick (Baby-sized) and full size sets,
#: and the name of their switch for timing torch.compile of the reference.
OP_BENCHMARKS = {
    "bench_mmd": ({"sizes": (2048,)}, "compile_reference"),
    "bench_dream": ({"sizes": (7050,), "with_map": False}, "with_compile"),
    "bench_propagation": ({"sizes": ("baby",)}, None),
}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def model_rows(data: str, device: str, repeats: int, impls: list[str], compile_reference: bool) -> list[dict]:
    """A training step (batch of train_batch_size triples) and a full evaluation, per implementation
    (the reference evaluates as the authors do: one graph forward per batch of users)."""
    config = dict(DEFAULTS, data=data, device=device)
    dataset = load_dataset(data, seed=config["data_seed"])
    graphs = build_graphs(dataset, knn_k=config["knn_k"])
    sampler = TrainSampler(dataset.train, dataset.n_users, dataset.n_items, config["train_batch_size"])
    users, pos, neg = (t.to(device) for t in next(iter(sampler.epoch(torch.Generator().manual_seed(0)))))
    train_items = UserItems.from_pairs(dataset.train, dataset.n_users)
    valid_items = UserItems.from_pairs(dataset.valid, dataset.n_users)
    size = f"{data} U={dataset.n_users} I={dataset.n_items}"

    variants = [(impl, impl, False) for impl in impls]
    if compile_reference:
        variants.insert(1, ("compile", "reference", True))
    rows = []
    for label, impl, compiled in tqdm(variants, desc="model cases", leave=False):
        torch.manual_seed(0)
        model = build_model(dict(config, impl=impl), dataset, graphs).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
        loss_fn = torch.compile(model.calculate_loss) if compiled else model.calculate_loss

        def step():
            model.train()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(users, pos, neg).backward()
            optimizer.step()

        evaluator = reference_evaluate_model if impl == "reference" else evaluate_model

        def evaluate():
            evaluator(model, train_items, valid_items, config["topk"], config["eval_batch_size"])

        for case, fn in (("train_step", step), ("evaluate", evaluate)):
            try:
                m = measure(fn, device, repeats=repeats, warmup=1)
                rows.append(dict(case=case, size=size, device=device, impl=label, median_s=m.median_s, peak_mem_bytes=m.peak_mem_bytes))
            except Exception as exc:  # a compile failure is a result to report, not a crash
                rows.append(dict(case=case, size=size, device=device, impl=label, median_s=None, peak_mem_bytes=None, note=f"{type(exc).__name__}: {exc}"[:200]))
    return rows


def add_speedups(rows: list[dict]) -> list[dict]:
    reference = {(r["case"], r["size"]): r["median_s"] for r in rows if r["impl"] == "reference" and r.get("median_s")}
    for r in rows:
        ref = reference.get((r["case"], r["size"]))
        r["speedup_vs_reference"] = ref / r["median_s"] if ref and r.get("median_s") else None
    return rows


def _fmt(value, unit=""):
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.3f} s"
    if unit == "B":
        return f"{value / 2**20:.1f} MiB" if value >= 0 else "n/a"
    return f"{value:.1f}x"


def print_table(rows: list[dict], header: str) -> str:
    lines = [header, f"{'case':<14} {'size':<36} {'impl':<10} {'median':>11} {'peak mem':>12} {'vs ref':>8}"]
    for r in rows:
        lines.append(
            f"{r['case']:<14} {str(r['size'])[:36]:<36} {r['impl']:<10} {_fmt(r.get('median_s'), 's'):>11} "
            f"{_fmt(r.get('peak_mem_bytes'), 'B'):>12} {_fmt(r.get('speedup_vs_reference')):>8}"
            + (f"  ({r['note']})" if r.get("note") else "")
        )
    text = "\n".join(lines)
    print(text)
    return text


def write_chart(rows: list[dict], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart written")
        return
    bars = [r for r in rows if r["impl"] != "reference" and r.get("speedup_vs_reference")]
    if not bars:
        return
    labels = [f"{r['case']}\n{str(r['size'])[:18]}\n{r['impl']}" for r in bars]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(bars)), 4))
    ax.bar(range(len(bars)), [r["speedup_vs_reference"] for r in bars])
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(bars)), labels, fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up vs reference (x)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default="synthetic:baby", help="synthetic:PRESET or a dataset folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impls", default="reference,fast", help="model implementations to time")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time torch.compile of the reference (default: on CUDA only; slow to compile on a CPU)")  # fmt: skip
    parser.add_argument("--ops", action=argparse.BooleanOptionalAction, default=True, help="run the per-op benchmarks too")
    parser.add_argument("--sizes", choices=["quick", "full"], default=None,
                        help="per-op sizes: quick = Baby-sized only, full = every size of each op benchmark "
                             "(default: quick on a CPU, full on CUDA)")  # fmt: skip
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    compile_reference = args.device.startswith("cuda") if args.compile is None else args.compile
    impls = [i for i in args.impls.split(",") if i]
    unknown = set(impls) - set(IMPLEMENTATIONS)
    if unknown or "reference" not in impls:
        parser.error(f"--impls must include reference and name only {sorted(IMPLEMENTATIONS)}")

    machine = machine_name(args.device)
    meta = {
        "machine": machine, "device": args.device, "torch": torch.__version__, "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "data": args.data, "repeats": args.repeats,
    }  # fmt: skip
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None

    rows = model_rows(args.data, args.device, args.repeats, impls, compile_reference)
    if args.ops:
        full = (args.sizes or ("full" if args.device.startswith("cuda") else "quick")) == "full"
        for name, (quick_kwargs, compile_switch) in tqdm(OP_BENCHMARKS.items(), desc="op benchmarks", leave=False):
            kwargs = {} if full else dict(quick_kwargs)
            if compile_switch:
                kwargs[compile_switch] = compile_reference
            rows.extend(importlib.import_module(name).run(device=args.device, repeats=args.repeats, **kwargs))
    rows = add_speedups(rows)

    header = f"mambarec_fast benchmarks on {machine} (torch {meta['torch']}, commit {meta['commit']}, {meta['date']})"
    print_table(rows, header)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"run_{args.device.split(':')[0]}_{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    fields = ["case", "size", "device", "impl", "median_s", "peak_mem_bytes", "speedup_vs_reference", "note"]
    with open(stem.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    write_chart(rows, stem.with_suffix(".png"), header)
    print(f"results: {stem}.json / .csv / .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
