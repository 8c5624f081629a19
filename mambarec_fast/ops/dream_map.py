"""DREAM's general path (SPEC §4 on `[B, C, H, W]` maps and `[B, S, C]` sequences) as one op.

Rows layout: the op sees the input as `x [P, C]`, one row per pixel in `(b, h, w)` order (channels
last; `P = B·H·W`), with the geometry `(B, H, W)` as ints. A `[B, S, C]` sequence (viewed as
`[B, C, 1, S]`) already is that layout. With K = dim_out and r = rate:

    z_j = conv_j(x) + b_j   [P, K], j = 1..4: 1x1; 3x3 dilated 6r, 12r, 18r with zero padding
    u_j = ReLU(BN(z_j))     BatchNorm over the P rows
    z5  = mean_pixels(x) W5^T + b5   [B, K];  u5 = ReLU(BN(z5)), BatchNorm over the B rows,
          broadcast to every pixel of its sample
    t_p = w_c . u_p,  s_p = sigmoid(w_s . u_p)        per pixel (u_p: all 5K channels)
    tau_b = mean_{p in b} t_p,  c_b = ReLU(tau_b)     (w_c . mean(u) = mean(w_c . u))
    m_p = max(c_b, s_p),  p = m u^2                   (u >= 0, so max(u c, u s) = u m exactly)
    z2 = p W2^T + b2 [P, K];  y = ReLU(BN(z2)), BatchNorm over the P rows.

Backward (dv = upstream gradient masked by the ReLU; BN backward as in `batchnorm_relu_backward`):

    dz2 = BN2'(dy);  dW2 = dz2^T p;  dp = dz2 W2;  q = dp u;  dm_p = sum_channels q u
    to_c = [c_b > s_p] + [c_b == s_p] / 2               (torch.maximum's tie rule)
    dtau_b = [tau_b > 0] sum_{p in b} dm_p to_c;  dsig_p = dm_p (1 - to_c) s_p (1 - s_p)
    du_p = 2 m_p q_p + (dtau_b / HW) w_c + dsig_p w_s
    dw_c = sum_p (dtau_b / HW) u_p;  dw_s = sum_p dsig_p u_p
    du5_b = sum_{p in b} du_p[branch 5]  ->  BN5' -> dz5 [B, K];  dW5 = dz5^T mean_pixels(x)
    dz_j = BN_j'(du_j);  dW_j, dx_j = the conv backward of dz_j;  dx = sum_j dx_j + dz5 W5 / HW.

`dream_map_forward` / `dream_map_backward` are `torch.library` custom ops (autograd and fake
kernels registered). On CUDA in float32 they run the Triton kernels of `kernels/dream_map.py`
(implicit-GEMM dilated convs fused with the BatchNorms, ReLUs, concat and attentions between the
batch-statistic barriers); everywhere else the algebra above in torch ops, with the convolutions
and their backward from ATen.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mambarec_fast.kernels._compat import HAS_TRITON
from mambarec_fast.reference.batchnorm import batchnorm_affine, batchnorm_relu_backward
from mambarec_fast.reference.dream import as_map, branch_geometry, to_rows


# --------------------------------------------------------------------------------------------
# The algebra in torch ops (CPU and any dtype/device the Triton kernels do not take)
# --------------------------------------------------------------------------------------------
def _map_inference_torch(x, wb1, wb2, wb3, wb4, w5, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2,
                         batch, height, width, rate, eps):
    """`y [P, K]` in eval mode without autograd: both BatchNorms folded into the convs / conv_cat
    (weights scaled, biases shifted), branch by branch, so that no `[P, 4K]` or `[P, 5K]`
    matrix is built (branch 5's share of conv_cat is m_p (u5_b^2 W2_5^T), one `[B, K]` product)."""
    k, hw = w2.shape[0], height * width
    k4 = 4 * k
    scale1 = g1 * torch.rsqrt(rv1 + eps)
    shift1 = (b1 - rm1) * scale1 + be1
    scale2 = g2 * torch.rsqrt(rv2 + eps)
    w2s = w2 * scale2[:, None]
    x4 = as_map(x, batch, height, width)
    branches = [slice(j * k, (j + 1) * k) for j in range(5)]
    us = [
        to_rows(F.conv2d(x4, w * scale1[cols, None, None, None], shift1[cols], padding=pad, dilation=dil)).relu_()
        for w, cols, (_kernel, pad, dil) in zip((wb1, wb2, wb3, wb4), branches, branch_geometry(rate))
    ]
    u5 = torch.addmm(shift1[k4:], x.view(batch, hw, -1).mean(1), (w5.flatten(1) * scale1[k4:, None]).t()).relu_()
    pre = (u5 @ wcs[:, k4:].t()).unsqueeze(1).expand(batch, hw, 2).reshape(-1, 2)
    for u, cols in zip(us, branches):
        pre.addmm_(u, wcs[:, cols].t())
    pre = pre.view(batch, hw, 2)
    m = torch.maximum(pre[..., 0].mean(1).relu_().unsqueeze(1), torch.sigmoid(pre[..., 1]))  # [B, HW]
    y = ((u5 * u5) @ w2s[:, k4:].t()).unsqueeze(1).mul(m.unsqueeze(2)).view(-1, k)
    y.add_((b2 - rm2) * scale2 + be2)
    m = m.view(-1, 1)
    for u, cols in zip(us, branches):
        y.addmm_((u * m).mul_(u), w2s[:, cols].t())  # p = (u m) u, as the reference rounds
    return y.relu_()


def _map_forward_torch(x, wb1, wb2, wb3, wb4, w5, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2,
                       batch, height, width, rate, training, eps, need_backward):
    k, hw = w2.shape[0], height * width
    if not training and not need_backward:
        y = _map_inference_torch(x, wb1, wb2, wb3, wb4, w5, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2,
                                 batch, height, width, rate, eps)
        return (y, *(x.new_empty(0) for _ in range(8)), rm1.clone(), rv1.clone(), rm2.clone(), rv2.clone())
    k4 = 4 * k
    x4 = as_map(x, batch, height, width)
    convs = [
        F.conv2d(x4, w, b1[j * k:(j + 1) * k], padding=pad, dilation=dil)
        for j, (w, (_kernel, pad, dil)) in enumerate(zip((wb1, wb2, wb3, wb4), branch_geometry(rate)))
    ]
    z1 = to_rows(torch.cat(convs, dim=1))
    z5 = torch.addmm(b1[k4:], x.view(batch, hw, -1).mean(1), w5.flatten(1).t())
    scale_a, shift_a, mean_a, var_a = batchnorm_affine(z1, training, rm1[:k4], rv1[:k4], g1[:k4], be1[:k4], eps)
    scale_b, shift_b, mean_b, var_b = batchnorm_affine(z5, training, rm1[k4:], rv1[k4:], g1[k4:], be1[k4:], eps)
    u = torch.addcmul(shift_a, z1, scale_a).relu_()
    u5 = torch.addcmul(shift_b, z5, scale_b).relu_()
    pre = (u @ wcs[:, :k4].t()).view(batch, hw, 2) + (u5 @ wcs[:, k4:].t()).unsqueeze(1)
    tau = pre[..., 0].mean(1)  # [B]
    s = torch.sigmoid(pre[..., 1])  # [B, HW]
    m = torch.maximum(tau.relu().unsqueeze(1), s)
    p5 = (m.unsqueeze(2) * u5.unsqueeze(1)).mul_(u5.unsqueeze(1))  # (u m) u, as the reference rounds
    p = torch.cat(((u * m.view(-1, 1)).mul_(u), p5.view(-1, k)), dim=1)
    z2 = torch.addmm(b2, p, w2.t())
    scale2, shift2, mean2, var2 = batchnorm_affine(z2, training, rm2, rv2, g2, be2, eps)
    y = torch.addcmul(shift2, z2, scale2).relu_()
    mean1, var1 = torch.cat((mean_a, mean_b)), torch.cat((var_a, var_b))
    if not need_backward:
        saved = tuple(x.new_empty(0) for _ in range(8))
        return (y, *saved, mean1, var1, mean2, var2)
    return y, z1, u, p, z5, u5, s.reshape(-1), tau, z2, mean1, var1, mean2, var2


def _map_backward_torch(gy, x, wb1, wb2, wb3, wb4, w5, g1, wcs, w2, g2, y, z1, u, p, z5, u5, s, tau, z2,
                        mean1, var1, mean2, var2, batch, height, width, rate, training, eps):
    k, hw = w2.shape[0], height * width
    k4 = 4 * k
    dz2, dg2, dbe2 = batchnorm_relu_backward(gy, y, z2, g2, mean2, var2, training, eps)
    dw2, db2 = dz2.t() @ p, dz2.sum(0)
    q = (dz2 @ w2[:, :k4]).mul_(u)  # dp u, branch by branch (dp = dz2 W2)
    q5 = (dz2 @ w2[:, k4:]).view(batch, hw, k).mul_(u5.unsqueeze(1))
    dm = (q * u).sum(1).view(batch, hw) + (q5 * u5.unsqueeze(1)).sum(2)
    s = s.view(batch, hw)
    c = tau.relu().unsqueeze(1)
    to_c = (c > s).to(dm.dtype) + 0.5 * (c == s).to(dm.dtype)
    dtau = (dm * to_c).sum(1) * (tau > 0)
    dsig = dm * (1 - to_c) * s * (1 - s)
    datt = torch.stack((dtau.div(hw).unsqueeze(1).expand(-1, hw), dsig), dim=2)  # [B, HW, 2]
    datt_b = datt.sum(1)
    datt = datt.view(-1, 2)
    m2 = 2 * torch.maximum(c, s)
    du = q.mul_(m2.view(-1, 1)).addmm_(datt, wcs[:, :k4])
    du5 = (q5 * m2.unsqueeze(2)).sum(1).addmm_(datt_b, wcs[:, k4:])
    dwcs = torch.cat((datt.t() @ u, datt_b.t() @ u5), dim=1)
    dz1, dg1a, dbe1a = batchnorm_relu_backward(du, u, z1, g1[:k4], mean1[:k4], var1[:k4], training, eps)
    dz5, dg1b, dbe1b = batchnorm_relu_backward(du5, u5, z5, g1[k4:], mean1[k4:], var1[k4:], training, eps)
    x4 = as_map(x, batch, height, width)
    dx4 = (dz5 @ w5.flatten(1)).div_(hw)[:, :, None, None].expand_as(x4)
    dws, dbs = [], []
    for j, (w, (_kernel, pad, dil)) in enumerate(zip((wb1, wb2, wb3, wb4), branch_geometry(rate))):
        dzj = as_map(dz1[:, j * k:(j + 1) * k], batch, height, width)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            dzj, x4, w, [k], [1, 1], [pad, pad], [dil, dil], False, [0, 0], 1, [True, True, True]
        )
        dx4 = dx4 + gx
        dws.append(gw)
        dbs.append(gb)
    dw5 = (dz5.t() @ x.view(batch, hw, -1).mean(1)).view_as(w5)
    db1 = torch.cat((*dbs, dz5.sum(0)))
    return (to_rows(dx4), *dws, dw5, db1, torch.cat((dg1a, dg1b)), torch.cat((dbe1a, dbe1b)), dwcs, dw2, db2, dg2, dbe2)


