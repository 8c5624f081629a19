"""Triton kernels for DREAM's matrix path (`[N, C]` input), launchers only.

The algebra (see `mambarec_fast/ops/dream.py`): `z1 = x W1^T + b1 [N, 5K]` (five branches of K =
dim_out columns), `u = ReLU(BN(z1))`, `c, s = ReLU(w_c.u), sigmoid(w_s.u)` per row,
`p = max(c, s) u^2`, `z2 = p W2^T + b2 [N, K]`, `y = ReLU(BN(z2))`. Packed parameters as in
`dream_matrix_forward`. All tensors float32 and contiguous (the launchers make them so).

Launches. Eval forward: one (`_fused_forward`, BatchNorms applied from the running statistics
inside the kernel). Train forward: `_branch_gemm_stats` (z1 and per-row-block (mean, M2)
partials), `_combine_stats`, `_fused_forward` (u, c, s, p, z2 and its partials),
`_combine_stats`, `_bn_relu`. The BatchNorm statistics are the only barriers; they are reduced
per row block by a two-pass (mean, then sum of squared deviations) in registers, and merged in a
fixed order with Chan's pairwise formula: stable and deterministic. Backward: `_bn_relu_bwd_sums`,
`_sum_partials`, `_fused_backward`, `_sum_partials`, `_bn_bwd_dx`, plus the two weight-gradient
GEMMs and bias sums in torch (cuBLAS).

GPU precision: every `tl.dot` runs with `input_precision="ieee"` (true fp32) unless the caller
passes `allow_tf32=True` (then TF32, about 1e-3 relative). Reductions accumulate in fp32.
"""
from __future__ import annotations

import torch

from ._compat import INTERPRET, tl, triton

# Rows per program: small under the interpreter so that tests cross several row blocks.
BLOCK_N = 16 if INTERPRET else 64
BLOCK_COLS = 64
# Row blocks merged per step by the reductions of per-block partials.
PARTIAL_ROWS = 4 if INTERPRET else 32


def _pad(n: int) -> int:
    """`tl.dot` needs power-of-two tiles of at least 16."""
    return max(16, triton.next_power_of_2(n))


@triton.jit
def _row_block(n, k, BN: tl.constexpr, KP: tl.constexpr):
    """This program's row block of an `[n, k]` matrix: `(i, rows, cols, rmask, cmask, mask)`
    (block index, row and column indices, their bounds masks, and the 2-D mask)."""
    i = tl.program_id(0)
    rows = i * BN + tl.arange(0, BN)
    cols = tl.arange(0, KP)
    rmask = rows < n
    cmask = cols < k
    return i, rows, cols, rmask, cmask, rmask[:, None] & cmask[None, :]


@triton.jit
def _branch_gemm_stats(x_ptr, w1_ptr, b1_ptr, z1_ptr, pmean_ptr, pm2_ptr, N, C, K,
                       BN: tl.constexpr, CP: tl.constexpr, KP: tl.constexpr, PREC: tl.constexpr):
    """Program (row block i, branch br): z1[i, br] = x W1_br^T + b1_br, and the block's per-column
    mean and M2 = sum((z - mean)^2) into pmean/pm2 [num_blocks, 5K]."""
    i, rows, cols, rmask, cmask, mask = _row_block(N, K, BN, KP)
    br = tl.program_id(1)
    cin = tl.arange(0, CP)
    x = tl.load(x_ptr + rows[:, None] * C + cin[None, :], mask=rmask[:, None] & (cin[None, :] < C), other=0.0)
    wt = tl.load(w1_ptr + (br * K + cols[None, :]) * C + cin[:, None], mask=(cin[:, None] < C) & cmask[None, :], other=0.0)
    z = tl.dot(x, wt, input_precision=PREC) + tl.load(b1_ptr + br * K + cols, mask=cmask, other=0.0)[None, :]
    tl.store(z1_ptr + rows[:, None] * (5 * K) + br * K + cols[None, :], z, mask=mask)
    count = tl.minimum(N - i * BN, BN).to(tl.float32)
    mean = tl.sum(tl.where(mask, z, 0.0), axis=0) / count
    dev = tl.where(mask, z - mean[None, :], 0.0)
    tl.store(pmean_ptr + i * (5 * K) + br * K + cols, mean, mask=cmask)
    tl.store(pm2_ptr + i * (5 * K) + br * K + cols, tl.sum(dev * dev, axis=0), mask=cmask)


