"""The fixed graphs of SPEC §2, built once before training as coalesced float32 sparse COO tensors.

- `user_item_graphs`: `Â = D^-1/2 [[0, R], [R^T, 0]] D^-1/2` and its user-item block `R̂`, built
  straight from the edge list (never a dense or LIL/DOK matrix).
- `knn_graph`: the per-modality item-item kNN graph on cosine similarity, computed in row blocks
  so that peak memory is O(block x I), never I x I.
- `cached_knn_graph`: the same, cached on disk under a hash of the features and k.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..reference.model import MambaRecGraphs
from .mmrec import MMRecDataset, as_pairs

#: Bumped whenever `knn_graph`'s output changes for the same input, so stale caches miss.
KNN_CACHE_VERSION = 1


def _inv_sqrt(degree: torch.Tensor) -> torch.Tensor:
    """`degree^-1/2`, with 0 where the degree is not positive (a zero row stays zero, never inf/NaN)."""
    positive = degree > 0
    return torch.where(positive, degree.clamp_min(torch.finfo(degree.dtype).tiny).rsqrt(), 0.0)


def _sparse(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Coalesced COO from in-range indices (built here, so torch's invariant check is skipped)."""
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, size, check_invariants=False).coalesce()


def user_item_graphs(n_users: int, n_items: int, train) -> tuple[torch.Tensor, torch.Tensor]:
    """`(Â [U+I, U+I], R̂ [U, I])` from the train `(user, item)` rows (int `[n, 2]`, numpy or torch).

    `R` is binary: duplicate rows count once. A user or item with no train row has degree 0 and
    an all-zero row and column. Values are computed in float64 and stored as float32.
    """
    if n_users < 0 or n_items < 0:
        raise ValueError(f"n_users and n_items must be >= 0, got {n_users}, {n_items}")
    train = as_pairs(train, n_users, n_items)
    users, items = train[:, 0], train[:, 1]
    keys = torch.unique(users * n_items + items)
    users, items = keys // max(n_items, 1), keys % max(n_items, 1)
    d_user = _inv_sqrt(torch.bincount(users, minlength=n_users).double())
    d_item = _inv_sqrt(torch.bincount(items, minlength=n_items).double())
    values = (d_user[users] * d_item[items]).float()
    ui = _sparse(users, items, values, (n_users, n_items))
    n = n_users + n_items
    rows, cols = torch.cat([users, items + n_users]), torch.cat([items + n_users, users])
    adj = _sparse(rows, cols, values.repeat(2), (n, n))
    return adj, ui


def _as_features(features) -> torch.Tensor:
    features = torch.as_tensor(features) if not isinstance(features, torch.Tensor) else features
    if features.ndim != 2 or features.is_complex():
        raise ValueError(f"features must be a real 2-D array [items, dim], "
                         f"got {features.dtype} {tuple(features.shape)}")
    features = features.detach().float()
    if not torch.isfinite(features).all():
        row = int((~torch.isfinite(features)).any(dim=1).nonzero()[0])
        raise ValueError(f"features row {row} holds NaN or inf")
    return features


