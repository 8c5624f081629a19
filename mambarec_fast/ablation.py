"""The paper's ablation study and the LightGCN baseline from one config: every row is the same
trainer, evaluator and data with one config change, trained over a list of seeds.

`run_ablation` trains the rows (a finished run folder with the same config is reused, an
interrupted one resumed), `format_markdown` / `write_csv` render the table.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .training import TrainResult, mean_std, train

#: Row name -> (label, config overrides), in the paper's order.
ROWS: dict[str, tuple[str, dict]] = {
    "full": ("MambaRec (full)", {}),
    "no_dream": ("w/o DREAM", {"dream": False}),
    "no_mmd": ("w/o MMD", {"mmd_weight": 0}),
    "no_cl": ("w/o contrastive", {"cl_loss": 0}),
    "no_reduction": ("w/o reduction", {"reduction_factor": 1}),
    "text_only": ("text only", {"modalities": ["text"]}),
    "image_only": ("image only", {"modalities": ["image"]}),
    "lightgcn": ("LightGCN", {"model": "lightgcn"}),
}

#: Test metrics in the table, each as mean ± std over the seeds.
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def parse_rows(text: str | None) -> list[str]:
    """`"full,no_dream"` -> `["full", "no_dream"]`; None or "all" -> every row."""
    if text is None or text.strip() == "all":
        return list(ROWS)
    rows = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        raise ValueError(f"unknown ablation rows {unknown or [text]}; choose from {list(ROWS)} or 'all'")
    return rows


def _train_or_reuse(config: dict, run_dir: Path, **kwargs) -> TrainResult:
    """`train`, unless `run_dir` holds a run of the same config: finished (reused) or cut (resumed)."""
    saved = run_dir / "config.json"
    same = saved.is_file() and json.loads(saved.read_text()) == json.loads(json.dumps(config))
    if same and (run_dir / "result.json").is_file():
        return TrainResult(**json.loads((run_dir / "result.json").read_text()))
    return train(config, run_dir, resume=same and (run_dir / "last.pt").is_file(), **kwargs)


def run_ablation(
    config: dict, rows: list[str], seeds: list[int], out_dir: str | Path, *, progress: bool = True, log=print
) -> list[dict]:
    """Train each row (config + its overrides) with each seed in `out_dir/<row>/seed<seed>`.

    Returns one summary per row: name, label, seeds, `METRICS` as (mean, std) of the best-valid
    epoch's test metrics, mean epochs run, mean best epoch, mean seconds per run.
    """
    if not seeds:
        raise ValueError("run_ablation needs at least one seed")
    out_dir = Path(out_dir)
    summaries = []
    for name in rows:
        label, overrides = ROWS[name]
        results = []
        for seed in seeds:
            log(f"[ablation] {name} seed {seed}")
            run_dir = out_dir / name / f"seed{seed}"
            results.append(_train_or_reuse(dict(config, **overrides, seed=seed), run_dir, progress=progress, log=log))
        summary = {"row": name, "label": label, "seeds": list(seeds)}
        for metric in METRICS:
            summary[metric] = mean_std([r.best_test[metric] for r in results])
        summary["epochs"] = mean_std([float(r.epochs_run) for r in results])[0]
        summary["best_epoch"] = mean_std([float(r.best_epoch) for r in results])[0]
        summary["seconds"] = mean_std([r.seconds for r in results])[0]
        summaries.append(summary)
    return summaries


def format_markdown(summaries: list[dict]) -> str:
    """The table as Markdown: test metrics as mean ± std, mean epochs run / best epoch, mean seconds."""
    names = (m.replace("recall", "Recall").replace("ndcg", "NDCG") for m in METRICS)
    head = ["variant", *names, "epochs (best)", "time / run (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        metrics = (f"{s[m][0]:.4f} ± {s[m][1]:.4f}" for m in METRICS)
        cells = [s["label"], *metrics, f"{s['epochs']:.1f} ({s['best_epoch']:.1f})", f"{s['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(summaries: list[dict], path: str | Path) -> None:
    """One row per variant: row, label, seeds, `<metric>_mean`, `<metric>_std`, epochs, best_epoch, seconds."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        stats = (f"{m}_{x}" for m in METRICS for x in ("mean", "std"))
        writer.writerow(["row", "label", "seeds", *stats, "epochs", "best_epoch", "seconds"])
        for s in summaries:
            writer.writerow([
                s["row"], s["label"], " ".join(map(str, s["seeds"])),
                *(f"{v:.6f}" for m in METRICS for v in s[m]),
                f"{s['epochs']:.2f}", f"{s['best_epoch']:.2f}", f"{s['seconds']:.1f}",
            ])  # fmt: skip
