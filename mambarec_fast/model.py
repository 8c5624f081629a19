"""The fast MambaRec: the reference model's math and parameters, on the fused ops.

Differences from `mambarec_fast.reference.MambaRec` are all in how, never in what:
- DREAM blocks are `mambarec_fast.ops.dream.DREAM` (fused matrix path, same state_dict);
- each modality's DREAM runs once per step: the MMD term reuses the forward's pre-norm output and
  applies the second BatchNorm running-statistic update that the authors' repeated call makes;
- the MMD is `mambarec_fast.ops.mmd.mmd` (blocked / Triton, no B x B x d tensors);
- `image_trs(image_reduce(V))` is computed as one reassociated rank-d map (`ops.linear_chain`);
- propagation runs over CSR `Graph`s through the compiled ops (`ops.propagation`).
"""
from __future__ import annotations

import torch

from .ops.dream import DREAM
from .ops.graph import Graph
from .ops.linear_chain import linear_chain
from .ops.mmd import mmd
from .ops.propagation import propagate, spmm
from .reference.model import MambaRec as ReferenceMambaRec


class CsrGraphs:
    """Mixin for a model whose fixed graphs are sparse buffers: keeps a CSR `Graph` of each (rebuilt
    after `.to()` / `.double()`) and runs its `spmm` / `propagate` hooks through the compiled ops."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._build_csr_graphs()

    def _build_csr_graphs(self) -> None:
        # Â ("adj") is symmetric, so its backward reuses it.
        self._graphs = {
            name: _symmetric_graph(buffer) if name == "adj" else Graph.from_torch(buffer)
            for name, buffer in self.named_buffers(recurse=False)
            if buffer.is_sparse
        }

    def _apply(self, fn, recurse=True):
        # .to() / .double() move the sparse buffers; the CSR graphs follow them.
        super()._apply(fn, recurse)
        self._build_csr_graphs()
        return self

    def spmm(self, graph: str, x: torch.Tensor) -> torch.Tensor:
        return spmm(self._graphs[graph], x)

    def propagate(self, graph: str, x: torch.Tensor, layers: int) -> torch.Tensor:
        return propagate(self._graphs[graph], x, layers)


class MambaRec(CsrGraphs, ReferenceMambaRec):
    """Drop-in for `mambarec_fast.reference.MambaRec`: same constructor, parameters, state_dict,
    outputs and gradients (to rounding), running statistics and RNG use."""

    dream_cls = DREAM

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._encoded: dict[str, torch.Tensor] = {}

    def image_dream(self) -> torch.Tensor:
        v = self.image_embedding.weight
        x = self.image_trs(v) if self.image_reduce is None else linear_chain(v, self.image_reduce, self.image_trs)
        return self.dream_image(x)

    def encode(self, modality: str) -> torch.Tensor:
        h = super().encode(modality)
        if self.training:
            self._encoded[modality] = h  # kept for this step's MMD term
        return h

    def loss_terms(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> dict:
        self._encoded.clear()
        try:
            return super().loss_terms(users, pos_items, neg_items)
        finally:
            self._encoded.clear()

    def mmd_term(self, pos_items: torch.Tensor) -> torch.Tensor:
        if "image" in self._encoded and "text" in self._encoded:
            image, text = self._encoded["image"], self._encoded["text"]
            if self.dream:  # the authors' second DREAM call, without its cost: one more update
                self.dream_image.repeat_running_stats_update()
                self.dream_text.repeat_running_stats_update()
        else:
            image, text = self.encode("image"), self.encode("text")
        return mmd(image[pos_items], text[pos_items], self.mmd_kernel_bandwidth)


def _symmetric_graph(matrix: torch.Tensor) -> Graph:
    try:
        return Graph.from_torch(matrix, symmetric=True)
    except ValueError:  # a graph handed in by a caller need not be symmetric
        return Graph.from_torch(matrix)
