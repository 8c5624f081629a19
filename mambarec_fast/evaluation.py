"""Full-sort top-K evaluation and ranking metrics (SPEC §7).

For every evaluated user all items are scored by `<user, item>`, the user's train items are set to
`-inf` (valid items are not masked at test time), the top `max(ks)` items are kept, and Recall,
NDCG, Precision and MAP at each K are averaged over the evaluated users. The metric definitions
are those of the authors' MMRec code:

- Recall@K    = hits@K / |relevant|
- NDCG@K      = DCG@K / IDCG@K, binary gains, DCG = sum over hits of 1 / log2(rank + 1) (rank from
                1), IDCG the same sum over the first min(|relevant|, K) ranks
- Precision@K = hits@K / K
- MAP@K       = sum_{k <= K} P@k * rel_k / min(|relevant|, K)

A leaf module: torch and numpy only.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

METRICS = ("recall", "ndcg", "precision", "map")


@dataclass(frozen=True)
class UserItems:
    """Each user's item set in CSR form: the items of user `u` are `indices[indptr[u]:indptr[u+1]]`.

    indptr:  int64 `[n_users + 1]`, non-decreasing, from 0 to `len(indices)`.
    indices: int64 `[nnz]`, item ids, sorted ascending and free of duplicates within each user.
    Built once per split (train, valid, test) by `from_pairs`, on the CPU; `to` moves it.
    """

    indptr: torch.Tensor
    indices: torch.Tensor

    def __post_init__(self):
        for name in ("indptr", "indices"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.dim() != 1:
                raise TypeError(f"UserItems.{name} must be a 1-D int64 tensor, got {_describe(t)}")
        if self.indptr.numel() == 0 or self.indptr[0] != 0 or self.indptr[-1] != self.indices.numel():
            raise ValueError(
                f"UserItems.indptr must run from 0 to len(indices)={self.indices.numel()}, got "
                f"{self.indptr.numel()} entries"
            )

    @classmethod
    def from_pairs(cls, pairs, n_users: int, n_items: int | None = None) -> "UserItems":
        """CSR of the integer `(user, item)` rows of `pairs` (`[n, 2]`, array-like), duplicates removed.

        Users must lie in `[0, n_users)`, items in `[0, n_items)` (only `>= 0` when `n_items` is
        None); a violation raises ValueError naming the first offending row.
        """
        arr = np.asarray(pairs)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"pairs must have shape [n, 2], got {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"pairs must hold integer ids, got dtype {arr.dtype}")
        if int(n_users) != n_users or n_users < 0:
            raise ValueError(f"n_users must be a non-negative integer, got {n_users!r}")
        n_users = int(n_users)
        arr = arr.astype(np.int64, copy=False)
        users, items = arr[:, 0], arr[:, 1]
        _check_range(users, n_users, "user")
        _check_range(items, n_items, "item")

        # One sorted key per (user, item) sorts by user then item and drops duplicates in one pass.
        stride = int(items.max()) + 1 if items.size else 1
        keys = np.unique(users * stride + items)
        users, items = keys // stride, keys % stride
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
        return cls(torch.from_numpy(indptr), torch.from_numpy(items.astype(np.int64)))

    @property
    def n_users(self) -> int:
        return self.indptr.numel() - 1

    def counts(self) -> torch.Tensor:
        """int64 `[n_users]`: the number of items of each user."""
        return self.indptr[1:] - self.indptr[:-1]

    def users_with_items(self) -> torch.Tensor:
        """int64 `[m]`: the users (ascending) that have at least one item."""
        return torch.nonzero(self.counts() > 0).flatten()

    def to(self, device) -> "UserItems":
        """The same sets with both tensors on `device` (self when already there)."""
        if self.indptr.device == torch.device(device):
            return self
        return UserItems(self.indptr.to(device), self.indices.to(device))

    def gather(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The items of `users` (int64 `[n]`) flattened: `(row, item)`, each int64 `[total]`.

        `row[j]` is the position in `users` of the user that owns `item[j]`. `users` must be on
        the CSR's device.
        """
        indptr = self.indptr
        starts, counts = indptr[users], indptr[users + 1] - indptr[users]
        rows = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
        # Position of each entry inside its user's segment: global index minus the segment's offset.
        offsets = torch.cumsum(counts, 0) - counts
        within = torch.arange(rows.numel(), device=users.device) - offsets[rows]
        return rows, self.indices[starts[rows] + within]


