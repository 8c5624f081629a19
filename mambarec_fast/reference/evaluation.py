"""The authors' evaluation loop (MMRec's full-sort evaluation): the speed baseline of `evaluate`.

Their `full_sort_predict` recomputes the whole graph forward for every batch of users; the metrics
are the same as `mambarec_fast.evaluation.evaluate_model`, which runs the forward once.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..evaluation import UserItems, eval_mode, ranking_metrics, topk_scores


def evaluate_model(
    model: torch.nn.Module,
    train: UserItems,
    target: UserItems,
    ks: Sequence[int] = (5, 10, 20, 50),
    batch_size: int = 4096,
) -> dict[str, float]:
    """SPEC §7 metrics of the users with `target` items, one `model.embeddings()` per user batch."""
    users = target.users_with_items()
    if users.numel() == 0:
        raise ValueError("target has no items: there are no users to evaluate")
    tops = []
    with eval_mode(model):
        for batch in users.split(batch_size):
            user_emb, item_emb = model.embeddings()
            tops.append(topk_scores(user_emb, item_emb, batch.to(user_emb.device), train, max(ks), batch_size))
    return ranking_metrics(torch.cat(tops), users.to(tops[0].device), target, ks)
