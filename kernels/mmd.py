"""Triton kernels of the Gaussian-kernel MMD² (SPEC §6): launchers only (autograd and dispatch live
in `mambarec_fast.ops.mmd`, whose docstring states the math).

Both kernels work on raw rows and normalise in registers (`â = a / max(‖a‖, eps)` when
`NORMALIZE`), so neither `x̂` nor any `[n, m]` block ever reaches memory:

* `mmd_forward`: one program per `[BLOCK, BLOCK]` tile of a kernel matrix computes
  `‖â − b̂‖² = ‖â‖² + ‖b̂‖² − 2⟨â, b̂⟩` from a Gram tile, `Σ_s exp(−‖â − b̂‖²/(2σ_s²))` and the
  tile's sum, scaled by the pair's weight. The symmetric xx and yy matrices are covered by their
  lower tile triangle only (off-diagonal tiles count twice). Each program writes one partial;
  the partials are summed in a fixed order (no atomics): deterministic.
* `mmd_backward`: FlashAttention-style recomputation. One program per row block of `x` (or `y`)
  and column split walks the column blocks of both sets, recomputes `W = Σ_s k_s/σ_s²` tile by
  tile (never stored) and accumulates `acc = Σ_j c·W·b̂_j` (a dot product) and `r = Σ_j c·W`,
  then writes `(acc − r·â)` through the normalisation's Jacobian, times the upstream gradient.
  With more than one column split the `[split, rows, d]` partials are summed in a fixed order.

Precision on GPU: for fp32 inputs both `tl.dot`s (the Gram tiles and `W·b̂`) take
`input_precision="ieee"`: true fp32 products (FMA, no TF32). fp16/bf16 inputs use tensor cores
with fp32 accumulation; `W` (scaled into [0, 1]) and `b̂` are rounded to the input dtype before
`W·b̂`, as FlashAttention rounds `P`. Norms, exponentials and all sums are fp32; the final sum of
the forward's partials is fp64.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ._compat import INTERPRET, tl, triton

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _configs(gpu: list[dict], interpret: dict) -> list:
    """Autotune configs: the GPU list, or one small config under the interpreter (which would
    otherwise run every config of the list)."""
    if INTERPRET:
        return [triton.Config(interpret, num_warps=1, num_stages=1)]
    return [triton.Config(kw, num_warps=w, num_stages=s) for kw in gpu for w in (4, 8) for s in (2, 3)]


@triton.jit
def _load_rows(ptr, rows, n, d, stride_r, stride_d, BLOCK_D: tl.constexpr):
    """Rows `rows` of an `[n, d]` matrix as a `[len(rows), BLOCK_D]` tile (zeros outside)."""
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n) & (cols[None, :] < d)
    return tl.load(ptr + rows[:, None] * stride_r + cols[None, :] * stride_d, mask=mask, other=0.0)


@triton.jit
def _row_scale(a, eps, NORMALIZE: tl.constexpr):
    """`(1/max(‖a_i‖, eps), ‖a_i‖)` per row of a tile (`(1, ‖a_i‖)` without NORMALIZE)."""
    af = a.to(tl.float32)
    norm = tl.sqrt(tl.sum(af * af, 1))
    if NORMALIZE:
        inv = 1.0 / tl.maximum(norm, eps)
    else:
        inv = tl.zeros_like(norm) + 1.0
    return inv, norm


@triton.jit
def _sq_dist(a, b, inv_a, inv_b, norm_a, norm_b, PRECISION: tl.constexpr):
    """`‖â_i − b̂_j‖²` for a tile pair, from the Gram product of the raw rows (clamped at 0)."""
    gram = tl.dot(a, tl.trans(b), input_precision=PRECISION)
    len_a = norm_a * inv_a  # ‖â_i‖: 1, or below 1 for rows shorter than eps
    len_b = norm_b * inv_b
    d2 = len_a[:, None] * len_a[:, None] + len_b[None, :] * len_b[None, :] - 2.0 * gram * inv_a[:, None] * inv_b[None, :]
    return tl.maximum(d2, 0.0)


@triton.jit
def _gauss(d2, inv_s2_ptr, w_scale, NUM_SIGMA: tl.constexpr, GRAD_WEIGHTS: tl.constexpr):
    """`Σ_s exp(−d2/(2σ_s²))`; with GRAD_WEIGHTS each term times `(1/σ_s²)/w_scale`: `W/w_scale`
    (`∂k/∂a = W(b − a)`), which stays in [0, 1] for `w_scale = Σ_s 1/σ_s²` and so survives
    rounding to fp16."""
    k = tl.zeros_like(d2)
    for s in tl.static_range(NUM_SIGMA):
        inv = tl.load(inv_s2_ptr + s)
        term = tl.exp(d2 * (-0.5 * inv))
        if GRAD_WEIGHTS:
            term = term * (inv / w_scale)
        k += term
    return k


@triton.autotune(configs=_configs([{}], {}), key=["d"])
@triton.jit
def _mmd_tile_sum_kernel(
    a_ptr, b_ptr, inv_s2_ptr, out_ptr,
    na, nb, d, stride_am, stride_ad, stride_bm, stride_bd,
    scale, eps,
    NUM_SIGMA: tl.constexpr, NORMALIZE: tl.constexpr, SYMMETRIC: tl.constexpr, DROP_DIAG: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """`out[pid] = scale · Σ_tile k(â_i, b̂_j)` for tile `pid`; SYMMETRIC (b is a): lower-triangle
    tiles only, off-diagonal ones counted twice; DROP_DIAG leaves out `i = j`."""
    pid = tl.program_id(0)
    if SYMMETRIC:
        # pid = ti(ti+1)/2 + tj with tj ≤ ti; the float root may be one off either way.
        ti = ((tl.sqrt((8 * pid + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)
        ti = tl.where(ti * (ti + 1) // 2 > pid, ti - 1, ti)
        ti = tl.where((ti + 1) * (ti + 2) // 2 <= pid, ti + 1, ti)
        tj = pid - ti * (ti + 1) // 2
    else:
        tiles_b = tl.cdiv(nb, BLOCK)
        ti = pid // tiles_b
        tj = pid % tiles_b
    rows_a = ti * BLOCK + tl.arange(0, BLOCK)
    rows_b = tj * BLOCK + tl.arange(0, BLOCK)
    a = _load_rows(a_ptr, rows_a, na, d, stride_am, stride_ad, BLOCK_D)
    b = _load_rows(b_ptr, rows_b, nb, d, stride_bm, stride_bd, BLOCK_D)
    inv_a, norm_a = _row_scale(a, eps, NORMALIZE)
    inv_b, norm_b = _row_scale(b, eps, NORMALIZE)
    k = _gauss(_sq_dist(a, b, inv_a, inv_b, norm_a, norm_b, PRECISION), inv_s2_ptr, 1.0, NUM_SIGMA, False)
    valid = (rows_a[:, None] < na) & (rows_b[None, :] < nb)
    if DROP_DIAG:
        valid = valid & (rows_a[:, None] != rows_b[None, :])
    total = tl.sum(tl.sum(tl.where(valid, k, 0.0), 1), 0)
    if SYMMETRIC:
        total = tl.where(ti == tj, total, 2.0 * total)
    tl.store(out_ptr + pid, total * scale)


@triton.jit
def _accumulate(
    acc, r, a, rows_a, inv_a, norm_a, b_ptr, nb, d, stride_bm, stride_bd, eps, inv_s2_ptr, w_scale, first, step,
    NUM_SIGMA: tl.constexpr, NORMALIZE: tl.constexpr, SAME: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Adds `Σ_j W(â_i, b̂_j)·b̂_j / w_scale` to `acc` and `Σ_j W(â_i, b̂_j) / w_scale` to `r`, over
    the column blocks `first, first + step, …` of `b`. SAME (b is a): the `j = i` terms are left
    out: they add `W_ii(â_i − â_i) = 0`, but W_ii is the largest weight, and in fp16/bf16 the
    rounding of `b̂_i` against the fp32 `â_i` would otherwise be the largest error."""
    for jb in range(first, tl.cdiv(nb, BLOCK_N), step):
        rows_b = jb * BLOCK_N + tl.arange(0, BLOCK_N)
        b = _load_rows(b_ptr, rows_b, nb, d, stride_bm, stride_bd, BLOCK_D)
        inv_b, norm_b = _row_scale(b, eps, NORMALIZE)
        w = _gauss(_sq_dist(a, b, inv_a, inv_b, norm_a, norm_b, PRECISION), inv_s2_ptr, w_scale, NUM_SIGMA, True)
        keep = rows_b[None, :] < nb
        if SAME:
            keep = keep & (rows_b[None, :] != rows_a[:, None])
        w = tl.where(keep, w, 0.0)
        r += tl.sum(w, 1)
        b_hat = (b.to(tl.float32) * inv_b[:, None]).to(b.dtype)
        acc = tl.dot(w.to(b.dtype), b_hat, acc, input_precision=PRECISION)
    return acc, r