def topk_scores(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    users: torch.Tensor,
    exclude: UserItems,
    k: int,
    batch_size: int = 4096,
) -> torch.Tensor:
    """Full-sort top-`k` item ids, int64 `[n, min(k, I)]`, of `users` (int64 `[n]`) by `<user, item>`.

    user_emb `[U, d]`, item_emb `[I, d]` (same floating dtype and device). Each user's `exclude`
    items score `-inf`, so they come last; they still fill the list when fewer than `k` items are
    left. Users go in batches of `batch_size`, so at most `batch_size x I` scores exist at once.
    Ties come in `torch.topk`'s order. The result is on the embeddings' device.
    """
    _check_embeddings(user_emb, item_emb)
    _check_positive_int(k, "k")
    _check_positive_int(batch_size, "batch_size")
    _check_user_items(exclude, "exclude", user_emb.shape[0], item_emb.shape[0])
    users = _check_users(users, user_emb.shape[0], user_emb.device)
    if not (torch.isfinite(user_emb).all() and torch.isfinite(item_emb).all()):
        raise ValueError("user_emb and item_emb must be finite (found NaN or inf)")
    exclude = exclude.to(user_emb.device)
    k = min(k, item_emb.shape[0])
    out = torch.empty(users.numel(), k, dtype=torch.int64, device=user_emb.device)
    for start in range(0, users.numel(), batch_size):
        batch = users[start : start + batch_size]
        scores = user_emb[batch] @ item_emb.T
        rows, items = exclude.gather(batch)
        scores[rows, items] = float("-inf")
        out[start : start + batch.numel()] = torch.topk(scores, k, dim=1).indices
    return out


def ranking_metrics(
    top: torch.Tensor, users: torch.Tensor, relevant: UserItems, ks: Iterable[int]
) -> dict[str, float]:
    """`{"recall@k", "ndcg@k", "precision@k", "map@k"}` for every k in `ks`, averaged over users.

    top: int64 `[n, K]`, each user's ranked item ids (distinct within a row, as `torch.topk`
    gives); users: int64 `[n]`, each row's user, every one with at least one `relevant` item.
    A k larger than K reads the whole list and counts its missing slots as misses (this happens
    when k exceeds the number of items). Computed in float64 on `top`'s device.
    """
    ks = _check_ks(ks)
    if not isinstance(top, torch.Tensor) or top.dim() != 2 or top.dtype != torch.int64:
        raise TypeError(f"top must be an int64 [n, K] tensor, got {_describe(top)}")
    if top.shape[1] == 0:
        raise ValueError("top must hold at least one item per user, got shape [n, 0]")
    users = _check_users(users, relevant.n_users, top.device)
    if users.numel() != top.shape[0]:
        raise ValueError(f"top has {top.shape[0]} rows but users has {users.numel()} entries")
    if users.numel() == 0:
        raise ValueError("no users to evaluate (users is empty)")
    if top.min() < 0:
        raise ValueError(f"top holds a negative item id ({int(top.min())})")
    n_rel = relevant.counts().to(top.device)[users]
    if (n_rel == 0).any():
        bad = int(users[n_rel == 0][0])
        raise ValueError(f"user {bad} has no relevant items; evaluate only users with some")

    hit = _hits(top, users, relevant).to(torch.float64)
    n_cols, dev = top.shape[1], top.device
    ranks = torch.arange(1, max(max(ks), n_cols) + 1, dtype=torch.float64, device=dev)
    discount = 1.0 / torch.log2(ranks + 1)
    ideal_dcg = torch.cumsum(discount, 0)  # ideal_dcg[m - 1]: DCG of m hits in the first m ranks
    cum_hits = torch.cumsum(hit, 1)
    cum_dcg = torch.cumsum(hit * discount[:n_cols], 1)
    cum_ap = torch.cumsum(hit * cum_hits / ranks[:n_cols], 1)  # sum of P@j * rel_j up to each rank
    n_rel = n_rel.to(torch.float64)

    out = {}
    for k in ks:
        col = min(k, n_cols) - 1
        ideal_len = torch.clamp(n_rel, max=k)
        per_user = {
            "recall": cum_hits[:, col] / n_rel,
            "ndcg": cum_dcg[:, col] / ideal_dcg[ideal_len.long() - 1],
            "precision": cum_hits[:, col] / k,
            "map": cum_ap[:, col] / ideal_len,
        }
        for name in METRICS:
            out[f"{name}@{k}"] = float(per_user[name].mean())
    return out