@triton.jit
def _combine_stats(pmean_ptr, pm2_ptr, mean_ptr, var_ptr, N, M, num_blocks,
                   BN: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Merge per-block (mean, M2) of M columns into mean and biased var, deterministically: ROWS
    blocks at a time with the exact grouped formula (mean = sum n_b mean_b / n,
    M2 = sum M2_b + sum n_b (mean_b - mean)^2), the groups in order with Chan's pairwise rule."""
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < M
    mean = tl.zeros([BLOCK], dtype=tl.float32)
    m2 = tl.zeros([BLOCK], dtype=tl.float32)
    count = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, num_blocks, ROWS):
        blk = start + tl.arange(0, ROWS)
        nb = tl.maximum(tl.minimum(N - blk * BN, BN), 0).to(tl.float32)  # 0 past the last block
        mask = (blk < num_blocks)[:, None] & cmask[None, :]
        mean_b = tl.load(pmean_ptr + blk[:, None] * M + cols[None, :], mask=mask, other=0.0)
        m2_b = tl.load(pm2_ptr + blk[:, None] * M + cols[None, :], mask=mask, other=0.0)
        n_g = tl.sum(nb, axis=0)
        mean_g = tl.sum(nb[:, None] * mean_b, axis=0) / n_g
        dev = mean_b - mean_g[None, :]
        m2_g = tl.sum(m2_b + nb[:, None] * dev * dev, axis=0)
        total = count + n_g
        delta = mean_g - mean
        mean = mean + delta * (n_g / total)
        m2 = m2 + m2_g + delta * delta * (count * n_g / total)
        count = total
    tl.store(mean_ptr + cols, mean, mask=cmask)
    tl.store(var_ptr + cols, m2 / count, mask=cmask)


@triton.jit
def _bn_affine(mean_ptr, var_ptr, g_ptr, be_ptr, offs, mask, eps):
    """BatchNorm as `z * scale + shift` for the columns `offs` (0 where masked)."""
    scale = tl.load(g_ptr + offs, mask=mask, other=0.0) / tl.sqrt(tl.load(var_ptr + offs, mask=mask, other=1.0) + eps)
    shift = tl.load(be_ptr + offs, mask=mask, other=0.0) - tl.load(mean_ptr + offs, mask=mask, other=0.0) * scale
    return scale, shift


@triton.jit
def _branch_z_u(x, w1_ptr, b1_ptr, mean1_ptr, var1_ptr, g1_ptr, be1_ptr, offs, cin, cmask, C, eps,
                PREC: tl.constexpr):
    """For the branch columns `offs` of a row block: z = x W1^T + b1 and u = ReLU(BN1(z))."""
    wt = tl.load(w1_ptr + offs[None, :] * C + cin[:, None], mask=(cin[:, None] < C) & cmask[None, :], other=0.0)
    z = tl.dot(x, wt, input_precision=PREC) + tl.load(b1_ptr + offs, mask=cmask, other=0.0)[None, :]
    scale, shift = _bn_affine(mean1_ptr, var1_ptr, g1_ptr, be1_ptr, offs, cmask, eps)
    return z, tl.maximum(z * scale[None, :] + shift[None, :], 0.0)


