"""Triton kernels for DREAM's general path (`[B, C, H, W]` maps, `[B, S, C]` sequences), launchers only.

The algebra and the backward math are those of `mambarec_fast/ops/dream_map.py`; `map_forward` /
`map_backward` take and return exactly what `_map_forward_torch` / `_map_backward_torch` do
(float32 tensors; the launchers make the inputs they index contiguous). Rows layout: `x [P, C]`,
`P = B·H·W`, row `b·HW + h·W + w` (channels last); programs take flat blocks of `BLOCK_N` rows over
all P rows (so the BatchNorm partial-statistics helpers of `kernels/dream.py` apply unchanged) and
find a row's sample as `row // HW`.

Convolutions are implicit GEMMs: the four branch weights are packed into one tap array
`[28, K, C]` (tap 0: branch 1's 1x1; then 9 taps (kh, kw) per dilated branch, dilation 6r, 12r,
18r), and `_conv_taps` accumulates, for each tap, the `[BLOCK_N, ·]` tile of source rows shifted by
the tap's offset (zero outside the H x W grid: the zero padding) times the tap's weight tile. The
same helper runs the forward convs and, with the offsets negated and the weight read transposed,
the input gradient (the transposed convs), so the tap logic exists once. Taps whose offset exceeds
the grid in either direction are skipped (e.g. all but the middle row of taps when H = 1).

Launches (Triton). Train forward, 6: `_conv_rows` (z1 and per-block (mean, M2) partials),
`_combine_stats`, `_attention_rows` (u, t = w_c.u, s = sigmoid(w_s.u)), `_fuse_rows`
(m, p, z2 and its partials), `_combine_stats`, `_bn_relu`. Eval forward, 3: `_conv_rows`,
`_attention_rows`, `_fuse_rows` (which writes y with the running statistics). Branch 5 (`[B, K]`)
and tau (a per-sample mean of t) are a few tiny torch ops in between. The BatchNorm batch
statistics and tau are the only barriers. Backward, 7: `_bn_relu_bwd_sums`, `_sum_partials`,
`_bwd_rows_dm` (dz2, dm and the per-row values the per-sample sums need), `_bwd_rows_du` (dv1 and
the partials of the BN1 and attention-weight gradients), `_sum_partials`, `_bn_bwd_rows` (dz1,
in place over dv1), `_conv_transposed_rows` (dx); plus tiny torch ops for tau's and branch 5's
gradients, the four conv weight gradients from `aten.convolution_backward` (cuDNN) and the W2 / w5
GEMMs. All reductions are per block in registers and merged in a fixed order: deterministic, no
atomics.

GPU precision: every `tl.dot` runs with `input_precision="ieee"` (true fp32), and cuDNN's weight
gradients with TF32 off, unless the caller passes `allow_tf32=True` (then TF32 for both, about
1e-3 relative). Reductions accumulate in fp32.
"""
from __future__ import annotations

import torch

from mambarec_fast.reference.batchnorm import batchnorm_affine, batchnorm_relu_backward
from mambarec_fast.reference.dream import as_map, branch_geometry

from ._compat import cudnn_tf32, tl, triton
from .dream import (
    BLOCK_N,
    _bn_affine,
    _bn_grad_coefs,
    _bn_relu,
    _bn_relu_bwd_rows,
    _bn_relu_bwd_sums,
    _combined_stats,
    _pad,
    _row_block,
    _precision,
    _summed,
)


