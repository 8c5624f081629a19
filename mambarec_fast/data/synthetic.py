"""Synthetic MMRec datasets with planted multimodal structure, and `load_dataset`, the one entry
point that turns a `data` setting ("synthetic:NAME" or a folder) into an `MMRecDataset`.

Generative story (all from one numpy seed, vectorised):
- users and items get latent factors `P [U, r]`, `Z [I, r]`;
- item popularity is Zipf-like, `pop_i ∝ rank_i^-a` (ranks a random permutation);
- user activity is long-tailed (log-normal weights) with at least `min_user_interactions` each;
- user u picks `n_u` distinct items with probability ∝ `pop_i · exp(β <P_u, Z_i> / √r)`, drawn
  without replacement by the Gumbel-top-k trick, in blocks of users;
- each modality's features are `Z W_m + σ_m · noise` with its own random projection `W_m`, so both
  feature matrices carry the factors that drive the interactions (tests/test_synthetic.py checks
  that feature-space neighbours share users far more than random pairs; noise features do not);
- per user, a random ~10% of the rows is test and ~10% valid (at least one each), the rest train
  (at least one), like MMRec's per-user split. Unlike the 5-core real data, a few tail items may
  have no interaction at all (47 of 7,050 in `baby`, seed 0): they exist only through features.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..reference.model import MODALITIES
from .mmrec import DataError, MMRecDataset, check_modalities, load_mmrec


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes and knobs of one synthetic dataset (`n_interactions` is met exactly)."""

    name: str
    n_users: int
    n_items: int
    n_interactions: int
    image_dim: int
    text_dim: int
    latent_dim: int = 16
    popularity_exponent: float = 0.8  # Zipf `a`: larger, a longer head
    affinity: float = 2.0  # β: how strongly the latent match drives the choice
    activity_sigma: float = 1.0  # log-normal spread of user activity
    min_user_interactions: int = 5  # MMRec data is 5-core
    image_noise: float = 1.0  # σ_m, against a signal of unit variance per feature
    text_noise: float = 0.5
    eval_fraction: float = 0.1  # of each user's rows, for valid and again for test

    def __post_init__(self):
        if self.min_user_interactions < 3:
            raise ValueError("min_user_interactions must be >= 3: one train, one valid, one test row per user")
        if self.n_interactions < self.n_users * self.min_user_interactions:
            raise ValueError(f"{self.name}: {self.n_interactions} interactions cannot give {self.n_users} users "
                             f"{self.min_user_interactions} each")
        if self.n_interactions > self.n_users * (self.n_items // 2):
            raise ValueError(f"{self.name}: {self.n_interactions} interactions exceed half of the user x item grid")


#: Named presets: `tiny` for tests and demos, then the sizes of SPEC §1's datasets.
PRESETS: dict[str, SyntheticSpec] = {
    spec.name: spec
    for spec in (
        SyntheticSpec("tiny", 300, 200, 7_000, image_dim=96, text_dim=48, latent_dim=8),
        SyntheticSpec("baby", 19_445, 7_050, 160_792, image_dim=4096, text_dim=384),
        SyntheticSpec("sports", 35_598, 18_357, 296_337, image_dim=4096, text_dim=384),
        SyntheticSpec("clothing", 39_387, 23_033, 278_677, image_dim=4096, text_dim=384),
    )
}


def _user_counts(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Interactions per user `[U]`: min + a multinomial share of the rest, capped at half the items
    (the overflow of capped users is dealt again among the others); sums to `n_interactions`."""
    cap = spec.n_items // 2
    weights = rng.lognormal(0.0, spec.activity_sigma, spec.n_users)
    counts = np.full(spec.n_users, spec.min_user_interactions, dtype=np.int64)
    left = spec.n_interactions - counts.sum()
    while left:
        open_ = counts < cap
        share = np.where(open_, weights, 0.0)
        counts += rng.multinomial(left, share / share.sum())
        left = int(np.maximum(counts - cap, 0).sum())
        np.minimum(counts, cap, out=counts)
    return counts


def _pick_items(spec, rng, counts, user_factors, item_factors, log_pop, block: int = 1024) -> np.ndarray:
    """`[sum(counts)]` item ids: user u's `counts[u]` distinct picks, grouped by user, u ascending.

    Gumbel-top-k: the `n` largest `logit + Gumbel` of a row are a draw of `n` items without
    replacement with probabilities ∝ `exp(logit)`. Users go through in order of their count, so a
    block's top-k is only as wide as its own largest count; `torch.topk` is ~3x faster here than
    `np.argpartition` and returns the k sorted.
    """
    scale = np.float32(spec.affinity / np.sqrt(spec.latent_dim))
    by_count = np.argsort(counts, kind="stable")
    picks = np.empty(spec.n_users, dtype=object)
    for start in range(0, spec.n_users, block):
        users = by_count[start:start + block]
        keys = (user_factors[users] @ item_factors.T) * scale + log_pop
        noise = rng.standard_exponential(keys.shape, dtype=np.float32)
        keys -= np.log(np.maximum(noise, np.finfo(np.float32).tiny, out=noise))  # + Gumbel(0, 1)
        top = torch.from_numpy(keys).topk(int(counts[users].max()), dim=1).indices.numpy()
        picks[users] = list(top)
    return np.concatenate([row[:n] for row, n in zip(picks, counts)])


def _split_labels(counts: np.ndarray, eval_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """x_label per row (rows grouped by user, `counts[u]` each): a random `max(1, ⌊f n_u⌋)` of each
    user's rows is test, as many others valid, the rest train (at least one, as `n_u >= 3`)."""
    n_eval = np.maximum(1, np.floor(eval_fraction * counts)).astype(np.int64)
    users = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((rng.random(len(users)), users))  # a random order inside each user's rows
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = np.arange(len(users)) - np.repeat(np.cumsum(counts) - counts, counts)
    per_row = n_eval[users]
    return np.where(rank < per_row, 2, np.where(rank < 2 * per_row, 1, 0))


def make_synthetic(preset: str | SyntheticSpec, seed: int = 0) -> MMRecDataset:
    """A synthetic dataset from a preset name or spec, identical for the same seed (module doc)."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise DataError(f"unknown synthetic preset {preset!r}; presets: {sorted(PRESETS)}")
        preset = PRESETS[preset]
    spec = preset
    rng = np.random.default_rng(seed)
    r = spec.latent_dim
    user_factors = rng.standard_normal((spec.n_users, r), dtype=np.float32)
    item_factors = rng.standard_normal((spec.n_items, r), dtype=np.float32)
    ranks = rng.permutation(spec.n_items)
    # the most popular item takes the last id, so that it occurs and `I = max itemID + 1` holds
    head = int(np.argmin(ranks))
    ranks[[head, -1]] = ranks[[-1, head]]
    log_pop = (-spec.popularity_exponent * np.log1p(ranks)).astype(np.float32)

    counts = _user_counts(spec, rng)
    items = _pick_items(spec, rng, counts, user_factors, item_factors, log_pop)
    users = np.repeat(np.arange(spec.n_users, dtype=np.int64), counts)
    labels = _split_labels(counts, spec.eval_fraction, rng)
    pairs = np.column_stack([users, items.astype(np.int64)])

    features = {}
    shapes = (("image", spec.image_dim, spec.image_noise), ("text", spec.text_dim, spec.text_noise))
    for modality, dim, noise in shapes:
        projection = rng.standard_normal((r, dim), dtype=np.float32) / np.float32(np.sqrt(r))
        noise_part = rng.standard_normal((spec.n_items, dim), dtype=np.float32)
        features[modality] = item_factors @ projection + np.float32(noise) * noise_part
    return MMRecDataset(f"synthetic-{spec.name}", spec.n_users, spec.n_items,
                        *(np.ascontiguousarray(pairs[labels == label]) for label in range(3)), features=features)


def load_dataset(spec: str | os.PathLike, modalities: Iterable[str] = MODALITIES, seed: int = 0) -> MMRecDataset:
    """`"synthetic:NAME"` -> `make_synthetic(NAME, seed)`, anything else -> `load_mmrec(spec)`;
    either way keeping only the requested modalities."""
    modalities, spec = check_modalities(modalities), os.fspath(spec)
    if spec.startswith("synthetic:"):
        dataset = make_synthetic(spec.partition(":")[2], seed)
        kept = {m: a for m, a in dataset.features.items() if m in modalities}
        return dataclasses.replace(dataset, features=kept)
    if not Path(spec).is_dir():
        raise DataError(f"dataset {spec!r}: no such folder (or use synthetic:NAME with NAME in {sorted(PRESETS)})")
    return load_mmrec(spec, modalities)
