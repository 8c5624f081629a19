"""The training loop of SPEC §7: epochs of BPR triples, Adam with the per-epoch lr decay, evaluation
every epoch, early stopping on a valid metric, test metrics of the best valid epoch.

After every epoch `last.pt` is written atomically with everything needed to continue bit for bit
(model, optimizer, scheduler, RNG states, epoch, best so far); `best.pt` holds the best weights.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import expand_grid
from .data import MMRecDataset, TrainSampler, build_graphs, load_dataset
from .evaluation import UserItems, evaluate_model
from .lightgcn import LightGCN
from .model import MambaRec
from .reference import MambaRec as ReferenceMambaRec
from .reference.lightgcn import LightGCN as ReferenceLightGCN

#: Config keys passed straight to the MambaRec constructor.
MODEL_KEYS = (
    "embedding_size", "reduction_factor", "n_ui_layers", "n_layers", "mmd_weight",
    "mmd_kernel_bandwidth", "cl_loss", "cl_temperature", "reg_weight", "train_batch_size",
    "dropout", "dream_rate", "bn_mom", "dream",
)  # fmt: skip

#: `impl` values: the fast model (default) and the authors' computation.
IMPLEMENTATIONS = {"fast": MambaRec, "reference": ReferenceMambaRec}

#: `model` values -> their `impl` classes.
MODELS = {"mambarec": IMPLEMENTATIONS, "lightgcn": {"fast": LightGCN, "reference": ReferenceLightGCN}}


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict
    best_test: dict
    epochs_run: int
    stopped: str
    seconds: float
    run_dir: str
    history: list = field(default_factory=list)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _model_class(config: dict) -> type[torch.nn.Module]:
    model, impl = config["model"], config["impl"]
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
    if impl not in MODELS[model]:
        raise ValueError(f"unknown impl {impl!r}; choose one of {sorted(MODELS[model])}")
    return MODELS[model][impl]


def build_model(config: dict, dataset: MMRecDataset, graphs=None) -> torch.nn.Module:
    """The model named by `config["model"]` and `config["impl"]` over `dataset`, its graphs built
    when not given (kNN graphs for the modalities in `dataset.features`)."""
    cls = _model_class(config)
    if graphs is None:
        graphs = build_graphs(dataset, knn_k=config["knn_k"], cache_dir=config["graph_cache"])
    if config["model"] == "lightgcn":
        return cls(
            dataset.n_users, dataset.n_items, graphs.adj, embedding_size=config["embedding_size"],
            n_layers=config["n_ui_layers"], reg_weight=config["reg_weight"], train_batch_size=config["train_batch_size"],
        )  # fmt: skip
    features = {m: torch.from_numpy(f) for m, f in dataset.features.items()}
    kwargs = {k: config[k] for k in MODEL_KEYS}
    return cls(dataset.n_users, dataset.n_items, features, graphs, **kwargs)


def prepare(config: dict) -> tuple[MMRecDataset, torch.nn.Module]:
    """Load the dataset the config names (no features for LightGCN) and build its model on the
    config's device."""
    _model_class(config)  # an unknown model or impl fails before the data is read
    modalities = () if config["model"] == "lightgcn" else config["modalities"]
    dataset = load_dataset(config["data"], modalities=modalities, seed=config["data_seed"])
    return dataset, build_model(config, dataset).to(config["device"])


def _metric_key(config: dict) -> str:
    key = str(config["valid_metric"]).lower()
    name, _, k = key.partition("@")
    if name not in ("recall", "ndcg", "precision", "map") or not k.isdigit() or int(k) not in config["topk"]:
        raise ValueError(f"valid_metric {config['valid_metric']!r} must be recall|ndcg|precision|map@K with K in topk {config['topk']}")
    return key


def _optimizer_and_scheduler(model: torch.nn.Module, config: dict):
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    decay, every = config["lr_decay"], config["lr_decay_epochs"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: decay ** (epoch / every))
    return optimizer, scheduler