@triton.jit
def _conv_taps(acc, src_ptr, src_stride, src_col0, n_src, taps_ptr, a_stride, b_stride, n_dst, tap_stride,
               rows, rmask, H, W, branch, rate,
               SIGN: tl.constexpr, SP: tl.constexpr, DP: tl.constexpr, PREC: tl.constexpr):
    """acc [BN, DP] += sum over `branch`'s taps of src[rows shifted by SIGN·offset] @ tap tile.

    Source tile: columns `src_col0 + [0, n_src)` of `src` (row stride `src_stride`) at the pixel
    `(h + SIGN (kh-1) d, w + SIGN (kw-1) d)` of the row's own sample, zero outside the grid. Tap
    tile `[SP, DP]`: element (a, b) at `taps + tap·tap_stride + a·a_stride + b·b_stride` (a < n_src,
    b < n_dst). Branch 0 is the single 1x1 tap 0; branch j = 1..3 has taps 9j-8 .. 9j, dilation 6rj.
    Forward conv: SIGN = 1, src = x, tile (i, o) = W[o, i]. Input gradient: SIGN = -1, src = dz,
    tile (o, i) = W[o, i] (the same array with the strides swapped)."""
    hw = H * W
    base = (rows // hw) * hw
    h = (rows % hw) // W
    w = rows % W
    a = tl.arange(0, SP)
    b = tl.arange(0, DP)
    amask = a < n_src
    wmask = amask[:, None] & (b[None, :] < n_dst)
    dil = 6 * rate * branch
    first = tl.maximum(9 * branch - 8, 0)
    for t in range(tl.minimum(9 * branch + 1, 9)):
        dh = SIGN * (t // 3 - 1) * dil
        dw = SIGN * (t % 3 - 1) * dil
        if (dh < H) & (dh > -H) & (dw < W) & (dw > -W):  # else every source pixel is padding
            hs = h + dh
            ws = w + dw
            ok = rmask & (hs >= 0) & (hs < H) & (ws >= 0) & (ws < W)
            src = src_ptr + (base + hs * W + ws)[:, None] * src_stride + src_col0 + a[None, :]
            tile = tl.load(src, mask=ok[:, None] & amask[None, :], other=0.0)
            wt = tl.load(taps_ptr + (first + t) * tap_stride + a[:, None] * a_stride + b[None, :] * b_stride,
                         mask=wmask, other=0.0)
            acc += tl.dot(tile, wt, input_precision=PREC)
    return acc


@triton.jit
def _block_stats(z, mask, rows_left, pmean_ptr, pm2_ptr, offs, cmask, BN: tl.constexpr):
    """The block's per-column mean and M2 = sum((z - mean)^2) (two-pass, in registers)."""
    count = tl.minimum(rows_left, BN).to(tl.float32)
    mean = tl.sum(tl.where(mask, z, 0.0), axis=0) / count
    dev = tl.where(mask, z - mean[None, :], 0.0)
    tl.store(pmean_ptr + offs, mean, mask=cmask)
    tl.store(pm2_ptr + offs, tl.sum(dev * dev, axis=0), mask=cmask)


@triton.jit
def _conv_rows(x_ptr, taps_ptr, b1_ptr, z1_ptr, pmean_ptr, pm2_ptr, P, C, K, H, W, rate,
               BN: tl.constexpr, CP: tl.constexpr, KP: tl.constexpr, PREC: tl.constexpr, STATS: tl.constexpr):
    """Program (row block i, branch j): z1[i, jK:(j+1)K] = conv_j(x) + b1_j; with STATS the block's
    (mean, M2) partials into pmean/pm2 [num_blocks, 4K]."""
    i, rows, cols, rmask, cmask, mask = _row_block(P, K, BN, KP)
    j = tl.program_id(1)
    acc = tl.zeros([BN, KP], dtype=tl.float32)
    acc = _conv_taps(acc, x_ptr, C, 0, C, taps_ptr, 1, C, K, K * C, rows, rmask, H, W, j, rate,
                     SIGN=1, SP=CP, DP=KP, PREC=PREC)
    offs = j * K + cols
    z = acc + tl.load(b1_ptr + offs, mask=cmask, other=0.0)[None, :]
    tl.store(z1_ptr + rows[:, None] * (4 * K) + offs[None, :], z, mask=mask)
    if STATS:
        _block_stats(z, mask, P - i * BN, pmean_ptr + i * (4 * K), pm2_ptr + i * (4 * K), offs, cmask, BN)


@triton.jit
def _branch_u(z1_ptr, rows, offs, mask, cmask, K, mean1_ptr, var1_ptr, g1_ptr, be1_ptr, eps):
    """u = ReLU(BN(z1)) for the columns `offs` of z1 [P, 4K]."""
    z = tl.load(z1_ptr + rows[:, None] * (4 * K) + offs[None, :], mask=mask, other=0.0)
    scale, shift = _bn_affine(mean1_ptr, var1_ptr, g1_ptr, be1_ptr, offs, cmask, eps)
    return tl.maximum(z * scale[None, :] + shift[None, :], 0.0)


@triton.jit
def _attention_rows(z1_ptr, mean1_ptr, var1_ptr, g1_ptr, be1_ptr, u5_ptr, wcs_ptr, u_ptr, t_ptr, s_ptr,
                    P, K, HW, eps, BN: tl.constexpr, KP: tl.constexpr, SAVE: tl.constexpr):
    """One row block: u = ReLU(BN1(z1)) (stored with SAVE), u5 gathered from its sample, and per
    row t = w_c . u, s = sigmoid(w_s . u) over all 5K channels."""
    _, rows, cols, rmask, cmask, mask = _row_block(P, K, BN, KP)
    t = tl.zeros([BN], dtype=tl.float32)
    a = tl.zeros([BN], dtype=tl.float32)
    for j in range(4):
        offs = j * K + cols
        u = _branch_u(z1_ptr, rows, offs, mask, cmask, K, mean1_ptr, var1_ptr, g1_ptr, be1_ptr, eps)
        if SAVE:
            tl.store(u_ptr + rows[:, None] * (4 * K) + offs[None, :], u, mask=mask)
        t += tl.sum(u * tl.load(wcs_ptr + offs, mask=cmask, other=0.0)[None, :], axis=1)
        a += tl.sum(u * tl.load(wcs_ptr + 5 * K + offs, mask=cmask, other=0.0)[None, :], axis=1)
    u5 = tl.load(u5_ptr + (rows // HW)[:, None] * K + cols[None, :], mask=mask, other=0.0)
    t += tl.sum(u5 * tl.load(wcs_ptr + 4 * K + cols, mask=cmask, other=0.0)[None, :], axis=1)
    a += tl.sum(u5 * tl.load(wcs_ptr + 9 * K + cols, mask=cmask, other=0.0)[None, :], axis=1)
    tl.store(t_ptr + rows, t, mask=rmask)
    tl.store(s_ptr + rows, 1.0 / (1.0 + tl.exp(-a)), mask=rmask)


@triton.jit
def _w2_tile(w2_ptr, offs, cols, cmask, K):
    """`[KP, KP]` tile of W2 [K, 5K]: element (o, c) = W2[o, offs[c]] (dz2 @ tile = dp; its
    transpose view multiplies p into z2)."""
    return tl.load(w2_ptr + cols[:, None] * (5 * K) + offs[None, :], mask=cmask[:, None] & cmask[None, :], other=0.0)


@triton.jit
def _w2t_tile(w2_ptr, offs, cols, cmask, K):
    """`[KP, KP]` tile of W2^T: element (c, o) = W2[o, offs[c]]."""
    return tl.load(w2_ptr + cols[None, :] * (5 * K) + offs[:, None], mask=cmask[:, None] & cmask[None, :], other=0.0)


@triton.jit
def _fuse_rows(z1_ptr, mean1_ptr, var1_ptr, g1_ptr, be1_ptr, u5_ptr, s_ptr, tau_ptr, w2_ptr, b2_ptr,
               mean2_ptr, var2_ptr, g2_ptr, be2_ptr, p_ptr, z2_ptr, y_ptr, pmean_ptr, pm2_ptr, P, K, HW, eps,
               BN: tl.constexpr, KP: tl.constexpr, PREC: tl.constexpr, SAVE: tl.constexpr,
               STORE_Z2: tl.constexpr, FINAL: tl.constexpr):
    """One row block: m = max(ReLU(tau_b), s), p = (u m) u over the 5 branches (u recomputed from
    z1; branch 5 from u5 gathered), z2 = p W2^T + b2. SAVE stores p, STORE_Z2 stores z2. FINAL
    (eval): y = ReLU(BN2(z2)) with the statistics at mean2/var2; else z2's (mean, M2) partials."""
    i, rows, cols, rmask, cmask, mask = _row_block(P, K, BN, KP)
    img = rows // HW
    m = tl.maximum(tl.maximum(tl.load(tau_ptr + img, mask=rmask, other=0.0), 0.0),
                   tl.load(s_ptr + rows, mask=rmask, other=0.0))
    acc = tl.zeros([BN, KP], dtype=tl.float32)
    for j in range(5):
        offs = j * K + cols
        if j < 4:
            u = _branch_u(z1_ptr, rows, offs, mask, cmask, K, mean1_ptr, var1_ptr, g1_ptr, be1_ptr, eps)
        else:
            u = tl.load(u5_ptr + img[:, None] * K + cols[None, :], mask=mask, other=0.0)
        p = (u * m[:, None]) * u
        if SAVE:
            tl.store(p_ptr + rows[:, None] * (5 * K) + offs[None, :], p, mask=mask)
        acc += tl.dot(p, _w2t_tile(w2_ptr, offs, cols, cmask, K), input_precision=PREC)
    z2 = acc + tl.load(b2_ptr + cols, mask=cmask, other=0.0)[None, :]
    if STORE_Z2:
        tl.store(z2_ptr + rows[:, None] * K + cols[None, :], z2, mask=mask)
    if FINAL:
        scale2, shift2 = _bn_affine(mean2_ptr, var2_ptr, g2_ptr, be2_ptr, cols, cmask, eps)
        tl.store(y_ptr + rows[:, None] * K + cols[None, :], tl.maximum(z2 * scale2[None, :] + shift2[None, :], 0.0),
                 mask=mask)
    else:
        _block_stats(z2, mask, P - i * BN, pmean_ptr + i * K, pm2_ptr + i * K, cols, cmask, BN)


@triton.jit
def _bwd_rows_dm(gy_ptr, y_ptr, z2_ptr, mean2_ptr, var2_ptr, g2_ptr, sums2_ptr, w2_ptr, u_ptr, u5_ptr, s_ptr, tau_ptr,
                 dz2_ptr, rowv_ptr, P, K, HW, eps,
                 BN: tl.constexpr, KP: tl.constexpr, PREC: tl.constexpr, TRAIN: tl.constexpr):
    """One row block: dz2 = BN2 + ReLU backward of gy (stored), dp = dz2 W2, q = dp u,
    dm = sum over the 5K channels of q u, to_c per torch.maximum's tie rule; stores per row
    rowv[P, 3] = (dm to_c, dsig = dm (1 - to_c) s (1 - s), m)."""
    _, rows, cols, rmask, cmask, mask = _row_block(P, K, BN, KP)
    dz2 = _bn_relu_bwd_rows(gy_ptr, y_ptr, z2_ptr, mean2_ptr, var2_ptr, g2_ptr, sums2_ptr, dz2_ptr, rows, cols,
                            mask, cmask, K, P, eps, TRAIN)
    img = rows // HW
    c = tl.maximum(tl.load(tau_ptr + img, mask=rmask, other=0.0), 0.0)
    s = tl.load(s_ptr + rows, mask=rmask, other=0.0)
    dm = tl.zeros([BN], dtype=tl.float32)
    for j in range(5):
        offs = j * K + cols
        if j < 4:
            u = tl.load(u_ptr + rows[:, None] * (4 * K) + offs[None, :], mask=mask, other=0.0)
        else:
            u = tl.load(u5_ptr + img[:, None] * K + cols[None, :], mask=mask, other=0.0)
        q = tl.dot(dz2, _w2_tile(w2_ptr, offs, cols, cmask, K), input_precision=PREC) * u
        dm += tl.sum(q * u, axis=1)
    to_c = tl.where(c > s, 1.0, tl.where(c == s, 0.5, 0.0))
    tl.store(rowv_ptr + rows * 3, dm * to_c, mask=rmask)
    tl.store(rowv_ptr + rows * 3 + 1, dm * (1.0 - to_c) * s * (1.0 - s), mask=rmask)
    tl.store(rowv_ptr + rows * 3 + 2, tl.maximum(c, s), mask=rmask)


@triton.jit
def _bwd_rows_du(dz2_ptr, w2_ptr, wcs_ptr, u_ptr, z1_ptr, mean1_ptr, rowv_ptr, dtau_ptr, dv1_ptr, partial_ptr,
                 P, K, HW, BN: tl.constexpr, KP: tl.constexpr, PREC: tl.constexpr):
    """One row block, branches 1-4: du = 2 m q + (dtau_b / HW) w_c + dsig w_s, dv1 = du [u > 0]
    (stored), and per column of 4K the partials (sum dv1, sum dv1 (z1 - mean1), sum (dtau_b / HW) u,
    sum dsig u) into partial[i, 4, 4K]."""
    i, rows, cols, rmask, cmask, mask = _row_block(P, K, BN, KP)
    dz2 = tl.load(dz2_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0)
    dsig = tl.load(rowv_ptr + rows * 3 + 1, mask=rmask, other=0.0)
    m2 = 2.0 * tl.load(rowv_ptr + rows * 3 + 2, mask=rmask, other=0.0)
    dt = tl.load(dtau_ptr + rows // HW, mask=rmask, other=0.0) / HW
    for j in range(4):
        offs = j * K + cols
        ptrs = rows[:, None] * (4 * K) + offs[None, :]
        u = tl.load(u_ptr + ptrs, mask=mask, other=0.0)
        q = tl.dot(dz2, _w2_tile(w2_ptr, offs, cols, cmask, K), input_precision=PREC) * u
        wc = tl.load(wcs_ptr + offs, mask=cmask, other=0.0)
        ws = tl.load(wcs_ptr + 5 * K + offs, mask=cmask, other=0.0)
        du = q * m2[:, None] + dt[:, None] * wc[None, :] + dsig[:, None] * ws[None, :]
        dv1 = tl.where(u > 0, du, 0.0)
        tl.store(dv1_ptr + ptrs, dv1, mask=mask)
        zc1 = tl.load(z1_ptr + ptrs, mask=mask, other=0.0) - tl.load(mean1_ptr + offs, mask=cmask, other=0.0)[None, :]
        base = partial_ptr + i * (16 * K) + offs
        tl.store(base, tl.sum(dv1, axis=0), mask=cmask)
        tl.store(base + 4 * K, tl.sum(tl.where(mask, dv1 * zc1, 0.0), axis=0), mask=cmask)
        tl.store(base + 8 * K, tl.sum(dt[:, None] * u, axis=0), mask=cmask)
        tl.store(base + 12 * K, tl.sum(dsig[:, None] * u, axis=0), mask=cmask)


@triton.jit
def _bn_bwd_rows(dv1_ptr, z1_ptr, mean1_ptr, var1_ptr, g1_ptr, sums1_ptr, P, K, eps,
                 BN: tl.constexpr, KP: tl.constexpr, TRAIN: tl.constexpr):
    """One row block: dz1 = BN1 backward of dv1 [P, 4K] (the affine map of `_bn_grad_coefs`),
    written in place over dv1."""
    _, rows, cols, _, cmask, mask = _row_block(P, K, BN, KP)
    for j in range(4):
        offs = j * K + cols
        ptrs = rows[:, None] * (4 * K) + offs[None, :]
        zc1 = tl.load(z1_ptr + ptrs, mask=mask, other=0.0) - tl.load(mean1_ptr + offs, mask=cmask, other=0.0)[None, :]
        a1, b1, c1 = _bn_grad_coefs(sums1_ptr, mean1_ptr, var1_ptr, g1_ptr, offs, cmask, 4 * K, P, eps, TRAIN)
        dz1 = tl.load(dv1_ptr + ptrs, mask=mask, other=0.0) * a1[None, :] + zc1 * b1[None, :] + c1[None, :]
        tl.store(dv1_ptr + ptrs, dz1, mask=mask)


@triton.jit
def _conv_transposed_rows(dz1_ptr, taps_ptr, g5_ptr, dx_ptr, P, C, K, H, W, rate,
                          BN: tl.constexpr, CP: tl.constexpr, KP: tl.constexpr, PREC: tl.constexpr):
    """One row block: dx = sum over the 4 branches of the transposed conv of dz1 [P, 4K], plus
    branch 5's per-sample term g5 [B, C] (= dz5 W5 / HW)."""
    _, rows, cin, rmask, _, mask = _row_block(P, C, BN, CP)
    acc = tl.load(g5_ptr + (rows // (H * W))[:, None] * C + cin[None, :], mask=mask, other=0.0)
    for j in range(4):
        acc = _conv_taps(acc, dz1_ptr, 4 * K, j * K, K, taps_ptr, C, 1, C, K * C, rows, rmask, H, W, j, rate,
                         SIGN=-1, SP=KP, DP=CP, PREC=PREC)
    tl.store(dx_ptr + rows[:, None] * C + cin[None, :], acc, mask=mask)


def _pack_taps(wb1, wb2, wb3, wb4):
    """`[28, K, C]`: branch 1's 1x1 weight, then the 9 taps (kh, kw) of each dilated branch."""
    k, c = wb1.shape[:2]
    dilated = torch.stack((wb2, wb3, wb4)).permute(0, 3, 4, 1, 2).reshape(27, k, c)
    return torch.cat((wb1.reshape(1, k, c), dilated))


def map_forward(x, wb1, wb2, wb3, wb4, w5, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2,
                batch, height, width, rate, training, eps, need_backward, allow_tf32):
    """Same contract as `mambarec_fast.ops.dream_map._map_forward_torch` (float32 tensors)."""
    (x, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2) = (
        t.contiguous() for t in (x, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2))
    rows, c = x.shape
    k, hw = w2.shape[0], height * width
    k4 = 4 * k
    cp, kp, prec = _pad(c), _pad(k), _precision(allow_tf32)
    blocks = triton.cdiv(rows, BLOCK_N)
    grid = (blocks,)
    new = x.new_empty
    taps = _pack_taps(wb1, wb2, wb3, wb4)

    z1 = new(rows, k4)
    pmean, pm2 = (new(blocks, k4), new(blocks, k4)) if training else (z1, z1)
    _conv_rows[(blocks, 4)](x, taps, b1, z1, pmean, pm2, rows, c, k, height, width, rate,
                            BN=BLOCK_N, CP=cp, KP=kp, PREC=prec, STATS=training)
    # Branch 5 is [B, K]: a few torch ops (BatchNorm over the B rows as the op's torch body does).
    z5 = torch.addmm(b1[k4:], x.view(batch, hw, c).mean(1), w5.flatten(1).t())
    scale5, shift5, mean5, var5 = batchnorm_affine(z5, training, rm1[k4:], rv1[k4:], g1[k4:], be1[k4:], eps)
    u5 = torch.addcmul(shift5, z5, scale5).relu_()
    if training:
        mean_a, var_a = _combined_stats(pmean, pm2, rows, k4)
        mean1, var1 = torch.cat((mean_a, mean5)), torch.cat((var_a, var5))
    else:
        mean1, var1 = rm1.clone(), rv1.clone()

    u = new(rows, k4) if need_backward else z1
    t, s = new(rows), new(rows)
    _attention_rows[grid](z1, mean1, var1, g1, be1, u5, wcs, u, t, s, rows, k, hw, eps,
                          BN=BLOCK_N, KP=kp, SAVE=need_backward)
    tau = t.view(batch, hw).mean(1)

    y = new(rows, k)
    p = new(rows, 5 * k) if need_backward else y
    z2 = new(rows, k) if (need_backward or training) else y
    if training:
        pmean2, pm22 = new(blocks, k), new(blocks, k)
        _fuse_rows[grid](z1, mean1, var1, g1, be1, u5, s, tau, w2, b2, rm2, rv2, g2, be2, p, z2, y, pmean2, pm22,
                         rows, k, hw, eps, BN=BLOCK_N, KP=kp, PREC=prec, SAVE=need_backward, STORE_Z2=True,
                         FINAL=False)
        mean2, var2 = _combined_stats(pmean2, pm22, rows, k)
        _bn_relu[grid](z2, mean2, var2, g2, be2, y, rows, k, eps, BN=BLOCK_N, KP=kp)
    else:
        _fuse_rows[grid](z1, mean1, var1, g1, be1, u5, s, tau, w2, b2, rm2, rv2, g2, be2, p, z2, y, y, y,
                         rows, k, hw, eps, BN=BLOCK_N, KP=kp, PREC=prec, SAVE=need_backward,
                         STORE_Z2=need_backward, FINAL=True)
        mean2, var2 = rm2.clone(), rv2.clone()
    if not need_backward:
        return (y, *(new(0) for _ in range(8)), mean1, var1, mean2, var2)
    return y, z1, u, p, z5, u5, s, tau, z2, mean1, var1, mean2, var2


def map_backward(gy, x, wb1, wb2, wb3, wb4, w5, g1, wcs, w2, g2, y, z1, u, p, z5, u5, s, tau, z2,
                 mean1, var1, mean2, var2, batch, height, width, rate, training, eps, allow_tf32):
    """Same contract as `mambarec_fast.ops.dream_map._map_backward_torch` (float32 tensors)."""
    (gy, x, g1, wcs, w2, g2, y, z1, u, u5, s, tau, z2, mean1, var1, mean2, var2) = (
        t.contiguous() for t in (gy, x, g1, wcs, w2, g2, y, z1, u, u5, s, tau, z2, mean1, var1, mean2, var2))
    rows, c = x.shape
    k, hw = w2.shape[0], height * width
    k4 = 4 * k
    kp, prec = _pad(k), _precision(allow_tf32)
    blocks = triton.cdiv(rows, BLOCK_N)
    grid = (blocks,)
    new = x.new_empty

    partial2 = new(blocks, 2, k)
    _bn_relu_bwd_sums[grid](gy, y, z2, mean2, partial2, rows, k, BN=BLOCK_N, KP=kp)
    sums2 = _summed(partial2)  # [2, K]: sum dv2, sum dv2 (z2 - mean2)
    dz2, rowv = new(rows, k), new(rows, 3)
    _bwd_rows_dm[grid](gy, y, z2, mean2, var2, g2, sums2, w2, u, u5, s, tau, dz2, rowv, rows, k, hw, eps,
                       BN=BLOCK_N, KP=kp, PREC=prec, TRAIN=training)

    # Per-sample sums ([B]-sized, fixed order): tau's gradient and branch 5's.
    per_sample = rowv.view(batch, hw, 3)
    dtau = per_sample[..., 0].sum(1) * (tau > 0)
    datt5 = torch.stack((dtau, per_sample[..., 1].sum(1)), dim=1)  # [B, 2]: sums over pixels of (dtau/HW, dsig)
    mdz2 = torch.bmm(per_sample[..., 2].unsqueeze(1), dz2.view(batch, hw, k)).squeeze(1)  # sum_p m_p dz2_p
    # du5_b = sum_p 2 m_p (dz2_p W2_5) u5_b + datt5_b . wcs_5
    du5 = (mdz2 @ w2[:, k4:]).mul_(u5).mul_(2).add_(datt5 @ wcs[:, k4:])
    dz5, dg5, dbe5 = batchnorm_relu_backward(du5, u5, z5, g1[k4:], mean1[k4:], var1[k4:], training, eps)

    dz1, partial1 = new(rows, k4), new(blocks, 4, k4)  # dz1 holds dv1 until _bn_bwd_rows
    _bwd_rows_du[grid](dz2, w2, wcs, u, z1, mean1, rowv, dtau, dz1, partial1, rows, k, hw,
                       BN=BLOCK_N, KP=kp, PREC=prec)
    sums1 = _summed(partial1)  # [4, 4K]: sum dv1, sum dv1 (z1 - mean1), dw_c, dw_s
    _bn_bwd_rows[grid](dz1, z1, mean1, var1, g1, sums1, rows, k, eps, BN=BLOCK_N, KP=kp, TRAIN=training)

    taps = _pack_taps(wb1, wb2, wb3, wb4)
    g5 = (dz5 @ w5.flatten(1)).div_(hw)
    dx = new(rows, c)
    _conv_transposed_rows[grid](dz1, taps, g5, dx, rows, c, k, height, width, rate,
                                BN=BLOCK_N, CP=_pad(c), KP=kp, PREC=prec)

    x4 = as_map(x, batch, height, width)
    dws, dbs = [], []
    with cudnn_tf32(allow_tf32):
        for j, (w, (_kernel, pad, dil)) in enumerate(zip((wb1, wb2, wb3, wb4), branch_geometry(rate))):
            dzj = as_map(dz1[:, j * k:(j + 1) * k], batch, height, width)
            _, gw, gb = torch.ops.aten.convolution_backward(
                dzj, x4, w, [k], [1, 1], [pad, pad], [dil, dil], False, [0, 0], 1, [False, True, True]
            )
            dws.append(gw)
            dbs.append(gb)
    dw5 = (dz5.t() @ x.view(batch, hw, c).mean(1)).view_as(w5)
    db1 = torch.cat((*dbs, dz5.sum(0)))
    dg1 = torch.cat((sums1[1] * torch.rsqrt(var1[:k4] + eps), dg5))
    dbe1 = torch.cat((sums1[0], dbe5))
    dwcs = torch.cat((sums1[2:], datt5.t() @ u5), dim=1)
    dg2 = sums2[1] * torch.rsqrt(var2 + eps)
    return dx, *dws, dw5, db1, dg1, dbe1, dwcs, dz2.t() @ p, dz2.sum(0), dg2, sums2[0].clone()