@triton.jit
def _fused_forward(x_ptr, w1_ptr, b1_ptr, mean1_ptr, var1_ptr, g1_ptr, be1_ptr, wcs_ptr,
                   w2_ptr, b2_ptr, mean2_ptr, var2_ptr, g2_ptr, be2_ptr,
                   z1_ptr, u_ptr, p_ptr, cs_ptr, z2_ptr, y_ptr, pmean_ptr, pm2_ptr, N, C, K, eps,
                   BN: tl.constexpr, CP: tl.constexpr, KP: tl.constexpr, PREC: tl.constexpr,
                   SAVE: tl.constexpr, STORE_Z1: tl.constexpr, STORE_Z2: tl.constexpr, FINAL: tl.constexpr):
    """One row block: z1 = x W1^T + b1 (recomputed per branch from x), u = ReLU(BN1), c, s, m,
    p = m u^2, z2 = p W2^T + b2. FINAL (eval): y = ReLU(BN2(z2)) with the running statistics
    (mean2/var2 pointers); else the block's (mean, M2) partials of z2. SAVE stores u, p, cs for
    the backward, STORE_Z1 / STORE_Z2 store z1 / z2."""
    i, rows, cols, rmask, cmask, mask = _row_block(N, K, BN, KP)
    cin = tl.arange(0, CP)
    x = tl.load(x_ptr + rows[:, None] * C + cin[None, :], mask=rmask[:, None] & (cin[None, :] < C), other=0.0)
    att_c = tl.zeros([BN], dtype=tl.float32)
    att_s = tl.zeros([BN], dtype=tl.float32)
    # Pass 1 over the branches: the attention row dots need all 5K columns of u.
    for br in range(5):
        offs = br * K + cols
        z, u = _branch_z_u(x, w1_ptr, b1_ptr, mean1_ptr, var1_ptr, g1_ptr, be1_ptr, offs, cin, cmask, C, eps, PREC)
        att_c += tl.sum(u * tl.load(wcs_ptr + offs, mask=cmask, other=0.0)[None, :], axis=1)
        att_s += tl.sum(u * tl.load(wcs_ptr + 5 * K + offs, mask=cmask, other=0.0)[None, :], axis=1)
        if SAVE:
            tl.store(u_ptr + rows[:, None] * (5 * K) + offs[None, :], u, mask=mask)
        if STORE_Z1:
            tl.store(z1_ptr + rows[:, None] * (5 * K) + offs[None, :], z, mask=mask)
    c = tl.maximum(att_c, 0.0)
    s = 1.0 / (1.0 + tl.exp(-att_s))
    m = tl.maximum(c, s)
    if SAVE:
        tl.store(cs_ptr + rows * 2, c, mask=rmask)
        tl.store(cs_ptr + rows * 2 + 1, s, mask=rmask)
    # Pass 2: recompute u (cheaper than a round trip through memory), p, and accumulate z2.
    acc = tl.zeros([BN, KP], dtype=tl.float32)
    for br in range(5):
        offs = br * K + cols
        _, u = _branch_z_u(x, w1_ptr, b1_ptr, mean1_ptr, var1_ptr, g1_ptr, be1_ptr, offs, cin, cmask, C, eps, PREC)
        p = (u * m[:, None]) * u
        if SAVE:
            tl.store(p_ptr + rows[:, None] * (5 * K) + offs[None, :], p, mask=mask)
        # W2_br^T tile: [j (input col of the branch), o (output col)]
        w2t = tl.load(w2_ptr + cols[None, :] * (5 * K) + offs[:, None], mask=cmask[:, None] & cmask[None, :], other=0.0)
        acc += tl.dot(p, w2t, input_precision=PREC)
    z2 = acc + tl.load(b2_ptr + cols, mask=cmask, other=0.0)[None, :]
    if STORE_Z2:
        tl.store(z2_ptr + rows[:, None] * K + cols[None, :], z2, mask=mask)
    if FINAL:
        scale2, shift2 = _bn_affine(mean2_ptr, var2_ptr, g2_ptr, be2_ptr, cols, cmask, eps)
        tl.store(y_ptr + rows[:, None] * K + cols[None, :], tl.maximum(z2 * scale2[None, :] + shift2[None, :], 0.0), mask=mask)
    else:
        count = tl.minimum(N - i * BN, BN).to(tl.float32)
        mean = tl.sum(tl.where(mask, z2, 0.0), axis=0) / count
        dev = tl.where(mask, z2 - mean[None, :], 0.0)
        tl.store(pmean_ptr + i * K + cols, mean, mask=cmask)
        tl.store(pm2_ptr + i * K + cols, tl.sum(dev * dev, axis=0), mask=cmask)


