"""Run configuration: SPEC's defaults, YAML files, `--set key=value` overrides and grids."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterable

import yaml

#: Every key a run understands, with SPEC's values (mmd_weight and bandwidth: the grid's first point).
DEFAULTS: dict[str, Any] = {
    # data
    "data": "synthetic:tiny",
    "data_seed": 0,
    "modalities": ["image", "text"],
    "knn_k": 10,
    "graph_cache": None,
    # model: "mambarec" or "lightgcn" (which uses embedding_size, n_ui_layers as its layer count,
    # reg_weight and train_batch_size, and loads no features)
    "model": "mambarec",
    "impl": "fast",
    "embedding_size": 64,
    "reduction_factor": 8,
    "n_ui_layers": 4,
    "n_layers": 1,
    "mmd_weight": 0.1,
    "mmd_kernel_bandwidth": 1.0,
    "cl_loss": 0.01,
    "cl_temperature": 0.2,
    "reg_weight": 1e-4,
    "dropout": 0.2,
    "dream_rate": 1,
    "bn_mom": 0.1,
    "dream": True,  # False: no DREAM blocks (ablation "w/o DREAM")
    # training
    "learning_rate": 0.001,
    "lr_decay": 0.96,
    "lr_decay_epochs": 50,
    "train_batch_size": 2048,
    "epochs": 1000,
    "stopping_step": 10,
    "valid_metric": "recall@20",
    "seed": 999,
    "device": "cpu",
    # evaluation
    "topk": [5, 10, 20, 50],
    "eval_batch_size": 4096,
}

#: The hyper-parameter grid of the paper (SPEC §7), used by `train --grid paper`.
PAPER_GRID: dict[str, list] = {"mmd_weight": [0.1, 0.15, 0.2], "mmd_kernel_bandwidth": [1.0, 1.5, 2.0]}


def parse_override(text: str) -> tuple[str, Any]:
    """`"key=value"` -> `(key, value)`, the value read as YAML (`3`, `0.1`, `[a, b]`, `true`)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ValueError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return key, value


def _check_keys(keys: Iterable[str], where: str) -> None:
    unknown = sorted(set(keys) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{where}: unknown config key(s) {unknown}; known keys: {sorted(DEFAULTS)}")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> tuple[dict, dict]:
    """Defaults, then the YAML file, then `--set` overrides. Returns `(config, grid)`.

    A YAML file may hold a `grid:` mapping of key -> list of values; an override whose value is a
    list for a scalar key is a grid axis too (`--set mmd_weight=[0.1,0.2]`).
    """
    config = dict(DEFAULTS)
    grid: dict[str, list] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ValueError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping of keys to values")
        file_grid = loaded.pop("grid", None) or {}
        if not isinstance(file_grid, dict):
            raise ValueError(f"config file {path}: `grid` must map keys to lists of values")
        _check_keys(loaded, f"config file {path}")
        _check_keys(file_grid, f"config file {path} (grid)")
        config.update(loaded)
        grid.update({k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in file_grid.items()})
    for text in overrides:
        key, value = parse_override(text)
        _check_keys([key], f"--set {text}")
        if isinstance(value, list) and not isinstance(DEFAULTS[key], list):
            grid[key] = value
        else:
            config[key] = value
            grid.pop(key, None)
    return config, grid


def expand_grid(config: dict, grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values applied to `config` (one config when the grid is empty)."""
    keys = sorted(grid)
    return [dict(config, **dict(zip(keys, values))) for values in itertools.product(*(grid[k] for k in keys))]
