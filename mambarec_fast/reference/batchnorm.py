"""BatchNorm over the rows of a matrix as an affine map, forward and analytic backward (plain torch).

Shared by the fast DREAM ops' torch paths and the torch glue of their Triton launchers: one
statement of `nn.BatchNorm` + ReLU algebra for `[N, K]` matrices (rows = samples or pixels).
"""
from __future__ import annotations

import torch
from torch import Tensor


def batchnorm_affine(z: Tensor, training: bool, running_mean: Tensor, running_var: Tensor, gamma: Tensor,
                     beta: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """BatchNorm over the rows of `z [N, K]` as one affine map `z * scale + shift` (as ATen's CPU
    BatchNorm does). Returns `scale, shift, mean, var`: the statistics used (batch, biased
    variance, in train mode; copies of the running ones in eval mode)."""
    if training:
        # Two-pass (mean, then squared deviations): stable, and several times faster on the CPU
        # than torch.var_mean's column-wise reduction over a row-major matrix.
        mean = z.mean(0)
        var = (z - mean).square_().mean(0)
    else:
        mean, var = running_mean.clone(), running_var.clone()
    scale = gamma * torch.rsqrt(var + eps)
    return scale, beta - mean * scale, mean, var


def batchnorm_relu_backward(gy: Tensor, y: Tensor, z: Tensor, gamma: Tensor, mean: Tensor, var: Tensor,
                            training: bool, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of `y = ReLU(gamma * zhat + beta)`, `zhat = (z - mean) * rstd`, `rstd = (var + eps)^-1/2`.

    With dv = dy * [y > 0]: dbeta = sum(dv), dgamma = rstd * sum(dv * (z - mean)).
    Train mode (batch statistics over n rows):
        dz = gamma * rstd * (dv - dbeta / n - zhat * dgamma / n),
    written as one affine map of (dv, z - mean); eval mode (running statistics are constants):
        dz = gamma * rstd * dv.
    Returns dz, dgamma, dbeta.
    """
    dv = torch.ops.aten.threshold_backward(gy, y, 0)
    rstd = torch.rsqrt(var + eps)
    zc = z - mean
    work = dv * zc
    dbeta = dv.sum(0)
    dgamma = rstd * work.sum(0)
    scale = gamma * rstd
    if not training:
        return dv.mul_(scale), dgamma, dbeta
    n = dv.shape[0]
    # reuse the work buffer: dz = scale * dv + zc * (-scale rstd dgamma / n) - scale dbeta / n
    torch.addcmul(-scale * dbeta / n, zc, -scale * rstd * dgamma / n, out=work)
    return work.addcmul_(dv, scale), dgamma, dbeta