def evaluate_embeddings(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    train: UserItems,
    target: UserItems,
    ks: Sequence[int] = (5, 10, 20, 50),
    batch_size: int = 4096,
) -> dict[str, float]:
    """SPEC §7 metrics of the users with `target` items: train items masked, top `max(ks)` kept."""
    ks = _check_ks(ks)
    _check_embeddings(user_emb, item_emb)
    _check_user_items(train, "train", user_emb.shape[0], item_emb.shape[0])
    _check_user_items(target, "target", user_emb.shape[0], item_emb.shape[0])
    users = target.users_with_items().to(user_emb.device)
    if users.numel() == 0:
        raise ValueError("target has no items: there are no users to evaluate")
    top = topk_scores(user_emb, item_emb, users, train, max(ks), batch_size)
    return ranking_metrics(top, users, target, ks)


def evaluate_model(
    model: torch.nn.Module,
    train: UserItems,
    target: UserItems,
    ks: Sequence[int] = (5, 10, 20, 50),
    batch_size: int = 4096,
) -> dict[str, float]:
    """`evaluate_embeddings` of `model.embeddings()` (`(user [U, d], item [I, d])`), taken in eval mode.

    The model's train/eval mode is restored afterwards, even when scoring fails.
    """
    with eval_mode(model):
        user_emb, item_emb = model.embeddings()
    return evaluate_embeddings(user_emb, item_emb, train, target, ks, batch_size)


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode without gradients inside; the model's previous train/eval mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


# -- helpers ----------------------------------------------------------------------------------


def _hits(top: torch.Tensor, users: torch.Tensor, relevant: UserItems) -> torch.Tensor:
    """bool `[n, K]`: whether `top[r, j]` is one of `users[r]`'s relevant items.

    Every (user, item) pair becomes the key `user * stride + item`; the CSR's keys are already
    sorted (users ascending, items ascending within a user), so one searchsorted finds them all.
    """
    dev = top.device
    indices = relevant.indices.to(dev)
    stride = max(int(top.max()), int(indices.max()) if indices.numel() else 0) + 1
    owner = torch.repeat_interleave(torch.arange(relevant.n_users, device=dev), relevant.counts().to(dev))
    rel_keys = owner * stride + indices
    top_keys = users[:, None] * stride + top
    pos = torch.searchsorted(rel_keys, top_keys).clamp_(max=rel_keys.numel() - 1)
    return rel_keys[pos] == top_keys


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _check_range(ids: np.ndarray, upper: int | None, what: str) -> None:
    bad = ids < 0 if upper is None else (ids < 0) | (ids >= upper)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        bound = "must be >= 0" if upper is None else f"must lie in [0, {upper})"
        raise ValueError(f"{what} id {int(ids[row])} at row {row} of pairs {bound}")


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_ks(ks) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks must name at least one cut-off K, got none")
    for k in ks:
        _check_positive_int(k, "every K in ks")
    return tuple(int(k) for k in ks)


def _check_embeddings(user_emb: torch.Tensor, item_emb: torch.Tensor) -> None:
    for name, t in (("user_emb", user_emb), ("item_emb", item_emb)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating [n, d] tensor, got {_describe(t)}")
    if user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(
            f"embedding sizes differ: user_emb {tuple(user_emb.shape)}, item_emb {tuple(item_emb.shape)}"
        )
    if user_emb.dtype != item_emb.dtype or user_emb.device != item_emb.device:
        raise ValueError(
            f"user_emb ({user_emb.dtype}, {user_emb.device}) and item_emb ({item_emb.dtype}, "
            f"{item_emb.device}) must share dtype and device"
        )


def _check_user_items(ui: UserItems, name: str, n_users: int, n_items: int) -> None:
    if not isinstance(ui, UserItems):
        raise TypeError(f"{name} must be a UserItems, got {type(ui).__name__}")
    if ui.n_users != n_users:
        raise ValueError(f"{name} covers {ui.n_users} users but user_emb has {n_users} rows")
    if ui.indices.numel() and int(ui.indices.max()) >= n_items:
        raise ValueError(f"{name} holds item id {int(ui.indices.max())} but item_emb has {n_items} rows")


def _check_users(users, n_users: int, device: torch.device) -> torch.Tensor:
    if not isinstance(users, torch.Tensor) or users.dim() != 1 or users.dtype != torch.int64:
        raise TypeError(f"users must be a 1-D int64 tensor, got {_describe(users)}")
    if users.numel() and (int(users.min()) < 0 or int(users.max()) >= n_users):
        raise ValueError(f"users must lie in [0, {n_users}), got ids from {int(users.min())} to {int(users.max())}")
    return users.to(device)