# --------------------------------------------------------------------------------------------
# torch.library ops: forward, backward, fake kernels, autograd
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("mambarec_fast::dream_map_forward", mutates_args=())
def dream_map_forward(
    x: Tensor, wb1: Tensor, wb2: Tensor, wb3: Tensor, wb4: Tensor, w5: Tensor, b1: Tensor, g1: Tensor,
    be1: Tensor, rm1: Tensor, rv1: Tensor, wcs: Tensor, w2: Tensor, b2: Tensor, g2: Tensor, be2: Tensor,
    rm2: Tensor, rv2: Tensor, batch: int, height: int, width: int, rate: int, training: bool, eps: float,
    need_backward: bool, allow_tf32: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """DREAM on `x [P, C]` rows of a `[B, H, W]` grid (see the module docstring).

    Parameters: `wb1 [K, C, 1, 1]`, `wb2..wb4 [K, C, 3, 3]` (branch convs), `w5 [K, C, 1, 1]`
    (branch 5), the rest packed as for `dream_matrix_forward` (`b1, g1, be1, rm1, rv1 [5K]`,
    `wcs [2, 5K]`, `w2 [K, 5K]`, `b2, g2, be2, rm2, rv2 [K]`).
    Returns `(y [P, K], z1 [P, 4K], u [P, 4K], p [P, 5K], z5 [B, K], u5 [B, K], s [P], tau [B],
    z2 [P, K], mean1 [5K], var1 [5K], mean2 [K], var2 [K])`: the pre-BN conv outputs `z1`, their
    BN + ReLU `u`, the conv_cat input `p`, branch 5's `z5` and `u5`, the spatial gates `s` and the
    channel pre-activations `tau` (these eight kept for the backward, empty without
    `need_backward`), and the BatchNorm statistics used (batch statistics, biased variance, in train
    mode; copies of the running ones in eval mode). `allow_tf32` lets the CUDA kernels use TF32.
    """
    return _map_forward_torch(x, wb1, wb2, wb3, wb4, w5, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2,
                              batch, height, width, rate, training, eps, need_backward)


@dream_map_forward.register_fake
def _(x, wb1, wb2, wb3, wb4, w5, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2,
      batch, height, width, rate, training, eps, need_backward, allow_tf32):
    rows, k = x.shape[0], w2.shape[0]
    new = x.new_empty
    if need_backward:
        saved = (new(rows, 4 * k), new(rows, 4 * k), new(rows, 5 * k), new(batch, k), new(batch, k),
                 new(rows), new(batch), new(rows, k))
    else:
        saved = tuple(new(0) for _ in range(8))
    return (new(rows, k), *saved, new(5 * k), new(5 * k), new(k), new(k))


@torch.library.custom_op("mambarec_fast::dream_map_backward", mutates_args=())
def dream_map_backward(
    gy: Tensor, x: Tensor, wb1: Tensor, wb2: Tensor, wb3: Tensor, wb4: Tensor, w5: Tensor, g1: Tensor,
    wcs: Tensor, w2: Tensor, g2: Tensor, y: Tensor, z1: Tensor, u: Tensor, p: Tensor, z5: Tensor, u5: Tensor,
    s: Tensor, tau: Tensor, z2: Tensor, mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor,
    batch: int, height: int, width: int, rate: int, training: bool, eps: float, allow_tf32: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients `(dx, dwb1, dwb2, dwb3, dwb4, dw5, db1, dg1, dbe1, dwcs, dw2, db2, dg2, dbe2)` of
    `dream_map_forward` from `gy [P, K]`, its inputs and its outputs (shapes as there)."""
    return _map_backward_torch(gy, x, wb1, wb2, wb3, wb4, w5, g1, wcs, w2, g2, y, z1, u, p, z5, u5, s, tau, z2,
                               mean1, var1, mean2, var2, batch, height, width, rate, training, eps)


@dream_map_backward.register_fake
def _(gy, x, wb1, wb2, wb3, wb4, w5, g1, wcs, w2, g2, y, z1, u, p, z5, u5, s, tau, z2, mean1, var1, mean2, var2,
      batch, height, width, rate, training, eps, allow_tf32):
    return tuple(torch.empty_like(t) for t in (x, wb1, wb2, wb3, wb4, w5, g1, g1, g1, wcs, w2, g2, g2, g2))


def _setup_context(ctx, inputs, output):
    (x, wb1, wb2, wb3, wb4, w5, _b1, g1, _be1, _rm1, _rv1, wcs, w2, _b2, g2, _be2, _rm2, _rv2,
     batch, height, width, rate, training, eps, _need, allow_tf32) = inputs
    ctx.save_for_backward(x, wb1, wb2, wb3, wb4, w5, g1, wcs, w2, g2, *output)
    ctx.geometry = (batch, height, width, rate, training, eps, allow_tf32)
    ctx.set_materialize_grads(False)  # the saved-value outputs never get gradients


def _autograd_backward(ctx, gy, *_unused_grads):
    if gy is None:  # only y is differentiable
        return (None,) * 26
    (dx, dwb1, dwb2, dwb3, dwb4, dw5, db1, dg1, dbe1, dwcs, dw2, db2, dg2, dbe2) = dream_map_backward(
        gy.contiguous(), *ctx.saved_tensors, *ctx.geometry
    )
    return (dx, dwb1, dwb2, dwb3, dwb4, dw5, db1, dg1, dbe1, None, None, dwcs, dw2, db2, dg2, dbe2, None, None,
            None, None, None, None, None, None, None, None)


dream_map_forward.register_autograd(_autograd_backward, setup_context=_setup_context)

if HAS_TRITON:
    from mambarec_fast.kernels import dream_map as _kernels

    @dream_map_forward.register_kernel("cuda")
    def _(x, wb1, wb2, wb3, wb4, w5, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2,
          batch, height, width, rate, training, eps, need_backward, allow_tf32):
        args = (x, wb1, wb2, wb3, wb4, w5, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2,
                batch, height, width, rate, training, eps, need_backward)
        if x.dtype != torch.float32:
            return _map_forward_torch(*args)
        return _kernels.map_forward(*args, allow_tf32)

    @dream_map_backward.register_kernel("cuda")
    def _(gy, x, wb1, wb2, wb3, wb4, w5, g1, wcs, w2, g2, y, z1, u, p, z5, u5, s, tau, z2, mean1, var1, mean2, var2,
          batch, height, width, rate, training, eps, allow_tf32):
        args = (gy, x, wb1, wb2, wb3, wb4, w5, g1, wcs, w2, g2, y, z1, u, p, z5, u5, s, tau, z2,
                mean1, var1, mean2, var2, batch, height, width, rate, training, eps)
        if x.dtype != torch.float32:
            return _map_backward_torch(*args)
        return _kernels.map_backward(*args, allow_tf32)
