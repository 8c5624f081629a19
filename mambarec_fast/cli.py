"""`mambarec-fast`: argument parsing only; the work lives in training, evaluation and data."""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

from .ablation import ROWS, format_markdown, parse_rows, run_ablation, write_csv
from .checkpoint import load_checkpoint
from .config import PAPER_GRID, load_config, parse_override
from .data import PRESETS, make_synthetic, write_mmrec
from .evaluation import UserItems, evaluate_model, topk_scores
from .training import prepare, run_grid, train


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mambarec-fast", description="Fast, faithful MambaRec: train, evaluate, recommend.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (SPEC §7 protocol)")
    p.add_argument("--data", help="dataset folder (MMRec format) or synthetic:PRESET (default synthetic:tiny)")
    p.add_argument("--config", help="YAML config file (keys as in mambarec_fast.config.DEFAULTS, optional `grid:`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable); a list value makes it a grid axis")  # fmt: skip
    p.add_argument("--epochs", type=int, help="shorthand for --set epochs=N")
    p.add_argument("--impl", help="shorthand for --set impl=NAME")
    p.add_argument("--device", help="shorthand for --set device=NAME")
    p.add_argument("--out", help="run folder (default runs/<data>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--grid", choices=["paper"], help="add the paper's mmd_weight x bandwidth grid")
    p.add_argument("--seeds", help="comma-separated seeds for a grid (default: the config's seed)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    p = sub.add_parser("ablate", help="the paper's ablation rows and LightGCN over seeds, as one table")
    p.add_argument("data", help="dataset folder (MMRec format) or synthetic:PRESET")
    p.add_argument("--config", help="YAML config file the rows start from (no `grid:`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for every row (repeatable), e.g. epochs=20")  # fmt: skip
    p.add_argument("--seeds", default="999,1000,1001", help="comma-separated seeds (default 999,1000,1001)")
    p.add_argument("--rows", help=f"comma-separated rows (default all: {','.join(ROWS)})")
    p.add_argument("--out", help="output folder (default runs/ablation-<data>-<time>); runs are reused when rerun")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the valid and test splits")
    p.add_argument("checkpoint")

    p = sub.add_parser("recommend", help="write the top-K items per user (train items masked) as CSV")
    p.add_argument("checkpoint")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--out", default="recs.csv")

    p = sub.add_parser("make-synthetic", help="write a synthetic dataset in the MMRec format")
    p.add_argument("preset", choices=sorted(PRESETS))
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    return parser


def _train(args) -> None:
    overrides = list(args.overrides)
    for key in ("data", "epochs", "impl", "device"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={getattr(args, key)}")
    if args.resume:
        config = _resume_config(load_checkpoint(Path(args.resume) / "last.pt")["config"], overrides)
        result = train(config, args.resume, resume=True, progress=not args.no_progress)
        print(json.dumps({"best_epoch": result.best_epoch, "valid": result.best_valid, "test": result.best_test}, indent=2))
        return
    config, grid = load_config(args.config, overrides)
    if args.grid == "paper":
        grid = dict(PAPER_GRID, **grid)
    run_dir = Path(args.out or f"runs/{_run_name(config['data'])}-{time.strftime('%Y%m%d-%H%M%S')}")
    seeds = _parse_seeds(args.seeds) if args.seeds else [config["seed"]]
    if grid or len(seeds) > 1:
        report = run_grid(config, grid, seeds, run_dir, progress=not args.no_progress)
        print(json.dumps(report["best"], indent=2))
        print(f"grid report: {run_dir / 'grid.json'}")
        return
    result = train(config, run_dir, progress=not args.no_progress)
    print(json.dumps({"best_epoch": result.best_epoch, "valid": result.best_valid, "test": result.best_test}, indent=2))
    print(f"checkpoints: {run_dir / 'last.pt'} (resume), {run_dir / 'best.pt'} (best valid)")


def _run_name(data) -> str:
    return str(data).rstrip("/").replace(":", "-").split("/")[-1]


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds expects comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ValueError(f"--seeds expects at least one integer, got {text!r}")
    return seeds


def _ablate(args) -> None:
    config, grid = load_config(args.config, [*args.overrides, f"data={args.data}"])
    if grid:
        raise ValueError(f"ablate runs one config per row; drop the grid axes {sorted(grid)}")
    rows, seeds = parse_rows(args.rows), _parse_seeds(args.seeds)
    out = Path(args.out or f"runs/ablation-{_run_name(config['data'])}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    summaries = run_ablation(config, rows, seeds, out, progress=not args.no_progress)
    table = format_markdown(summaries)
    (out / "table.md").write_text(table)
    write_csv(summaries, out / "table.csv")
    (out / "table.json").write_text(json.dumps(summaries, indent=2))
    print(table, end="")
    print(f"test metrics of the best valid epoch, mean ± std over seeds {seeds}; tables: {out / 'table.md'}, {out / 'table.csv'}")


def _resume_config(config: dict, overrides: list[str]) -> dict:
    """The checkpoint's config with only the explicitly given overrides applied (e.g. more epochs)."""
    for text in overrides:
        key, value = parse_override(text)
        if key not in config:
            raise ValueError(f"--set {text}: unknown config key {key!r}")
        config[key] = value
    return config


def _load_model(checkpoint: str):
    state = load_checkpoint(checkpoint)
    config = state["config"]
    dataset, model = prepare(config)
    model.load_state_dict(state["model"])
    model.eval()
    return config, dataset, model


def _evaluate(args) -> None:
    config, dataset, model = _load_model(args.checkpoint)
    train_items = UserItems.from_pairs(dataset.train, dataset.n_users)
    report = {}
    for split in ("valid", "test"):
        target = UserItems.from_pairs(getattr(dataset, split), dataset.n_users)
        report[split] = evaluate_model(model, train_items, target, config["topk"], config["eval_batch_size"])
    print(json.dumps(report, indent=2))


def _recommend(args) -> None:
    if args.k <= 0:
        raise ValueError(f"--k must be positive, got {args.k}")
    config, dataset, model = _load_model(args.checkpoint)
    train_items = UserItems.from_pairs(dataset.train, dataset.n_users)
    users = torch.arange(dataset.n_users)
    user_emb, item_emb = model.embeddings()
    top = topk_scores(user_emb, item_emb, users.to(user_emb.device), train_items, args.k, config["eval_batch_size"]).cpu()
    with open(args.out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["userID", "rank", "itemID"])
        for user, items in zip(users.tolist(), top.tolist()):
            writer.writerows((user, rank, item) for rank, item in enumerate(items, start=1))
    print(f"wrote top-{top.shape[1]} items for {dataset.n_users} users to {args.out}")


def _make_synthetic(args) -> None:
    dataset = make_synthetic(args.preset, seed=args.seed)
    write_mmrec(dataset, args.out)
    print(f"wrote {args.preset} ({dataset.n_users} users, {dataset.n_items} items, {len(dataset.train)} train rows) to {args.out}")


COMMANDS = {"train": _train, "ablate": _ablate, "evaluate": _evaluate, "recommend": _recommend, "make-synthetic": _make_synthetic}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"mambarec-fast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mambarec-fast: interrupted; completed epochs are saved in the run folder's last.pt (continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