@triton.jit
def _bn_relu(z_ptr, mean_ptr, var_ptr, g_ptr, be_ptr, y_ptr, N, K, eps, BN: tl.constexpr, KP: tl.constexpr):
    """y = ReLU(BN(z)) for a row block of z [N, K]."""
    _, rows, cols, _, cmask, mask = _row_block(N, K, BN, KP)
    scale, shift = _bn_affine(mean_ptr, var_ptr, g_ptr, be_ptr, cols, cmask, eps)
    z = tl.load(z_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0)
    tl.store(y_ptr + rows[:, None] * K + cols[None, :], tl.maximum(z * scale[None, :] + shift[None, :], 0.0), mask=mask)


@triton.jit
def _bn_relu_bwd_sums(gy_ptr, y_ptr, z_ptr, mean_ptr, partial_ptr, N, K, BN: tl.constexpr, KP: tl.constexpr):
    """Per row block, with dv = gy [y > 0]: partial[i] = (sum dv, sum dv (z - mean)) per column."""
    i, rows, cols, _, cmask, mask = _row_block(N, K, BN, KP)
    offs = rows[:, None] * K + cols[None, :]
    y = tl.load(y_ptr + offs, mask=mask, other=0.0)
    dv = tl.where(y > 0, tl.load(gy_ptr + offs, mask=mask, other=0.0), 0.0)
    zc = tl.load(z_ptr + offs, mask=mask, other=0.0) - tl.load(mean_ptr + cols, mask=cmask, other=0.0)[None, :]
    tl.store(partial_ptr + i * 2 * K + cols, tl.sum(dv, axis=0), mask=cmask)
    tl.store(partial_ptr + i * 2 * K + K + cols, tl.sum(tl.where(mask, dv * zc, 0.0), axis=0), mask=cmask)


@triton.jit
def _sum_partials(partial_ptr, out_ptr, M, num_blocks, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """out[j] = sum_b partial[b, j], ROWS blocks at a time, in a fixed order (deterministic)."""
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < M
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, num_blocks, ROWS):
        blk = start + tl.arange(0, ROWS)
        mask = (blk < num_blocks)[:, None] & cmask[None, :]
        acc += tl.sum(tl.load(partial_ptr + blk[:, None] * M + cols[None, :], mask=mask, other=0.0), axis=0)
    tl.store(out_ptr + cols, acc, mask=cmask)


@triton.jit
def _bn_grad_coefs(sums_ptr, mean_ptr, var_ptr, g_ptr, offs, mask, M, N, eps, TRAIN: tl.constexpr):
    """For dz = a dv + b (z - mean) + c (the BatchNorm backward as an affine map, see
    `batchnorm_relu_backward` in reference/batchnorm.py): returns a, b, c from sums = (sum dv, sum dv (z-mean))."""
    rstd = 1.0 / tl.sqrt(tl.load(var_ptr + offs, mask=mask, other=1.0) + eps)
    a = tl.load(g_ptr + offs, mask=mask, other=0.0) * rstd
    if TRAIN:
        dbeta = tl.load(sums_ptr + offs, mask=mask, other=0.0)
        dgamma = tl.load(sums_ptr + M + offs, mask=mask, other=0.0) * rstd
        b = -a * rstd * dgamma / N
        c = -a * dbeta / N
    else:
        b = a * 0.0
        c = a * 0.0
    return a, b, c