@triton.autotune(configs=_configs([{"BLOCK_N": 32}, {"BLOCK_N": 64}], {"BLOCK_N": 16}), key=["d"])
@triton.jit
def _mmd_row_grad_kernel(
    a_ptr, b_ptr, inv_s2_ptr, grad_ptr, out_ptr,
    na, nb, d, stride_am, stride_ad, stride_bm, stride_bd,
    c_aa, c_ab, eps,
    NUM_SIGMA: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """`out[split, i] = grad · J_i(acc_i − r_i·â_i)` for the rows `i` of this program, where
    `acc = Σ_j c_aa·W(â_i, â_j)·â_j + Σ_j c_ab·W(â_i, b̂_j)·b̂_j` and `r` the same without the
    trailing `â_j`, `b̂_j`, over this split's column blocks, and `J_i` is the normalisation's
    Jacobian: `(g − â⟨â, g⟩)/‖a‖` where `‖a‖ ≥ eps`, `g/eps` below (as F.normalize). c_ab ≠ 0."""
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    n_split = tl.num_programs(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    a = _load_rows(a_ptr, rows, na, d, stride_am, stride_ad, BLOCK_D)
    inv_a, norm_a = _row_scale(a, eps, NORMALIZE)
    w_scale = tl.load(inv_s2_ptr)  # Σ_s 1/σ_s²
    for s in tl.static_range(1, NUM_SIGMA):
        w_scale += tl.load(inv_s2_ptr + s)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    r = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc, r = _accumulate(acc, r, a, rows, inv_a, norm_a, a_ptr, na, d, stride_am, stride_ad, eps, inv_s2_ptr, w_scale,
                         split, n_split, NUM_SIGMA, NORMALIZE, True, PRECISION, BLOCK_N, BLOCK_D)  # fmt: skip
    # c_aa·S_aa + c_ab·S_ab = c_ab·((c_aa/c_ab)·S_aa + S_ab): one accumulator, W kept in [0, 1].
    acc = acc * (c_aa / c_ab)
    r = r * (c_aa / c_ab)
    acc, r = _accumulate(acc, r, a, rows, inv_a, norm_a, b_ptr, nb, d, stride_bm, stride_bd, eps, inv_s2_ptr, w_scale,
                         split, n_split, NUM_SIGMA, NORMALIZE, False, PRECISION, BLOCK_N, BLOCK_D)  # fmt: skip
    a_hat = a.to(tl.float32) * inv_a[:, None]
    g = (acc - r[:, None] * a_hat) * (c_ab * w_scale)
    if NORMALIZE:
        proj = tl.sum(a_hat * g, 1)
        g = tl.where((norm_a >= eps)[:, None], g - a_hat * proj[:, None], g) * inv_a[:, None]
    g = g * tl.load(grad_ptr).to(tl.float32)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < na) & (cols[None, :] < d)
    tl.store(out_ptr + split * na * d + rows[:, None] * d + cols[None, :], g, mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def _check(x: torch.Tensor, y: torch.Tensor, inv_sigma2: torch.Tensor) -> None:
    if x.dtype not in _DTYPES or y.dtype != x.dtype:
        raise TypeError(f"mmd kernels take float16, bfloat16 or float32 x and y of one dtype; got {x.dtype} and {y.dtype}")
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1] or min(x.numel(), y.numel()) == 0:
        raise ValueError(f"mmd kernels take non-empty x [n, d] and y [m, d]; got {tuple(x.shape)} and {tuple(y.shape)}")
    if inv_sigma2.dtype != torch.float32 or inv_sigma2.dim() != 1 or inv_sigma2.device != x.device:
        raise ValueError("mmd kernels take inv_sigma2 as a 1-D float32 tensor (1/σ²) on the inputs' device")


def _precision(dtype: torch.dtype) -> str:
    """`tl.dot`'s input precision: true fp32 for fp32 operands (no TF32); fp16/bf16 operands take
    Triton's default, which concerns fp32 operands only."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _default_block() -> int:
    return 16 if INTERPRET else 64


def mmd_forward(
    x: torch.Tensor, y: torch.Tensor, inv_sigma2: torch.Tensor, w_xx: float, w_yy: float, w_xy: float,
    *, normalize: bool, drop_diag: bool, eps: float = 1e-12, block: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """`w_xx Σ k(x̂, x̂) + w_yy Σ k(ŷ, ŷ) + w_xy Σ k(x̂, ŷ)` as a 0-dim fp64 tensor.

    x [n, d], y [m, d]: fp16/bf16/fp32, any strides; inv_sigma2 [S] fp32: `1/σ_s²`.
    `drop_diag` leaves the `i = j` terms out of the xx and yy sums. `block`: tile size (tests).
    """
    _check(x, y, inv_sigma2)
    block = block or _default_block()
    tiles_x, tiles_y = triton.cdiv(x.shape[0], block), triton.cdiv(y.shape[0], block)
    launches = (
        (x, x, w_xx, True, tiles_x * (tiles_x + 1) // 2),
        (y, y, w_yy, True, tiles_y * (tiles_y + 1) // 2),
        (x, y, w_xy, False, tiles_x * tiles_y),
    )
    partials = torch.empty(sum(n for *_, n in launches), dtype=torch.float32, device=x.device)
    start = 0
    for a, b, scale, symmetric, programs in launches:
        _mmd_tile_sum_kernel[(programs,)](
            a, b, inv_sigma2, partials[start:],
            a.shape[0], b.shape[0], a.shape[1], a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            scale, eps,
            NUM_SIGMA=inv_sigma2.numel(), NORMALIZE=normalize, SYMMETRIC=symmetric, DROP_DIAG=drop_diag and symmetric,
            PRECISION=_precision(x.dtype), BLOCK=block, BLOCK_D=_block_d(a.shape[1]),
        )  # fmt: skip
        start += programs
    return partials.sum(dtype=torch.float64)


@lru_cache(maxsize=8)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _default_split(rows: int, cols: int, block_m: int, device: torch.device) -> int:
    """Column splits so that the row-block programs fill the GPU about twice over."""
    if INTERPRET or device.type != "cuda":
        return 1
    row_programs = triton.cdiv(rows, block_m)
    return max(1, min(triton.cdiv(2 * _sm_count(device), row_programs), triton.cdiv(cols, 64)))


def mmd_backward(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, inv_sigma2: torch.Tensor,
    w_xx: float, w_yy: float, w_xy: float,
    *, normalize: bool, eps: float = 1e-12, block_m: int | None = None, split: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`(grad·∂loss/∂x, grad·∂loss/∂y)` in the inputs' dtype for the loss of `mmd_forward`.

    grad: a 0-dim tensor (any float dtype) on the inputs' device. The diagonal terms that
    `drop_diag` leaves out have zero gradient, so no flag is needed here. `block_m` (rows per
    program) and `split` (column splits per row block) default to the device's best guess.
    """
    _check(x, y, inv_sigma2)
    block_m = block_m or _default_block()
    grads = []
    for a, b, c_aa in ((x, y, 2.0 * w_xx), (y, x, 2.0 * w_yy)):
        n_split = split or _default_split(a.shape[0], a.shape[0] + b.shape[0], block_m, a.device)
        out = torch.empty((n_split, a.shape[0], a.shape[1]), dtype=torch.float32, device=a.device)
        _mmd_row_grad_kernel[(triton.cdiv(a.shape[0], block_m), n_split)](
            a, b, inv_sigma2, grad, out,
            a.shape[0], b.shape[0], a.shape[1], a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            c_aa, w_xy, eps,
            NUM_SIGMA=inv_sigma2.numel(), NORMALIZE=normalize, PRECISION=_precision(x.dtype),
            BLOCK_M=block_m, BLOCK_D=_block_d(a.shape[1]),
        )  # fmt: skip
        grads.append((out[0] if n_split == 1 else out.sum(0)).to(a.dtype))
    return grads[0], grads[1]