def knn_graph(features, k: int = 10, block_size: int = 1024) -> torch.Tensor:
    """The item-item graph `S` `[I, I]` of one modality (SPEC §2), float32 sparse COO, coalesced.

    features: `[I, D]` (numpy or torch, any real dtype; computed in float32 on its device).
    Rows are L2-normalised; each row keeps its `k` largest cosine similarities (`torch.topk` over
    the float32 row; the item itself is normally among them) with the similarities as weights;
    then `w_ij *= deg_i^-1/2 deg_j^-1/2`, `deg` = row sums (not symmetrised).

    An all-zero feature row (missing metadata) has no direction: it gets itself as its only
    neighbour (weight 1 before normalisation) and is no candidate for any other row. With fewer
    than `k` candidate items every candidate is kept. A non-positive degree (only possible with
    negative similarities) gets `deg^-1/2 = 0` and one warning.
    """
    if k < 1 or block_size < 1:
        raise ValueError(f"k and block_size must be >= 1, got k={k}, block_size={block_size}")
    features = _as_features(features)
    n_items, device = features.shape[0], features.device
    norms = torch.linalg.vector_norm(features, dim=1)
    live = torch.nonzero(norms > 0).flatten()  # a norm of 0 (zero row, or underflow) has no direction
    dead = torch.nonzero(norms == 0).flatten()
    unit = features[live]  # a copy (advanced indexing), normalised in place: one I x D buffer
    unit /= norms[live, None]
    k_eff = min(k, len(live))
    rows, cols, vals = [dead], [dead], [torch.ones(len(dead), device=device)]
    for start in range(0, len(live), block_size):
        sim = unit[start:start + block_size] @ unit.T  # [block, live]: the only O(block x I) buffer
        top_vals, top_cols = torch.topk(sim, k_eff, dim=1)
        rows.append(live[start:start + block_size].repeat_interleave(k_eff))
        cols.append(live[top_cols.flatten()])
        vals.append(top_vals.flatten())
    rows, cols, vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    degree = torch.zeros(n_items, device=device).index_add_(0, rows, vals)
    n_bad = int((degree <= 0).sum())  # every item has at least one entry, so each degree counts
    if n_bad:
        warnings.warn(f"knn_graph: {n_bad} item rows have a non-positive degree (negative similarities); "
                      "their deg^-1/2 is set to 0", RuntimeWarning, stacklevel=2)
    inv = _inv_sqrt(degree)
    vals = vals * inv[rows] * inv[cols]
    return _sparse(rows, cols, vals, (n_items, n_items))


def knn_cache_key(features, k: int) -> str:
    """`knn-k{k}-{sha256}`: the digest covers the cache version, k, shape, dtype and the raw bytes."""
    array = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"v{KNN_CACHE_VERSION};k={k};{array.shape};{array.dtype.str};".encode())
    digest.update(memoryview(array).cast("B"))
    return f"knn-k{k}-{digest.hexdigest()}"


def _load_cached(path: Path, n_items: int) -> torch.Tensor | None:
    """The cached graph, or None (with a warning) when the file is unreadable or the wrong shape."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        indices, values, size = saved["indices"], saved["values"], tuple(saved["size"].tolist())
        if size != (n_items, n_items) or indices.shape != (2, len(values)) or values.dtype != torch.float32:
            raise ValueError(f"holds size {size}, {tuple(indices.shape)} indices, {values.dtype} values")
        return torch.sparse_coo_tensor(indices, values, size, check_invariants=True).coalesce()  # untrusted
    except Exception as exc:  # any defect of a cache file means: rebuild it
        warnings.warn(f"ignoring unusable kNN graph cache {path}: {exc}", RuntimeWarning, stacklevel=3)
        return None


def cached_knn_graph(features, k: int = 10, cache_dir=None, block_size: int = 1024) -> torch.Tensor:
    """`knn_graph(features, k)`, cached in `cache_dir/<knn_cache_key>.pt` (None: no cache).

    The file is written to a temporary name and renamed, so a crash never leaves half a cache.
    A hit is returned on the device of `features` (CPU for numpy), like a fresh build.
    """
    if cache_dir is None:
        return knn_graph(features, k, block_size)
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{knn_cache_key(features, k)}.pt"
    n_items = len(features)
    if path.is_file():
        graph = _load_cached(path, n_items)
        if graph is not None:
            return graph.to(features.device if isinstance(features, torch.Tensor) else "cpu")
    graph = knn_graph(features, k, block_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cpu = graph.cpu()
    payload = {"indices": cpu.indices(), "values": cpu.values(), "size": torch.tensor(cpu.shape)}
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return graph


def build_graphs(dataset: MMRecDataset, knn_k: int = 10, cache_dir=None) -> MambaRecGraphs:
    """All graphs a model needs: `Â`, `R̂` and one kNN graph per modality in `dataset.features`."""
    adj, ui = user_item_graphs(dataset.n_users, dataset.n_items, dataset.train)
    items = {m: cached_knn_graph(f, knn_k, cache_dir) for m, f in dataset.features.items()}
    return MambaRecGraphs(adj, ui, items)