@triton.jit
def _bn_relu_bwd_rows(gy_ptr, y_ptr, z_ptr, mean_ptr, var_ptr, g_ptr, sums_ptr, dz_ptr, rows, cols, mask, cmask,
                      K, N, eps, TRAIN: tl.constexpr):
    """dz = the BatchNorm + ReLU backward of gy for a row block of `[N, K]` matrices (stored at
    dz_ptr and returned; 0 where masked), from sums = (sum dv, sum dv (z - mean))."""
    offs = rows[:, None] * K + cols[None, :]
    dv = tl.where(tl.load(y_ptr + offs, mask=mask, other=0.0) > 0, tl.load(gy_ptr + offs, mask=mask, other=0.0), 0.0)
    zc = tl.load(z_ptr + offs, mask=mask, other=0.0) - tl.load(mean_ptr + cols, mask=cmask, other=0.0)[None, :]
    a, b, c = _bn_grad_coefs(sums_ptr, mean_ptr, var_ptr, g_ptr, cols, cmask, K, N, eps, TRAIN)
    dz = tl.where(mask, dv * a[None, :] + zc * b[None, :] + c[None, :], 0.0)
    tl.store(dz_ptr + offs, dz, mask=mask)
    return dz


@triton.jit
def _fused_backward(gy_ptr, y_ptr, z2_ptr, mean2_ptr, var2_ptr, g2_ptr, sums2_ptr, w2_ptr, wcs_ptr,
                    u_ptr, z1_ptr, mean1_ptr, cs_ptr, dz2_ptr, dv1_ptr, partial_ptr, N, K, eps,
                    BN: tl.constexpr, KP: tl.constexpr, PREC: tl.constexpr, TRAIN: tl.constexpr):
    """One row block: dz2 (BN2 + ReLU backward), dp = dz2 W2, q = dp u, dm = sum q u,
    (dc, ds) through max (ties half/half), ReLU and sigmoid, du = 2 m q + dc w_c + ds w_s,
    dv1 = du [u > 0]. Stores dz2, dv1 and the partials (sum dv1, sum dv1 (z1 - mean1),
    sum dc u, sum ds u) per column of 5K into partial[i, 4, 5K]."""
    i, rows, cols, rmask, cmask, mask = _row_block(N, K, BN, KP)
    dz2 = _bn_relu_bwd_rows(gy_ptr, y_ptr, z2_ptr, mean2_ptr, var2_ptr, g2_ptr, sums2_ptr, dz2_ptr, rows, cols,
                            mask, cmask, K, N, eps, TRAIN)
    c = tl.load(cs_ptr + rows * 2, mask=rmask, other=0.0)
    s = tl.load(cs_ptr + rows * 2 + 1, mask=rmask, other=0.0)
    m = tl.maximum(c, s)
    dm = tl.zeros([BN], dtype=tl.float32)
    for br in range(5):
        offs = br * K + cols
        w2b = tl.load(w2_ptr + cols[:, None] * (5 * K) + offs[None, :], mask=cmask[:, None] & cmask[None, :], other=0.0)
        u = tl.load(u_ptr + rows[:, None] * (5 * K) + offs[None, :], mask=mask, other=0.0)
        q = tl.dot(dz2, w2b, input_precision=PREC) * u
        dm += tl.sum(q * u, axis=1)
    to_c = tl.where(c > s, 1.0, tl.where(c == s, 0.5, 0.0))
    dc = tl.where(c > 0, dm * to_c, 0.0)
    ds = dm * (1.0 - to_c) * s * (1.0 - s)
    for br in range(5):
        offs = br * K + cols
        w2b = tl.load(w2_ptr + cols[:, None] * (5 * K) + offs[None, :], mask=cmask[:, None] & cmask[None, :], other=0.0)
        u = tl.load(u_ptr + rows[:, None] * (5 * K) + offs[None, :], mask=mask, other=0.0)
        q = tl.dot(dz2, w2b, input_precision=PREC) * u
        wc = tl.load(wcs_ptr + offs, mask=cmask, other=0.0)
        ws = tl.load(wcs_ptr + 5 * K + offs, mask=cmask, other=0.0)
        du = 2.0 * m[:, None] * q + dc[:, None] * wc[None, :] + ds[:, None] * ws[None, :]
        dv1 = tl.where(u > 0, du, 0.0)
        tl.store(dv1_ptr + rows[:, None] * (5 * K) + offs[None, :], dv1, mask=mask)
        zc1 = tl.load(z1_ptr + rows[:, None] * (5 * K) + offs[None, :], mask=mask, other=0.0) - tl.load(mean1_ptr + offs, mask=cmask, other=0.0)[None, :]
        base = partial_ptr + i * 20 * K + offs
        tl.store(base, tl.sum(dv1, axis=0), mask=cmask)
        tl.store(base + 5 * K, tl.sum(tl.where(mask, dv1 * zc1, 0.0), axis=0), mask=cmask)
        tl.store(base + 10 * K, tl.sum(dc[:, None] * u, axis=0), mask=cmask)
        tl.store(base + 15 * K, tl.sum(ds[:, None] * u, axis=0), mask=cmask)


