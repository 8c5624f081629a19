"""LightGCN-style propagation over a `torch.sparse` matrix, as the authors compute it."""
from __future__ import annotations

import torch


def spmm(adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`adj @ x` through `torch.sparse.mm` (adj a sparse COO matrix `[n, m]`, x `[m, d]`)."""
    return torch.sparse.mm(adj, x)


def propagate(adj: torch.Tensor, x: torch.Tensor, layers: int) -> torch.Tensor:
    """Mean of the layers `x, Ax, ..., A^L x` (SPEC §5 step 3), each layer stored as the authors do."""
    if layers < 0:
        raise ValueError(f"layers must be >= 0, got {layers}")
    outputs = [x]
    for _ in range(layers):
        x = spmm(adj, x)
        outputs.append(x)
    return torch.stack(outputs, dim=1).mean(dim=1)
