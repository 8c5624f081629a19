"""Gaussian-kernel MMD², SPEC §6, as the authors compute it: through B x B x d pairwise differences."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """`k(a, b) = exp(-||a - b||² / (2 sigma²))` for all pairs of rows: `[n, m]`."""
    diff = x.unsqueeze(1).expand(x.shape[0], y.shape[0], x.shape[1]) - y.unsqueeze(0).expand(
        x.shape[0], y.shape[0], y.shape[1]
    )
    return torch.exp(-diff.pow(2).sum(dim=2) / (2.0 * sigma**2))


def mmd_loss(x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """Biased MMD² between the row sets `x [n, d]` and `y [m, d]` after L2-normalising rows.

    `mean k(x_i, x_j) + mean k(y_i, y_j) - 2 mean k(x_i, y_j)`, diagonal terms included.
    """
    x = F.normalize(x, dim=1)
    y = F.normalize(y, dim=1)
    return (
        gaussian_kernel(x, x, sigma).mean()
        + gaussian_kernel(y, y, sigma).mean()
        - 2.0 * gaussian_kernel(x, y, sigma).mean()
    )