@triton.jit
def _bn_bwd_dx(dv1_ptr, z1_ptr, mean1_ptr, var1_ptr, g1_ptr, sums1_ptr, w1_ptr, dz1_ptr, dx_ptr, N, C, K, eps,
               BN: tl.constexpr, CP: tl.constexpr, KP: tl.constexpr, PREC: tl.constexpr, TRAIN: tl.constexpr):
    """One row block: dz1 = BN1 backward of dv1 (stored, for dW1) and dx = dz1 W1."""
    _, rows, cols, rmask, cmask, mask = _row_block(N, K, BN, KP)
    cin = tl.arange(0, CP)
    dx = tl.zeros([BN, CP], dtype=tl.float32)
    for br in range(5):
        offs = br * K + cols
        ptrs = rows[:, None] * (5 * K) + offs[None, :]
        dv1 = tl.load(dv1_ptr + ptrs, mask=mask, other=0.0)
        zc1 = tl.load(z1_ptr + ptrs, mask=mask, other=0.0) - tl.load(mean1_ptr + offs, mask=cmask, other=0.0)[None, :]
        a1, b1, c1 = _bn_grad_coefs(sums1_ptr, mean1_ptr, var1_ptr, g1_ptr, offs, cmask, 5 * K, N, eps, TRAIN)
        dz1 = tl.where(mask, dv1 * a1[None, :] + zc1 * b1[None, :] + c1[None, :], 0.0)
        tl.store(dz1_ptr + ptrs, dz1, mask=mask)
        w1b = tl.load(w1_ptr + offs[:, None] * C + cin[None, :], mask=cmask[:, None] & (cin[None, :] < C), other=0.0)
        dx += tl.dot(dz1, w1b, input_precision=PREC)
    tl.store(dx_ptr + rows[:, None] * C + cin[None, :], dx, mask=rmask[:, None] & (cin[None, :] < C))


def _precision(allow_tf32: bool) -> str:
    return "tf32" if allow_tf32 else "ieee"


def _combined_stats(pmean, pm2, n, width):
    mean = pmean.new_empty(width)
    var = pmean.new_empty(width)
    _combine_stats[(triton.cdiv(width, BLOCK_COLS),)](pmean, pm2, mean, var, n, width, pmean.shape[0], BN=BLOCK_N,
                                                       ROWS=PARTIAL_ROWS, BLOCK=BLOCK_COLS)
    return mean, var


def _summed(partial):
    out = partial.new_empty(partial.shape[1:])
    width = out.numel()
    _sum_partials[(triton.cdiv(width, BLOCK_COLS),)](partial, out, width, partial.shape[0], ROWS=PARTIAL_ROWS, BLOCK=BLOCK_COLS)
    return out


