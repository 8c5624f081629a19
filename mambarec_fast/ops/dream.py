"""The fast DREAM block (SPEC §4): same parameters, state_dict and results as the reference.

Matrix path (`[N, C]` input, the model's case). On a 1x1 map a 3x3 dilated conv with padding equal
to its dilation sees only its centre tap, and branch 5's pooling is the identity, so the five
branches are one GEMM `z1 = x W1^T + b1` with `W1 [5Ch, C]` stacked from the centre taps. After
BN + ReLU, `u >= 0`, so for each row `n`

    a = max(u * c_n, u * s_n) = u * m_n,   m_n = max(c_n, s_n),
    c_n = ReLU(w_c . u_n),   s_n = sigmoid(w_s . u_n)

(exactly, even in floating point: rounding is monotone) and the block is

    z1 = x W1^T + b1 -> BN -> ReLU = u -> p = (u m) u -> z2 = p W2^T + b2 -> BN -> ReLU = y.

`dream_matrix_forward` / `dream_matrix_backward` are `torch.library` custom ops holding that
algebra, with an analytic backward registered as their autograd formula and fake kernels for
`torch.compile` (which keeps each as one op). On CUDA in float32 they run the Triton kernels of
`kernels/dream.py`; everywhere else (CPU, other dtypes, no Triton) the same algebra in a few torch
ops, rearranged so that the first BatchNorm folds into its GEMM in train mode too (see the comment
above `_forward_torch`). Only the centre taps enter the op (sliced out of the 4-D conv weights, so the other taps get
exactly zero gradient, as in the reference).

General path (`[B, C, H, W]`, `[B, S, C]`): the op of `ops/dream_map.py` (Triton implicit-GEMM
dilated convs on CUDA; torch convs with the same analytic backward elsewhere). The reference
computation (`mambarec_fast.reference.DREAM.forward`, with this module's parameters) serves what
neither op covers: BatchNorm submodules switched to a different train/eval mode than the block or
without running statistics, and an empty batch of maps in eval mode.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mambarec_fast.kernels._compat import HAS_TRITON
from mambarec_fast.ops.dream_map import dream_map_forward
from mambarec_fast.reference.batchnorm import batchnorm_affine, batchnorm_relu_backward
from mambarec_fast.reference.dream import DREAM as ReferenceDREAM
from mambarec_fast.reference.dream import as_map, to_feature_map, to_rows

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------
# The algebra in torch ops (CPU and any dtype/device the Triton kernels do not take)
# --------------------------------------------------------------------------------------------
# Here the first BatchNorm never sees the [N, 5Ch] matrix z1 (each pass over an [N, 5Ch] matrix
# costs about as much as a tenth of a GEMM on the CPU). Its columns are linear in x, so with the
# centred input xc = x - mean(x) and its covariance S = xc^T xc / N (a [C, C] GEMM):
#     z1 - mean1 = xc W1^T,   var1 = diag(W1 S W1^T),
# and BN1 folds into the GEMM: u = ReLU(xc (scale1 W1)^T + beta1). The backward needs only
# dv1 (the gradient at BN1's output, masked by the ReLU) and G = dv1^T xc:
#     dgamma1 = rstd1 diag(G W1^T),  dW1 = scale1 G - N a W1 S,  dx = dv1 (scale1 W1) - xc W1^T a W1 - k,
# with a = scale1 rstd1 dgamma1 / N and the row k = (scale1 dbeta1 / N) W1 (all per-row vectors as
# diagonal matrices). db1 is exactly zero in train mode (BN subtracts the batch mean). Likewise
# p = m u^2 is never built: z2 = m (u^2 W2^T) + b2 with the row factor m applied to the [N, Ch]
# product r = u^2 W2^T, whence dm = rowsum(dz2 * r) and dW2 = (m dz2)^T u^2.
# The remaining [N, 5Ch] work (u^2 and the products with it; dv1 and the three products with it)
# runs over blocks of rows, so that those temporaries stay in cache and are never allocated at
# full size: of the [N, 5Ch] matrices only u is stored (kept for the backward).
def _gates(pre: Tensor) -> tuple[Tensor, Tensor]:
    """From the attention pre-activations `pre = u wcs^T [N, 2]`: `cs [N, 2]` = (ReLU(w_c . u_n),
    sigmoid(w_s . u_n)) and `m = max(c, s)` as a column `[N, 1]`."""
    cs = torch.stack((torch.relu(pre[:, 0]), torch.sigmoid(pre[:, 1])), dim=1)
    return cs, torch.maximum(cs[:, 0], cs[:, 1]).unsqueeze(1)


# Rows per block: a [1024, 5 * 64] float32 temporary is 1.3 MB (cache-resident), and GEMMs of
# 1024 rows run at full speed.
_ROW_BLOCK = 1024


def _row_blocks(n: int):
    """Slices of `_ROW_BLOCK` rows covering `range(n)` in order (the last one may be shorter)."""
    return (slice(i, min(i + _ROW_BLOCK, n)) for i in range(0, n, _ROW_BLOCK))


def _centred(x: Tensor) -> Tensor:
    """`x - mean(x)` over the rows: the train-mode input of the folded first GEMM."""
    return x - x.mean(0)


def _forward_torch(x, w1, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2, training, eps, need_backward):
    if not training and not need_backward:
        # Eval inference: fold each BatchNorm into its GEMM (scale the weight rows, shift the bias).
        scale1 = g1 * torch.rsqrt(rv1 + eps)
        u = torch.addmm((b1 - rm1) * scale1 + be1, x, (w1 * scale1[:, None]).t()).relu_()
        _cs, m = _gates(u @ wcs.t())
        p = (u * m).mul_(u)
        scale2 = g2 * torch.rsqrt(rv2 + eps)
        y = torch.addmm((b2 - rm2) * scale2 + be2, p, (w2 * scale2[:, None]).t()).relu_()
        return y, [], *(x.new_empty(0) for _ in range(4))
    if training:
        xc = _centred(x)
        cov = (xc.t() @ xc).div_(x.shape[0])
        mean1 = torch.addmv(b1, w1, x.mean(0))
        # A quadratic form of a PSD matrix: >= 0 in exact arithmetic, clamp the rounding.
        var1 = ((w1 @ cov) * w1).sum(1).clamp_min_(0)
        scale1 = g1 * torch.rsqrt(var1 + eps)
        shift1 = be1
    else:
        xc, cov = x, x.new_empty(0)
        mean1, var1 = rm1.clone(), rv1.clone()
        scale1 = g1 * torch.rsqrt(var1 + eps)
        shift1 = (b1 - rm1) * scale1 + be1
    n, k1 = x.shape[0], w1.shape[0]
    w1s_t = (w1 * scale1[:, None]).t()
    u, r, pre = x.new_empty(n, k1), x.new_empty(n, w2.shape[0]), x.new_empty(n, 2)
    sq = x.new_empty(min(n, _ROW_BLOCK), k1)  # u^2 of one block
    for rows in _row_blocks(n):
        ub = torch.addmm(shift1, xc[rows], w1s_t, out=u[rows]).relu_()
        torch.mm(ub, wcs.t(), out=pre[rows])
        torch.mm(torch.mul(ub, ub, out=sq[: ub.shape[0]]), w2.t(), out=r[rows])
    cs, m = _gates(pre)  # from the pre-activations gathered over the blocks
    z2 = torch.addcmul(b2, r, m)
    scale2, shift2, mean2, var2 = batchnorm_affine(z2, training, rm2, rv2, g2, be2, eps)
    y = torch.addcmul(shift2, z2, scale2).relu_()
    saved = [u, cs, r, z2, cov] if need_backward else []
    return y, saved, mean1, var1, mean2, var2


def _backward_torch(gy, x, w1, b1, g1, wcs, w2, g2, y, saved, mean1, var1, mean2, var2, training, eps):
    u, cs, r, z2, cov = saved
    n, c, k1 = x.shape[0], x.shape[1], w1.shape[0]
    dz2, dg2, dbe2 = batchnorm_relu_backward(gy, y, z2, g2, mean2, var2, training, eps)
    c_att, s_att = cs[:, 0], cs[:, 1]
    m = torch.maximum(c_att, s_att).unsqueeze(1)
    db2 = dz2.sum(0)
    dm = (dz2 * r).sum(1)
    # torch.maximum's rule: ties split half/half; ReLU's backward masks where its output is 0.
    to_c = (c_att > s_att).to(dm.dtype) + 0.5 * (c_att == s_att).to(dm.dtype)
    dc_pre = dm * to_c * (c_att > 0)
    ds_pre = dm * (1 - to_c) * s_att * (1 - s_att)
    datt = torch.stack((dc_pre, ds_pre), dim=1)  # [N, 2]
    rstd1 = torch.rsqrt(var1 + eps)
    scale1 = g1 * rstd1
    w1s = w1 * scale1[:, None]
    xc = _centred(x) if training else x  # the first GEMM's input, as in the forward
    dz2m = dz2 * m
    dz2m2 = dz2m * 2
    # Accumulated over the row blocks: dW2, dwcs, G = dv1^T xc, dbeta1; dx block by block.
    dw2, dwcs, gx, dbe1 = torch.zeros_like(w2), torch.zeros_like(wcs), x.new_zeros(k1, c), x.new_zeros(k1)
    dx = x.new_empty(n, c)
    work = x.new_empty(2, min(n, _ROW_BLOCK), k1)  # u^2 and dv1 of one block
    for rows in _row_blocks(n):
        ub = u[rows]
        nb = ub.shape[0]
        dw2.addmm_(dz2m[rows].t(), torch.mul(ub, ub, out=work[0, :nb]))
        dwcs.addmm_(datt[rows].t(), ub)
        # du = 2 m u (dz2 W2) + datt wcs (the row factor 2m taken into the small dz2), then
        # BN1's ReLU mask: dv1.
        dv1 = torch.mm(dz2m2[rows], w2, out=work[1, :nb]).mul_(ub).addmm_(datt[rows], wcs)
        torch.ops.aten.threshold_backward.grad_input(dv1, ub, 0, grad_input=dv1)
        dbe1 += dv1.sum(0)
        gx.addmm_(dv1.t(), xc[rows])
        torch.mm(dv1, w1s, out=dx[rows])
    if training:
        dg1 = rstd1 * (gx * w1).sum(1)
        aw1 = w1 * (scale1 * rstd1 * dg1 / n)[:, None]
        dw1 = gx.mul_(scale1[:, None]).sub_(aw1 @ cov, alpha=n)
        db1 = torch.zeros_like(b1)
        dx.sub_(torch.addmm((scale1 * dbe1 / n) @ w1, xc, w1.t() @ aw1))
    else:
        # Running statistics are constants: dz1 = scale1 dv1, and z1 - mean1 = x W1^T + b1 - mean1.
        dg1 = rstd1 * ((gx * w1).sum(1) + dbe1 * (b1 - mean1))
        dw1 = gx.mul_(scale1[:, None])
        db1 = scale1 * dbe1
    return dx, dw1, db1, dg1, dbe1, dwcs, dw2, db2, dg2, dbe2


def _runs_triton(x: Tensor) -> bool:
    """Whether the op runs the Triton kernels on `x` (their saved tensors differ from the torch path's)."""
    return HAS_TRITON and x.device.type == "cuda" and x.dtype == torch.float32


# --------------------------------------------------------------------------------------------
# torch.library ops: forward, backward, fake kernels, autograd
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("mambarec_fast::dream_matrix_forward", mutates_args=())
def dream_matrix_forward(
    x: Tensor, w1: Tensor, b1: Tensor, g1: Tensor, be1: Tensor, rm1: Tensor, rv1: Tensor,
    wcs: Tensor, w2: Tensor, b2: Tensor, g2: Tensor, be2: Tensor, rm2: Tensor, rv2: Tensor,
    training: bool, eps: float, need_backward: bool, allow_tf32: bool,
) -> tuple[Tensor, list[Tensor], Tensor, Tensor, Tensor, Tensor]:
    """DREAM on `x [N, C]` with packed parameters.

    Packed parameters: `w1 [5Ch, C]` (centre taps), `b1, g1, be1, rm1, rv1 [5Ch]` (conv bias, BN
    weight, bias, running mean, running var of the five branches in concat order), `wcs [2, 5Ch]`
    (rows w_c, w_s), `w2 [Ch, 5Ch]`, `b2, g2, be2, rm2, rv2 [Ch]` (conv_cat).
    Returns `(y [N, Ch], saved, mean1, var1, mean2, var2)`: `saved` the tensors
    `dream_matrix_backward` needs (empty when `need_backward` is False), which depend on the
    implementation: Triton `[z1, u, p, cs, z2]` (`z1`, `z2` the pre-BN GEMM outputs, `u` the
    concat, `p = max(c, s) u^2` the conv_cat input, `cs [N, 2]` the per-row (c, s)); torch
    `[u, cs, r = u^2 W2^T, z2, S]` (`S [C, C]` the input covariance in train mode, empty in
    eval mode); `mean*, var*` the statistics used (batch, biased variance, in train mode; copies
    of the running ones in eval mode, empty in eval mode without `need_backward`).
    `allow_tf32` lets the CUDA kernels use TF32 GEMMs (ignored elsewhere).
    """
    return _forward_torch(x, w1, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2, training, eps, need_backward)


@dream_matrix_forward.register_fake
def _(x, w1, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2, training, eps, need_backward, allow_tf32):
    n, c, k1, k2 = x.shape[0], x.shape[1], w1.shape[0], w2.shape[0]
    if not need_backward:
        saved = []
    elif _runs_triton(x):
        saved = [x.new_empty(n, k1), x.new_empty(n, k1), x.new_empty(n, k1), x.new_empty(n, 2), x.new_empty(n, k2)]
    else:
        cov = x.new_empty(c, c) if training else x.new_empty(0)
        saved = [x.new_empty(n, k1), x.new_empty(n, 2), x.new_empty(n, k2), x.new_empty(n, k2), cov]
    if training or need_backward:
        stats = (x.new_empty(k1), x.new_empty(k1), x.new_empty(k2), x.new_empty(k2))
    else:
        stats = tuple(x.new_empty(0) for _ in range(4))
    return x.new_empty(n, k2), saved, *stats


@torch.library.custom_op("mambarec_fast::dream_matrix_backward", mutates_args=())
def dream_matrix_backward(
    gy: Tensor, x: Tensor, w1: Tensor, b1: Tensor, g1: Tensor, wcs: Tensor, w2: Tensor, g2: Tensor,
    y: Tensor, saved: list[Tensor], mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor,
    training: bool, eps: float, allow_tf32: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients `(dx, dw1, db1, dg1, dbe1, dwcs, dw2, db2, dg2, dbe2)` of `dream_matrix_forward`
    from `gy [N, Ch]`, its inputs and its outputs (shapes as there)."""
    return _backward_torch(gy, x, w1, b1, g1, wcs, w2, g2, y, saved, mean1, var1, mean2, var2, training, eps)


@dream_matrix_backward.register_fake
def _(gy, x, w1, b1, g1, wcs, w2, g2, y, saved, mean1, var1, mean2, var2, training, eps, allow_tf32):
    return tuple(torch.empty_like(t) for t in (x, w1, g1, g1, g1, wcs, w2, g2, g2, g2))


def _setup_context(ctx, inputs, output):
    x, w1, b1, g1, _be1, _rm1, _rv1, wcs, w2, _b2, g2, _be2, _rm2, _rv2, training, eps, _need, allow_tf32 = inputs
    y, saved, *stats = output
    ctx.save_for_backward(x, w1, b1, g1, wcs, w2, g2, y, *stats, *saved)
    ctx.training, ctx.eps, ctx.allow_tf32 = training, eps, allow_tf32
    # The saved-value outputs never get gradients: do not materialise [N, 5C] zeros for them.
    ctx.set_materialize_grads(False)


def _autograd_backward(ctx, gy, *_unused_grads):
    # Only y is differentiable; the other outputs are saved values, not results.
    if gy is None:
        return (None,) * 18
    x, w1, b1, g1, wcs, w2, g2, y, mean1, var1, mean2, var2, *saved = ctx.saved_tensors
    grads = dream_matrix_backward(
        gy.contiguous(), x, w1, b1, g1, wcs, w2, g2, y, saved, mean1, var1, mean2, var2,
        ctx.training, ctx.eps, ctx.allow_tf32,
    )
    dx, dw1, db1, dg1, dbe1, dwcs, dw2, db2, dg2, dbe2 = grads
    return dx, dw1, db1, dg1, dbe1, None, None, dwcs, dw2, db2, dg2, dbe2, None, None, None, None, None, None


dream_matrix_forward.register_autograd(_autograd_backward, setup_context=_setup_context)

if HAS_TRITON:
    from mambarec_fast.kernels import dream as _kernels

    @dream_matrix_forward.register_kernel("cuda")
    def _(x, w1, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2, training, eps, need_backward, allow_tf32):
        args = (x, w1, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2, training, eps, need_backward)
        if not _runs_triton(x):
            return _forward_torch(*args)
        y, *saved, mean1, var1, mean2, var2 = _kernels.matrix_forward(*args, allow_tf32)
        return y, saved if need_backward else [], mean1, var1, mean2, var2

    @dream_matrix_backward.register_kernel("cuda")
    def _(gy, x, w1, b1, g1, wcs, w2, g2, y, saved, mean1, var1, mean2, var2, training, eps, allow_tf32):
        if not _runs_triton(x):
            return _backward_torch(gy, x, w1, b1, g1, wcs, w2, g2, y, saved, mean1, var1, mean2, var2, training, eps)
        return _kernels.matrix_backward(gy, x, w1, g1, wcs, w2, g2, y, *saved, mean1, var1, mean2, var2, training, eps, allow_tf32)


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------
def _centre_tap(weight: Tensor) -> Tensor:
    """`[Co, Ci, kh, kw] -> [Co, Ci]`: the only tap a zero-padded ('same') conv applies to a 1x1 map."""
    return weight[:, :, weight.shape[2] // 2, weight.shape[3] // 2]


class DREAM(ReferenceDREAM):
    """Fast drop-in for `mambarec_fast.reference.DREAM(dim_in, dim_out, rate=1, bn_mom=0.1)`.

    Same submodules, parameters, buffers and state_dict names (the authors'), same outputs,
    gradients and running-statistic updates, for float16/bfloat16/float32/float64 inputs:
    `[N, dim_in]` takes the fused matrix path, `[B, S, dim_in]` and `[B, dim_in, H, W]` the fused
    general path (see the module docstring).

    `forward(x, running_stat_updates=1)`: in train mode every BatchNorm's running statistics get
    `running_stat_updates` momentum updates with this call's batch statistics (and
    `num_batches_tracked` grows by as much), the cost-free equivalent of calling the block that
    many times on the same input, as the authors do for their MMD term.
    `repeat_running_stats_update()` applies one more such update after the fact.
    `allow_tf32` (default False) lets the CUDA kernels use TF32 GEMMs (about 1e-3 relative).
    """

    def __init__(self, dim_in: int, dim_out: int, rate: int = 1, bn_mom: float = 0.1):
        super().__init__(dim_in, dim_out, rate, bn_mom)
        self.allow_tf32 = False
        self._last_batch_stats: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        self._pack_cache: tuple[tuple, tuple[Tensor, ...]] | None = None

    # The five branch BatchNorms in concat order, then conv_cat's.
    def _branch_convs(self):
        return (self.branch1[0], self.branch2[0], self.branch3[0], self.branch4[0], self.branch5_conv)

    def _branch_bns(self):
        return (self.branch1[1], self.branch2[1], self.branch3[1], self.branch4[1], self.branch5_bn)

    def _fused_ops_apply(self) -> bool:
        """The fused ops assume every BatchNorm follows the block's mode, with affine parameters,
        running statistics and one eps."""
        bns = (*self._branch_bns(), self.conv_cat[1])
        return all(
            bn.training == self.training and bn.affine and bn.running_mean is not None and bn.eps == bns[0].eps
            for bn in bns
        )

    def forward(self, x: Tensor, running_stat_updates: int = 1) -> Tensor:
        fmap, layout = to_feature_map(x, self.dim_in)  # the reference's checks: type, rank, channels, float
        if x.dtype not in _SUPPORTED_DTYPES or x.dtype != self.conv_cat[0].weight.dtype:
            raise TypeError(
                f"DREAM expects input of its parameters' dtype {self.conv_cat[0].weight.dtype} "
                f"(one of float16, bfloat16, float32, float64), got {x.dtype}"
            )
        if not isinstance(running_stat_updates, int) or running_stat_updates < 1:
            raise ValueError(f"running_stat_updates must be a positive int, got {running_stat_updates!r}")
        if fmap.shape[2] * fmap.shape[3] == 0:
            raise ValueError(f"DREAM needs a non-empty spatial size, got input shape {tuple(x.shape)}")
        if not self._fused_ops_apply():
            y = self._forward_reference(x)
        elif layout == "matrix":
            y = self._forward_matrix(x)
        else:
            y = self._forward_map(x, fmap)
        if self.training:  # an eval-mode call updates nothing, however often it is repeated
            for _ in range(running_stat_updates - 1):
                self.repeat_running_stats_update()
        return y

    def _needs_backward(self, x: Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in self.parameters()))

    def _forward_matrix(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] < 2:
            raise ValueError(
                f"DREAM in train mode needs more than 1 row for its BatchNorm batch statistics, "
                f"got input shape {tuple(x.shape)}"
            )
        need_backward = self._needs_backward(x)
        y, _saved, mean1, var1, mean2, var2 = dream_matrix_forward(
            x, *self._packed_parameters(not need_backward, matrix=True), self.training, self.conv_cat[1].eps,
            need_backward, self.allow_tf32,
        )
        if self.training:
            self._record_batch_stats(mean1, var1, mean2, var2, rows=x.shape[0], samples=x.shape[0])
        return y

    def _forward_map(self, x: Tensor, fmap: Tensor) -> Tensor:
        batch, _, height, width = fmap.shape
        if self.training and batch < 2:
            raise ValueError(
                f"DREAM in train mode needs more than 1 sample for branch 5's BatchNorm (over the pooled "
                f"[B, {self.dim_out}] features), got input shape {tuple(x.shape)}"
            )
        if batch == 0:  # eval mode: the reference's empty result, shapes and all
            return self._forward_reference(x)
        need_backward = self._needs_backward(x)
        # float16/bfloat16 maps compute in float32 (as ATen's BatchNorm does inside): their
        # statistics over B·H·W pixels would otherwise round at every step.
        compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        params = (t.to(compute) for t in self._packed_parameters(not need_backward, matrix=False))
        y, *_saved, mean1, var1, mean2, var2 = dream_map_forward(
            to_rows(fmap).to(compute), *params, batch, height, width,
            self.rate, self.training, self.conv_cat[1].eps, need_backward, self.allow_tf32,
        )
        if self.training:
            self._record_batch_stats(mean1, var1, mean2, var2, rows=y.shape[0], samples=batch)
        return as_map(y.to(x.dtype), batch, height, width).contiguous()

    def _record_batch_stats(self, mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor, rows: int, samples: int):
        """Keep the batch statistics (unbiased variances, as BatchNorm's running update uses) and
        apply the running update. Branches 1-4 and conv_cat normalise over `rows` (pixels);
        branch 5 over `samples` (its pooled features)."""
        unbias = torch.full_like(var1, rows / (rows - 1))
        unbias[4 * self.dim_out:] = samples / (samples - 1)
        self._last_batch_stats = (mean1.detach(), var1.detach() * unbias, mean2.detach(), var2.detach() * (rows / (rows - 1)))
        self.repeat_running_stats_update()

    def _packed_parameters(self, cacheable: bool, matrix: bool) -> tuple[Tensor, ...]:
        """The op's parameter arguments, built with differentiable torch ops:
        `dream_matrix_forward`'s `(w1, b1, g1, be1, rm1, rv1, wcs, w2, b2, g2, be2, rm2, rv2)` (w1:
        the five centre taps) when `matrix`, else `dream_map_forward`'s
        `(wb1, wb2, wb3, wb4, w5, b1, ..., rv2)` (the five conv weights as they are). Without
        autograd the result is cached until a source tensor moves or changes (its version
        counter), so that an eval-mode forward is the op alone (one kernel launch on CUDA for a matrix)."""
        convs, bns, cat_conv, cat_bn = self._branch_convs(), self._branch_bns(), self.conv_cat[0], self.conv_cat[1]
        sources = (*self.parameters(), *self.buffers())
        key = (matrix, tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)) if cacheable else None
        if key is not None and self._pack_cache is not None and self._pack_cache[0] == key:
            return self._pack_cache[1]
        if matrix:
            weights = (torch.cat([_centre_tap(conv.weight) for conv in convs]),)
        else:
            weights = tuple(conv.weight for conv in convs)
        packed = (
            *weights,
            torch.cat([conv.bias for conv in convs]),
            torch.cat([bn.weight for bn in bns]),
            torch.cat([bn.bias for bn in bns]),
            torch.cat([bn.running_mean for bn in bns]),
            torch.cat([bn.running_var for bn in bns]),
            torch.cat((self.fusion.channel.fc.weight.flatten(1), self.fusion.spatial.Conv1x1.weight.flatten(1))),
            cat_conv.weight.flatten(1), cat_conv.bias, cat_bn.weight, cat_bn.bias, cat_bn.running_mean, cat_bn.running_var,
        )
        self._pack_cache = (key, packed) if key is not None else None
        return packed

    def _forward_reference(self, x: Tensor) -> Tensor:
        """The reference computation; in train mode it also records each BatchNorm's batch statistics."""
        bns = (*self._branch_bns(), self.conv_cat[1])
        recorded: dict[int, tuple[Tensor, Tensor]] = {}

        def record(index):
            def hook(_module, args):
                with torch.no_grad():
                    var, mean = torch.var_mean(args[0], dim=(0, 2, 3), correction=1)
                recorded[index] = (mean, var)

            return hook

        hooks = [bn.register_forward_pre_hook(record(i)) for i, bn in enumerate(bns) if bn.training]
        try:
            y = super().forward(x)
        finally:
            for hook in hooks:
                hook.remove()
        if self.training and len(recorded) == len(bns):
            self._last_batch_stats = (
                torch.cat([recorded[i][0] for i in range(5)]),
                torch.cat([recorded[i][1] for i in range(5)]),
                *recorded[5],
            )
        return y

    @torch.no_grad()
    def repeat_running_stats_update(self) -> None:
        """One more BatchNorm running-statistic update (momentum rule, `num_batches_tracked += 1`)
        with the batch statistics of the last train-mode forward, as a second identical call would."""
        if self._last_batch_stats is None:
            raise RuntimeError("repeat_running_stats_update needs a train-mode forward first")
        mean1, var1, mean2, var2 = self._last_batch_stats
        bns = (*self._branch_bns(), self.conv_cat[1])
        means = [*mean1.split(self.dim_out), mean2]
        variances = [*var1.split(self.dim_out), var2]
        kept = [i for i, bn in enumerate(bns) if bn.running_mean is not None]
        bns = [bns[i] for i in kept]
        # foreach ops: a handful of launches for all six BatchNorms instead of ~60 on a GPU.
        torch._foreach_add_([bn.num_batches_tracked for bn in bns], 1)
        factors = [1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum for bn in bns]
        keep = [1.0 - f for f in factors]
        for running, batch in (([bn.running_mean for bn in bns], [means[i] for i in kept]),
                               ([bn.running_var for bn in bns], [variances[i] for i in kept])):
            # nn.BatchNorm2d's rule: momentum * batch + (1 - momentum) * running.
            torch._foreach_mul_(running, keep)
            torch._foreach_add_(running, torch._foreach_mul(batch, factors))
