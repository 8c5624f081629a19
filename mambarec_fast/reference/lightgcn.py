"""LightGCN (He et al., SIGIR 2020), the ID-only baseline of every multimodal recommendation paper,
in plain PyTorch, on MambaRec's user-item graph `Â`, trainer and evaluator.

As MMRec trains it: `E0 = [user; item]` (xavier-uniform), `all = mean(E0, Â E0, ..., Â^L E0)`;
loss = BPR on `all` + `reg_weight * ½(|u0|² + |i+0|² + |i-0|²) / batch_size` on the layer-0 (ego)
embeddings of the batch. (MMRec's `EmbLoss` sums un-squared norms; the squared form here is the
penalty MambaRec itself uses, so the two models differ by their architecture only.)
"""
from __future__ import annotations

import torch
from torch import nn

from .model import bpr_loss, l2_penalty
from .propagation import propagate


class LightGCN(nn.Module):
    """LightGCN over `n_users` x `n_items` and `adj` = `Â`, sparse `[U+I, U+I]`.

    Parameter names follow MambaRec's (`user_embedding`, `item_id_embedding`); the graph is a
    non-persistent buffer. `propagate` is the hook a fast subclass replaces.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        adj: torch.Tensor,
        *,
        embedding_size: int = 64,
        n_layers: int = 4,
        reg_weight: float = 1e-4,
        train_batch_size: int = 2048,
    ):
        super().__init__()
        n = n_users + n_items
        if not isinstance(adj, torch.Tensor) or adj.shape != (n, n):
            raise ValueError(f"adj must be a [{n}, {n}] tensor (users + items), got {getattr(adj, 'shape', type(adj).__name__)}")
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 0:
            raise ValueError(f"n_layers must be an int >= 0, got {n_layers!r}")
        self.n_users, self.n_items, self.n_layers = n_users, n_items, n_layers
        self.reg_weight, self.train_batch_size = reg_weight, train_batch_size
        self.user_embedding = nn.Embedding(n_users, embedding_size)
        self.item_id_embedding = nn.Embedding(n_items, embedding_size)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.register_buffer("adj", adj, persistent=False)

    def propagate(self, graph: str, x: torch.Tensor, layers: int) -> torch.Tensor:
        """Mean of `x, Gx, ..., G^L x` over the named graph ("adj")."""
        return propagate(getattr(self, graph), x, layers)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer-mean user `[U, d]` and item `[I, d]` embeddings."""
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight], dim=0)
        out = self.propagate("adj", ego, self.n_layers)
        users, items = torch.split(out, [self.n_users, self.n_items], dim=0)
        return users, items

    def loss_terms(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> dict:
        """`{"bpr", "reg"}` for a batch of triples; their sum is the loss."""
        user_all, item_all = self.forward()
        bpr = bpr_loss(user_all[users], item_all[pos_items], item_all[neg_items])
        reg = l2_penalty(
            self.user_embedding.weight[users], self.item_id_embedding.weight[pos_items],
            self.item_id_embedding.weight[neg_items], self.reg_weight, self.train_batch_size,
        )  # fmt: skip
        return {"bpr": bpr, "reg": reg}

    def calculate_loss(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
        return sum(self.loss_terms(users, pos_items, neg_items).values())

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """User `[U, d]` and item `[I, d]` embeddings for scoring."""
        return self.forward()