def matrix_forward(x, w1, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2, training, eps, need_backward, allow_tf32):
    """Same contract as `mambarec_fast.ops.dream.dream_matrix_forward` (float32 tensors)."""
    x, w1, wcs, w2 = (t.contiguous() for t in (x, w1, wcs, w2))
    n, c = x.shape
    k = w2.shape[0]
    cp, kp, prec = _pad(c), _pad(k), _precision(allow_tf32)
    blocks = triton.cdiv(n, BLOCK_N)
    new = x.new_empty
    y = new(n, k)
    if need_backward:
        z1, u, p, cs, z2 = new(n, 5 * k), new(n, 5 * k), new(n, 5 * k), new(n, 2), new(n, k)
    else:
        z1, u, p, cs, z2 = (new(0) for _ in range(5))
    if not training:
        _fused_forward[(blocks,)](
            x, w1, b1, rm1, rv1, g1, be1, wcs, w2, b2, rm2, rv2, g2, be2, z1, u, p, cs, z2, y, y, y,
            n, c, k, eps, BN=BLOCK_N, CP=cp, KP=kp, PREC=prec, SAVE=need_backward, STORE_Z1=need_backward,
            STORE_Z2=need_backward, FINAL=True,
        )
        stats = (rm1.clone(), rv1.clone(), rm2.clone(), rv2.clone()) if need_backward else (new(0) for _ in range(4))
        return (y, z1, u, p, cs, z2, *stats)
    z1_buf = z1 if need_backward else new(n, 5 * k)
    pmean, pm2 = new(blocks, 5 * k), new(blocks, 5 * k)
    _branch_gemm_stats[(blocks, 5)](x, w1, b1, z1_buf, pmean, pm2, n, c, k, BN=BLOCK_N, CP=cp, KP=kp, PREC=prec)
    mean1, var1 = _combined_stats(pmean, pm2, n, 5 * k)
    z2_buf = z2 if need_backward else new(n, k)
    pmean2, pm22 = new(blocks, k), new(blocks, k)
    _fused_forward[(blocks,)](
        x, w1, b1, mean1, var1, g1, be1, wcs, w2, b2, rm2, rv2, g2, be2, z1_buf, u, p, cs, z2_buf, y, pmean2, pm22,
        n, c, k, eps, BN=BLOCK_N, CP=cp, KP=kp, PREC=prec, SAVE=need_backward, STORE_Z1=False, STORE_Z2=True,
        FINAL=False,
    )
    mean2, var2 = _combined_stats(pmean2, pm22, n, k)
    _bn_relu[(blocks,)](z2_buf, mean2, var2, g2, be2, y, n, k, eps, BN=BLOCK_N, KP=kp)
    return y, z1, u, p, cs, z2, mean1, var1, mean2, var2


def matrix_backward(gy, x, w1, g1, wcs, w2, g2, y, z1, u, p, cs, z2, mean1, var1, mean2, var2, training, eps, allow_tf32):
    """Same contract as `mambarec_fast.ops.dream.dream_matrix_backward` (float32 tensors)."""
    gy, x, w1, wcs, w2 = (t.contiguous() for t in (gy, x, w1, wcs, w2))
    n, c = x.shape
    k = w2.shape[0]
    cp, kp, prec = _pad(c), _pad(k), _precision(allow_tf32)
    blocks = triton.cdiv(n, BLOCK_N)
    new = x.new_empty
    partial2 = new(blocks, 2, k)
    _bn_relu_bwd_sums[(blocks,)](gy, y, z2, mean2, partial2, n, k, BN=BLOCK_N, KP=kp)
    sums2 = _summed(partial2)  # [2, K]: sum dv2, sum dv2 (z2 - mean2)
    dz2, dv1, partial1 = new(n, k), new(n, 5 * k), new(blocks, 4, 5 * k)
    _fused_backward[(blocks,)](
        gy, y, z2, mean2, var2, g2, sums2, w2, wcs, u, z1, mean1, cs, dz2, dv1, partial1, n, k, eps,
        BN=BLOCK_N, KP=kp, PREC=prec, TRAIN=training,
    )
    sums1 = _summed(partial1)  # [4, 5K]: sum dv1, sum dv1 (z1 - mean1), dw_c, dw_s
    dz1, dx = new(n, 5 * k), new(n, c)
    _bn_bwd_dx[(blocks,)](
        dv1, z1, mean1, var1, g1, sums1, w1, dz1, dx, n, c, k, eps, BN=BLOCK_N, CP=cp, KP=kp, PREC=prec, TRAIN=training,
    )
    dg1 = sums1[1] * torch.rsqrt(var1 + eps)
    dg2 = sums2[1] * torch.rsqrt(var2 + eps)
    return dx, dz1.t() @ x, dz1.sum(0), dg1, sums1[0].clone(), sums1[2:].clone(), dz2.t() @ p, dz2.sum(0), dg2, sums2[0].clone()
