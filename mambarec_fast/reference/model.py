"""The MambaRec model and loss (SPEC §3-6) as the authors compute them, in plain PyTorch.

This is the correctness oracle and the speed baseline: DREAM through `nn.Conv2d`, MMD through
pairwise differences, propagation through `torch.sparse.mm`, each DREAM called a second time for
the MMD term. Parameter names are the authors', so their checkpoints load.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .dream import DREAM
from .mmd import mmd_loss
from .propagation import propagate, spmm

MODALITIES = ("image", "text")


class MambaRecGraphs(NamedTuple):
    """The fixed graphs a model propagates over, built once by the data layer (SPEC §2).

    adj:  `Â`, sparse `[U+I, U+I]`; ui: `R̂ = Â[:U, U:]`, sparse `[U, I]`;
    items: modality name -> `S_m`, sparse `[I, I]` (only the modalities the model uses).
    """

    adj: torch.Tensor
    ui: torch.Tensor
    items: Mapping[str, torch.Tensor]


class ForwardOutput(NamedTuple):
    """`all` embeddings split into users/items, plus `side` and `content` `[U+I, d]` for the loss."""

    users: torch.Tensor
    items: torch.Tensor
    side: torch.Tensor
    content: torch.Tensor


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> torch.Tensor:
    """`mean_k -log(exp(<a_k, b_k>/t) / sum_j exp(<a_k, b_j>/t))` over L2-normalised rows."""
    view1, view2 = F.normalize(view1, dim=1), F.normalize(view2, dim=1)
    pos_score = torch.exp((view1 * view2).sum(dim=-1) / temperature)
    ttl_score = torch.exp(view1 @ view2.T / temperature).sum(dim=1)
    return torch.mean(-torch.log(pos_score / ttl_score))


def bpr_loss(users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
    """`mean -log σ(<u, i+> - <u, i->)` over the batch rows."""
    pos_scores = (users * pos_items).sum(dim=1)
    neg_scores = (users * neg_items).sum(dim=1)
    return -torch.mean(F.logsigmoid(pos_scores - neg_scores))


def l2_penalty(users, pos_items, neg_items, reg_weight: float, batch_size: int) -> torch.Tensor:
    """The embedding penalty `reg_weight * ½(|u|² + |i+|² + |i-|²) / batch_size`."""
    penalty = 0.5 * (users.pow(2).sum() + pos_items.pow(2).sum() + neg_items.pow(2).sum())
    return reg_weight * penalty / batch_size


def bpr_terms(users, pos_items, neg_items, reg_weight: float, batch_size: int):
    """BPR loss and the embedding penalty, both of the same (final) embeddings."""
    return bpr_loss(users, pos_items, neg_items), l2_penalty(users, pos_items, neg_items, reg_weight, batch_size)


class MambaRec(nn.Module):
    """MambaRec over `n_users` x `n_items` with `features` {"image": [I, Dv], "text": [I, Dt]}.

    Either feature may be missing (or None): the model then runs with the other modality only,
    or with none (the user-item view alone). Hyper-parameter defaults are SPEC's.

    Ablation switches: `dream=False` replaces each DREAM block by the identity (its input passes
    straight to the LayerNorm; no `dream_*` parameters or buffers exist); `mmd_weight=0` skips the
    MMD term (no second DREAM call); `cl_loss=0` zeroes the contrastive term;
    `reduction_factor=1` drops `image_reduce` (`image_trs` maps Dv -> d directly).
    """

    #: The DREAM block class (a subclass may swap in a drop-in with the same parameters).
    dream_cls = DREAM

    def __init__(
        self,
        n_users: int,
        n_items: int,
        features: Mapping[str, torch.Tensor | None],
        graphs: MambaRecGraphs,
        *,
        embedding_size: int = 64,
        reduction_factor: int = 8,
        n_ui_layers: int = 4,
        n_layers: int = 1,
        mmd_weight: float = 0.1,
        mmd_kernel_bandwidth: float = 1.0,
        cl_loss: float = 0.01,
        cl_temperature: float = 0.2,
        reg_weight: float = 1e-4,
        train_batch_size: int = 2048,
        dropout: float = 0.2,
        dream_rate: int = 1,
        bn_mom: float = 0.1,
        dream: bool = True,
    ):
        super().__init__()
        unknown = set(features) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
        if reduction_factor < 1:
            raise ValueError(f"reduction_factor must be >= 1, got {reduction_factor}")
        if not isinstance(dream, bool):
            raise TypeError(f"dream must be True or False, got {dream!r}")
        self.n_users, self.n_items = n_users, n_items
        self.n_ui_layers, self.n_layers = n_ui_layers, n_layers
        self.mmd_weight, self.mmd_kernel_bandwidth = mmd_weight, mmd_kernel_bandwidth
        self.cl_loss, self.cl_temperature = cl_loss, cl_temperature
        self.reg_weight, self.train_batch_size = reg_weight, train_batch_size
        self.dream = dream
        d = embedding_size

        def dream_block() -> nn.Module:
            return self.dream_cls(d, d, rate=dream_rate, bn_mom=bn_mom) if dream else nn.Identity()

        self.user_embedding = nn.Embedding(n_users, d)
        self.item_id_embedding = nn.Embedding(n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)

        self.modalities = tuple(m for m in MODALITIES if features.get(m) is not None)
        for m in self.modalities:
            feat = torch.as_tensor(features[m], dtype=torch.float32)
            if feat.dim() != 2 or feat.shape[0] != n_items:
                raise ValueError(f"{m} features must be [{n_items}, D], got shape {tuple(feat.shape)}")
        if "image" in self.modalities:
            v = torch.as_tensor(features["image"], dtype=torch.float32)
            self.image_embedding = nn.Embedding.from_pretrained(v.clone(), freeze=False)
            if reduction_factor > 1:
                self.image_reduce = nn.Linear(v.shape[1], v.shape[1] // reduction_factor)
                self.image_trs = nn.Linear(v.shape[1] // reduction_factor, d)
            else:
                self.image_reduce = None
                self.image_trs = nn.Linear(v.shape[1], d)
            self.dream_image = dream_block()
            self.gate_v = nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
            self.gate_image_prefer = nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
        if "text" in self.modalities:
            t = torch.as_tensor(features["text"], dtype=torch.float32)
            self.text_embedding = nn.Embedding.from_pretrained(t.clone(), freeze=False)
            self.text_trs = nn.Linear(t.shape[1], d)
            self.dream_text = dream_block()
            self.gate_t = nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
            self.gate_text_prefer = nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
        if self.modalities:
            self.norm = nn.LayerNorm(d)
            self.dropout = nn.Dropout(p=dropout)
            self.query_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))

        # Non-persistent buffers: they follow .to()/.double() but stay out of the state_dict.
        self.register_buffer("adj", graphs.adj, persistent=False)
        self.register_buffer("ui", graphs.ui, persistent=False)
        for m in self.modalities:
            self.register_buffer(f"item_{m}", graphs.items[m], persistent=False)

    # -- encoders ---------------------------------------------------------------------------
    def image_dream(self) -> torch.Tensor:
        """`DREAM_v(image_trs(image_reduce(V)))`, `[I, d]` (before LayerNorm and dropout)."""
        v = self.image_embedding.weight
        if self.image_reduce is not None:
            v = self.image_reduce(v)
        return self.dream_image(self.image_trs(v))

    def text_dream(self) -> torch.Tensor:
        """`DREAM_t(text_trs(T))`, `[I, d]` (before LayerNorm and dropout)."""
        return self.dream_text(self.text_trs(self.text_embedding.weight))

    def encode(self, modality: str) -> torch.Tensor:
        """The pre-norm DREAM output of one modality, `[I, d]`."""
        return self.image_dream() if modality == "image" else self.text_dream()

    def spmm(self, graph: str, x: torch.Tensor) -> torch.Tensor:
        """`G x` for the named fixed graph: "adj" (Â), "ui" (R̂) or "item_<modality>" (S_m)."""
        return spmm(getattr(self, graph), x)

    def propagate(self, graph: str, x: torch.Tensor, layers: int) -> torch.Tensor:
        """Mean of `x, Gx, ..., G^L x` over the named graph."""
        return propagate(getattr(self, graph), x, layers)

    def _modal_views(self) -> dict[str, torch.Tensor]:
        """Steps 1-2 and 4: `emb_m = [R̂ x_m; x_m]` for every modality the model has."""
        views = {}
        for m in self.modalities:
            h = self.dropout(self.norm(self.encode(m)))
            gate = self.gate_v if m == "image" else self.gate_t
            x = self.item_id_embedding.weight * gate(h)
            for _ in range(self.n_layers):
                x = self.spmm(f"item_{m}", x)
            views[m] = torch.cat([self.spmm("ui", x), x], dim=0)
        return views

    def forward(self) -> ForwardOutput:
        views = self._modal_views()
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight], dim=0)
        content = self.propagate("adj", ego, self.n_ui_layers)
        if len(views) == 2:
            emb_v, emb_t = views["image"], views["text"]
            att = torch.cat([self.query_common(emb_v), self.query_common(emb_t)], dim=-1)
            weight = torch.softmax(att, dim=-1)
            common = weight[:, 0:1] * emb_v + weight[:, 1:2] * emb_t
            sep_v = (emb_v - common) * self.gate_image_prefer(content)
            sep_t = (emb_t - common) * self.gate_text_prefer(content)
            side = (sep_v + sep_t + common) / 3
        elif len(views) == 1:
            side = next(iter(views.values()))
        else:
            side = content
        users, items = torch.split(content + side, [self.n_users, self.n_items], dim=0)
        return ForwardOutput(users, items, side, content)

    # -- loss --------------------------------------------------------------------------------
    def loss_terms(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> dict:
        """The weighted loss terms of SPEC §6 for a batch of triples; their sum is the loss."""
        out = self.forward()
        bpr, penalty = bpr_terms(
            out.users[users], out.items[pos_items], out.items[neg_items], self.reg_weight, self.train_batch_size
        )
        side_users, side_items = torch.split(out.side, [self.n_users, self.n_items], dim=0)
        content_users, content_items = torch.split(out.content, [self.n_users, self.n_items], dim=0)
        cl = info_nce(side_items[pos_items], content_items[pos_items], self.cl_temperature) + info_nce(
            side_users[users], content_users[users], self.cl_temperature
        )
        terms = {"bpr": bpr, "reg": penalty, "cl": self.cl_loss * cl}
        if len(self.modalities) == 2 and self.mmd_weight != 0:
            terms["mmd"] = self.mmd_weight * self.mmd_term(pos_items)
        return terms

    def mmd_term(self, pos_items: torch.Tensor) -> torch.Tensor:
        """Unweighted MMD² between the image and text DREAM outputs of the positive items.

        The authors call each DREAM a second time here (train mode: BatchNorm running statistics
        are updated again with the same batch statistics, and the outputs equal step 1's).
        """
        image = self.encode("image")[pos_items]
        text = self.encode("text")[pos_items]
        return mmd_loss(image, text, self.mmd_kernel_bandwidth)

    def calculate_loss(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
        return sum(self.loss_terms(users, pos_items, neg_items).values())

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`all` user `[U, d]` and item `[I, d]` embeddings for scoring (call in eval mode)."""
        out = self.forward()
        return out.users, out.items
