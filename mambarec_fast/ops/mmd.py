"""Gaussian-kernel MMD² (SPEC §6) as one custom op: Triton on CUDA, a blocked path elsewhere.

Public: `mmd(x, y, sigma=1.0, *, normalize=True, unbiased=False)` and `MMDLoss`.

With `â` the rows of `x [n, d]` (L2-normalised as `F.normalize` does when `normalize`), `b̂` those
of `y [m, d]`, and `k(a, b) = Σ_s exp(-‖a − b‖² / (2σ_s²))` (one term per bandwidth):

    loss = w_xx Σ_ij k(x̂_i, x̂_j) + w_yy Σ_ij k(ŷ_i, ŷ_j) + w_xy Σ_ij k(x̂_i, ŷ_j)

with `w_xx = 1/n²`, `w_yy = 1/m²`, `w_xy = −2/(nm)` (biased, SPEC §6), or `w_xx = 1/(n(n−1))`,
`w_yy = 1/(m(m−1))` and the `i = j` terms dropped from the xx and yy sums (`unbiased`). Since
`‖a − b‖² = ‖a‖² + ‖b‖² − 2⟨a, b⟩`, every sum is a Gram product followed by an exponential and
a sum: no `[n, m, d]` (nor `[n, m]`) tensor is ever held.

Backward (both paths), with `W(a, b) = Σ_s k_s(a, b) / σ_s²` so that `∂k(a, b)/∂a = W(a, b)(b − a)`:

    ∂loss/∂x̂_p = 2 w_xx Σ_j W(x̂_p, x̂_j)(x̂_j − x̂_p) + w_xy Σ_j W(x̂_p, ŷ_j)(ŷ_j − x̂_p)
               = acc_p − r_p x̂_p,   acc = Σ_j c W b̂_j,  r = Σ_j c W   (and symmetrically for ŷ),

recomputing `W` block by block, then the Jacobian of the normalisation:
`(g − x̂⟨x̂, g⟩) / ‖x‖` where `‖x‖ ≥ eps`, `g / eps` below it (a zero row keeps the gradient
`F.normalize` gives it). The diagonal terms dropped by `unbiased` have zero gradient
(`x̂_p − x̂_p = 0`), so the backward is the same for both estimators up to `w`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor, nn

#: `F.normalize`'s default: rows are divided by `max(‖x‖, EPS)`.
EPS = 1e-12
#: Largest feature size the Triton kernels take (they hold one `[rows, d]` tile in registers).
TRITON_MAX_D = 256
#: Side of the blocked path's square tiles: its extra memory is a few `[TILE, TILE]` blocks (1 MiB
#: each in fp32), whatever n and m; 512 keeps each matmul large enough to run near the CPU's peak.
TILE = 512
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def mmd(x: Tensor, y: Tensor, sigma: float | Sequence[float] = 1.0, *, normalize: bool = True, unbiased: bool = False) -> Tensor:
    """Gaussian-kernel MMD² between the row sets `x [n, d]` and `y [m, d]` (`n ≠ m` allowed).

    `sigma`: a bandwidth, or a sequence of them (the kernel is then the sum over bandwidths).
    `normalize`: L2-normalise rows first (as `F.normalize`), SPEC §6's default.
    `unbiased`: the U-statistic (diagonal terms of the xx and yy sums dropped; needs n, m ≥ 2).
    Inputs fp16, bf16, fp32 or fp64 (same dtype and device); accumulation in fp32 or better.
    Returns a 0-dim tensor of the input dtype; differentiable in `x` and `y`.
    Extra memory O((n + m)·d) on CUDA, O((n + m)·d + TILE²) elsewhere: never O(n·m).
    """
    sigmas = _check(x, y, sigma, unbiased)
    return torch.ops.mambarec_fast.mmd_fwd(x, y, sigmas, bool(normalize), bool(unbiased))


class MMDLoss(nn.Module):
    """`mmd(x, y, sigma, normalize=..., unbiased=...)` as a module (no parameters)."""

    def __init__(self, sigma: float | Sequence[float] = 1.0, normalize: bool = True, unbiased: bool = False):
        super().__init__()
        self.sigma = _check_sigma(sigma)
        self.normalize = bool(normalize)
        self.unbiased = bool(unbiased)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return mmd(x, y, self.sigma, normalize=self.normalize, unbiased=self.unbiased)

    def extra_repr(self) -> str:
        sigma = self.sigma[0] if len(self.sigma) == 1 else self.sigma
        return f"sigma={sigma}, normalize={self.normalize}, unbiased={self.unbiased}"


def _check_sigma(sigma) -> list[float]:
    values = list(sigma) if isinstance(sigma, Sequence) else [sigma]
    if not values or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in values):
        raise TypeError(f"mmd: sigma must be a positive float or a non-empty sequence of them; got {sigma!r}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"mmd: every sigma must be positive and finite; got {sigma!r}")
    return [float(s) for s in values]


def _check(x, y, sigma, unbiased: bool) -> list[float]:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"mmd: {name} must be a torch.Tensor; got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"mmd: {name} must be float16, bfloat16, float32 or float64; got {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"mmd: {name} must be 2-D [rows, features]; got shape {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"mmd: {name} must have at least one row and one feature; got shape {tuple(t.shape)}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd: x and y must have the same feature size; got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if x.dtype != y.dtype:
        raise TypeError(f"mmd: x and y must have the same dtype; got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"mmd: x and y must be on the same device; got {x.device} and {y.device}")
    if unbiased and min(x.shape[0], y.shape[0]) < 2:
        raise ValueError(f"mmd: unbiased=True needs at least 2 rows in x and y; got x {tuple(x.shape)} and y {tuple(y.shape)}")
    return _check_sigma(sigma)


def _pair_weights(n: int, m: int, unbiased: bool) -> tuple[float, float, float]:
    """`(w_xx, w_yy, w_xy)`: the factors of the three kernel sums in the loss."""
    if unbiased:
        return 1.0 / (n * (n - 1)), 1.0 / (m * (m - 1)), -2.0 / (n * m)
    return 1.0 / (n * n), 1.0 / (m * m), -2.0 / (n * m)


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------
def _use_triton(x: Tensor) -> bool:
    """Triton on CUDA for fp16/bf16/fp32 and d ≤ TRITON_MAX_D; the blocked path otherwise (fp64 included)."""
    if not x.is_cuda or x.dtype == torch.float64 or x.shape[1] > TRITON_MAX_D:
        return False
    from ..kernels._compat import HAS_TRITON

    return HAS_TRITON


@lru_cache(maxsize=64)
def _inv_sigma2(sigmas: tuple[float, ...], device: torch.device) -> Tensor:
    """`1/σ_s²` as an fp32 device tensor, cached: no host-to-device copy per call."""
    return torch.tensor([1.0 / (s * s) for s in sigmas], dtype=torch.float32, device=device)


@torch.library.custom_op("mambarec_fast::mmd_fwd", mutates_args=())
def _mmd_fwd(x: Tensor, y: Tensor, sigmas: list[float], normalize: bool, unbiased: bool) -> Tensor:
    """MMD² (see the module docstring); a 0-dim tensor of `x.dtype`."""
    weights = _pair_weights(x.shape[0], y.shape[0], unbiased)
    if _use_triton(x):
        from ..kernels.mmd import mmd_forward

        loss = mmd_forward(x, y, _inv_sigma2(tuple(sigmas), x.device), *weights, normalize=normalize, drop_diag=unbiased, eps=EPS)
        return loss.to(x.dtype)
    return _blocked_forward(x, y, sigmas, weights, normalize, unbiased).to(x.dtype)


@_mmd_fwd.register_fake
def _(x, y, sigmas, normalize, unbiased):
    return x.new_empty(())


@torch.library.custom_op("mambarec_fast::mmd_bwd", mutates_args=())
def _mmd_bwd(grad: Tensor, x: Tensor, y: Tensor, sigmas: list[float], normalize: bool, unbiased: bool) -> tuple[Tensor, Tensor]:
    """`(∂loss/∂x, ∂loss/∂y)` scaled by the 0-dim `grad`, recomputing the kernel blocks."""
    weights = _pair_weights(x.shape[0], y.shape[0], unbiased)
    if _use_triton(x):
        from ..kernels.mmd import mmd_backward

        return mmd_backward(grad, x, y, _inv_sigma2(tuple(sigmas), x.device), *weights, normalize=normalize, eps=EPS)
    return _blocked_backward(grad, x, y, sigmas, weights, normalize)


@_mmd_bwd.register_fake
def _(grad, x, y, sigmas, normalize, unbiased):
    return torch.empty_like(x), torch.empty_like(y)


def _setup_context(ctx, inputs, output):
    x, y, sigmas, normalize, unbiased = inputs
    ctx.save_for_backward(x, y)
    ctx.args = (sigmas, normalize, unbiased)


def _backward(ctx, grad):
    x, y = ctx.saved_tensors
    gx, gy = torch.ops.mambarec_fast.mmd_bwd(grad, x, y, *ctx.args)
    return gx, gy, None, None, None


torch.library.register_autograd("mambarec_fast::mmd_fwd", _backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Blocked path (CPU, and CUDA where Triton does not apply): tiles of a Gram product
# ----------------------------------------------------------------------------------------------
def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _normalized(x: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    """Rows in the compute dtype, normalised as `F.normalize` when asked, and the original norms."""
    x = x.to(_compute_dtype(x))
    norms = torch.linalg.vector_norm(x, dim=1)
    return (x / norms.clamp_min(EPS)[:, None] if normalize else x), norms


def _normalize_backward(g: Tensor, x_hat: Tensor, norms: Tensor) -> Tensor:
    """Gradient through `x / max(‖x‖, EPS)`: `(g − x̂⟨x̂, g⟩)/‖x‖` where `‖x‖ ≥ EPS`, `g/EPS` below
    (`clamp_min` stops the gradient through the norm there, as in `F.normalize`)."""
    proj = (x_hat * g).sum(1, keepdim=True)
    live = (norms >= EPS)[:, None]
    return torch.where(live, g - x_hat * proj, g) / norms.clamp_min(EPS)[:, None]


def _tiles(rows: int, cols: int, symmetric: bool):
    """`(i, i_end, j, j_end)` of the `[TILE, TILE]` tiles covering a `[rows, cols]` matrix; only those
    on or right of the diagonal when `symmetric` (the others mirror them)."""
    for i in range(0, rows, TILE):
        for j in range(i if symmetric else 0, cols, TILE):
            yield i, min(i + TILE, rows), j, min(j + TILE, cols)


class _GaussBlocks:
    """`Σ_s exp(−‖a_i − b_j‖²/(2σ_s²))` on `[rows, cols]` blocks, each from ONE matmul.

    Rows are augmented so that `left(a) @ right(b).T = −‖a − b‖²/(2σ_0²)`:
    `left = [a/σ_0², −‖a‖²/(2σ_0²), 1]`, `right = [b, 1, −‖b‖²/(2σ_0²)]`; no elementwise pass
    over the block is spent on the norms. Further bandwidths rescale that exponent.
    """

    def __init__(self, sigmas: list[float]):
        self.inv = [1.0 / (s * s) for s in sigmas]
        self.rel = [v / self.inv[0] for v in self.inv]

    def factors(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """`(left, right)`, both `[rows, d + 2]`."""
        half_sq = (-0.5 * self.inv[0]) * (a * a).sum(1, keepdim=True)
        ones = torch.ones_like(half_sq)
        return torch.cat([a * self.inv[0], half_sq, ones], 1), torch.cat([a, ones, half_sq], 1)

    def block(self, left: Tensor, right: Tensor, grad_weights: bool) -> tuple[Tensor, float]:
        """`(k, f)` with `f·k` the kernel block (times `1/σ_s²` per term when `grad_weights`):
        a single bandwidth leaves its factor to the caller, to scale a small result instead."""
        # ‖a − b‖² ≥ 0: clamp the rounding of the Gram form, so that no kernel value exceeds 1.
        e = (left @ right.T).clamp_max_(0.0)
        weights = self.inv if grad_weights else [1.0] * len(self.inv)
        if len(self.rel) == 1:
            return e.exp_(), weights[0]
        k = torch.zeros_like(e)
        for rel, w in zip(self.rel, weights):
            k.add_(torch.exp(e * rel), alpha=w)
        return k, 1.0


def _blocked_forward(x: Tensor, y: Tensor, sigmas: list[float], weights, normalize: bool, unbiased: bool) -> Tensor:
    """The loss as a 0-dim fp64 tensor: tile sums in the compute dtype, their total in fp64."""
    gauss = _GaussBlocks(sigmas)
    lx, rx = gauss.factors(_normalized(x, normalize)[0])
    ly, ry = gauss.factors(_normalized(y, normalize)[0])
    w_xx, w_yy, w_xy = weights
    cross = lx.new_zeros((), dtype=torch.float64)
    for i, i_end, j, j_end in _tiles(len(lx), len(ry), symmetric=False):
        k, f = gauss.block(lx[i:i_end], ry[j:j_end], False)
        cross += f * k.sum().double()
    return w_xx * _symmetric_sum(gauss, lx, rx, unbiased) + w_yy * _symmetric_sum(gauss, ly, ry, unbiased) + w_xy * cross


def _symmetric_sum(gauss: _GaussBlocks, left: Tensor, right: Tensor, drop_diag: bool) -> Tensor:
    """`Σ_ij k(a_i, a_j)` (i ≠ j when `drop_diag`) from the tiles on or right of the diagonal (fp64)."""
    total = left.new_zeros((), dtype=torch.float64)
    for i, i_end, j, j_end in _tiles(len(left), len(left), symmetric=True):
        k, f = gauss.block(left[i:i_end], right[j:j_end], False)
        if i != j:  # stands for its mirror image too
            total += 2.0 * f * k.sum().double()
        elif drop_diag:
            total += f * (k.sum().double() - k.diagonal().sum().double())
        else:
            total += f * k.sum().double()
    return total


def _blocked_backward(grad: Tensor, x: Tensor, y: Tensor, sigmas: list[float], weights, normalize: bool) -> tuple[Tensor, Tensor]:
    gauss = _GaussBlocks(sigmas)
    xh, x_norms = _normalized(x, normalize)
    yh, y_norms = _normalized(y, normalize)
    lx, rx = gauss.factors(xh)
    ly, ry = gauss.factors(yh)
    # acc[:, :d] = Σ_j c·W·b̂_j and acc[:, d] = Σ_j c·W per row (matmuls against [b̂, 1]);
    # the gradient wrt the normalised rows is then acc[:, :d] − acc[:, d]·â.
    ext_x, ext_y = _with_ones(xh), _with_ones(yh)
    acc_x, acc_y = torch.zeros_like(ext_x), torch.zeros_like(ext_y)
    w_xx, w_yy, w_xy = weights
    _symmetric_grad(gauss, lx, rx, ext_x, 2.0 * w_xx, acc_x)
    _symmetric_grad(gauss, ly, ry, ext_y, 2.0 * w_yy, acc_y)
    for i, i_end, j, j_end in _tiles(len(lx), len(ry), symmetric=False):
        k, f = gauss.block(lx[i:i_end], ry[j:j_end], True)
        acc_x[i:i_end].add_(k @ ext_y[j:j_end], alpha=f * w_xy)
        acc_y[j:j_end].add_(k.T @ ext_x[i:i_end], alpha=f * w_xy)
    g = grad.to(xh.dtype)
    gx = acc_x[:, :-1] - acc_x[:, -1:] * xh
    gy = acc_y[:, :-1] - acc_y[:, -1:] * yh
    if normalize:
        gx, gy = _normalize_backward(gx, xh, x_norms), _normalize_backward(gy, yh, y_norms)
    return (gx * g).to(x.dtype), (gy * g).to(y.dtype)


def _with_ones(a: Tensor) -> Tensor:
    return torch.cat([a, torch.ones_like(a[:, :1])], 1)


def _symmetric_grad(gauss: _GaussBlocks, left: Tensor, right: Tensor, ext: Tensor, coef: float, acc: Tensor) -> None:
    """Adds `coef·Σ_j W(a_p, a_j)·[a_j, 1]` to `acc[p]`, computing the symmetric `W` on the tiles on
    or right of the diagonal only: an off-diagonal tile also serves, transposed, its mirror."""
    for i, i_end, j, j_end in _tiles(len(left), len(left), symmetric=True):
        k, f = gauss.block(left[i:i_end], right[j:j_end], True)
        acc[i:i_end].add_(k @ ext[j:j_end], alpha=f * coef)
        if i != j:
            acc[j:j_end].add_(k.T @ ext[i:i_end], alpha=f * coef)