def train(config: dict, run_dir: str | Path, *, resume: bool = False, progress: bool = True, log=print) -> TrainResult:
    """Train one model as SPEC §7 prescribes; `resume=True` continues from `run_dir/last.pt`."""
    run_dir = Path(run_dir)
    metric = _metric_key(config)
    state = load_checkpoint(run_dir / "last.pt") if resume else None
    set_seed(config["seed"])
    dataset, model = prepare(config)
    device = torch.device(config["device"])
    optimizer, scheduler = _optimizer_and_scheduler(model, config)
    sampler = TrainSampler(dataset.train, dataset.n_users, dataset.n_items, config["train_batch_size"])
    generator = torch.Generator().manual_seed(config["seed"])
    train_items = UserItems.from_pairs(dataset.train, dataset.n_users)
    valid_items = UserItems.from_pairs(dataset.valid, dataset.n_users)
    test_items = UserItems.from_pairs(dataset.test, dataset.n_users)

    start_epoch, best, bad_evals, history = 0, None, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        generator.set_state(state["rng"]["sampler"])
        start_epoch, best, bad_evals, history = state["epoch"] + 1, state["best"], state["bad_evals"], state["history"]
        log(f"resuming {run_dir} after epoch {state['epoch']}")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text("")
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))

    started, stopped = time.perf_counter(), "max_epochs"
    epoch = start_epoch - 1
    for epoch in range(start_epoch, config["epochs"]):
        epoch_start = time.perf_counter()
        model.train()
        total, nan_loss = 0.0, False
        batches = tqdm(sampler.epoch(generator), total=len(sampler), desc=f"epoch {epoch}", leave=False, disable=not progress)
        for users, pos, neg in batches:
            users, pos, neg = users.to(device), pos.to(device), neg.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = model.calculate_loss(users, pos, neg)
            if torch.isnan(loss):
                nan_loss = True
                break
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches.set_postfix(loss=f"{loss.item():.4f}")
        if nan_loss:
            stopped = "nan_loss"
            log(f"epoch {epoch}: loss is NaN, training stops")
            break
        scheduler.step()
        train_s = time.perf_counter() - epoch_start
        valid = evaluate_model(model, train_items, valid_items, config["topk"], config["eval_batch_size"])
        test = evaluate_model(model, train_items, test_items, config["topk"], config["eval_batch_size"])
        record = {
            "epoch": epoch, "loss": total / max(len(sampler), 1), "train_s": train_s,
            "eval_s": time.perf_counter() - epoch_start - train_s, "lr": optimizer.param_groups[0]["lr"],
            "valid": valid, "test": test,
        }  # fmt: skip
        history.append(record)
        with open(run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if best is None or valid[metric] >= best["valid"][metric]:
            best, bad_evals = {"epoch": epoch, "valid": valid, "test": test}, 0
            save_checkpoint(run_dir / "best.pt", {"config": config, "model": model.state_dict(), "epoch": epoch})
        else:
            bad_evals += 1
        log(
            f"epoch {epoch}: loss {record['loss']:.4f}  valid {metric} {valid[metric]:.4f}  "
            f"test {metric} {test[metric]:.4f}  ({train_s:.1f}s train, {record['eval_s']:.1f}s eval)"
        )
        save_checkpoint(
            run_dir / "last.pt",
            {
                "config": config, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best, "bad_evals": bad_evals,
                "history": history, "rng": {"torch": torch.get_rng_state(), "sampler": generator.get_state()},
            },
        )  # fmt: skip
        if bad_evals > config["stopping_step"]:
            stopped = "early_stopping"
            break
    result = TrainResult(
        best_epoch=best["epoch"] if best else -1,
        best_valid=best["valid"] if best else {},
        best_test=best["test"] if best else {},
        epochs_run=epoch + 1,
        stopped=stopped,
        seconds=time.perf_counter() - started,
        run_dir=str(run_dir),
        history=history,
    )
    (run_dir / "result.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def run_grid(config: dict, grid: dict, seeds: list[int], run_dir: str | Path, *, progress: bool = True, log=print) -> dict:
    """Train every grid point with every seed; select the point on the mean VALID metric (never on
    test) and report its test metrics as mean ± std over the seeds."""
    run_dir = Path(run_dir)
    metric = _metric_key(config)
    points = []
    for index, point in enumerate(expand_grid(config, grid)):
        results = [
            train(dict(point, seed=seed), run_dir / f"point{index}" / f"seed{seed}", progress=progress, log=log)
            for seed in seeds
        ]
        summary = {"point": {k: point[k] for k in grid}, "seeds": seeds}
        for split, key in (("valid", "best_valid"), ("test", "best_test")):
            for name in getattr(results[0], key):
                summary[f"{split}/{name}"] = mean_std([getattr(r, key)[name] for r in results])
        points.append(summary)
    best = max(points, key=lambda p: p[f"valid/{metric}"][0])
    report = {"selected_on": f"valid/{metric}", "best": best, "points": points}
    (run_dir / "grid.json").write_text(json.dumps(report, indent=2))
    return report
