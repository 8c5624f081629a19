"""Two Linears with nothing between them, reassociated: `(x W1^T + b1) W2^T + b2`.

The image branch maps every item's feature row through `image_reduce` (D -> D/r) then `image_trs`
(D/r -> d) at every step. As one rank-d map, `x (W2 W1)^T + (W2 b1 + b2)`, it costs
`I·D·d + d·(D/r)·D` multiply-adds instead of `I·D·(D/r) + I·(D/r)·d` (about 7x fewer on Baby), with
the same parameters. The backward is reassociated the same way (G = dY^T x is `[d, D]`):
    dx  = dY (W2 W1)
    dW1 = W2^T G                 db1 = W2^T (dY^T 1)
    dW2 = G W1^T + (dY^T 1) b1^T   db2 = dY^T 1
Exact up to floating-point rounding (the sums are taken in another order).
"""
from __future__ import annotations

import torch


class _LinearChain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        weight = w2 @ w1
        bias = w2 @ b1 + b2
        ctx.save_for_backward(x, w1, b1, w2, weight)
        return torch.addmm(bias, x, weight.T)

    @staticmethod
    def backward(ctx, grad_y):
        x, w1, b1, w2, weight = ctx.saved_tensors
        grad_x = grad_y @ weight if ctx.needs_input_grad[0] else None
        col_sum = grad_y.sum(dim=0)
        g = grad_y.T @ x
        grad_w1 = w2.T @ g
        grad_b1 = w2.T @ col_sum
        grad_w2 = torch.addr(g @ w1.T, col_sum, b1)
        return grad_x, grad_w1, grad_b1, grad_w2, col_sum


def linear_chain(x: torch.Tensor, first: torch.nn.Linear, second: torch.nn.Linear) -> torch.Tensor:
    """`second(first(x))` for `x [N, D]`, computed as one reassociated map (same result and grads)."""
    if x.dim() != 2 or x.shape[1] != first.in_features:
        raise ValueError(f"linear_chain expects x of shape [N, {first.in_features}], got {tuple(x.shape)}")
    if second.in_features != first.out_features:
        raise ValueError(f"cannot chain Linear({first.in_features}->{first.out_features}) into Linear({second.in_features}->...)")
    if first.bias is None or second.bias is None:
        raise ValueError("linear_chain expects both Linears to have a bias (as image_reduce and image_trs do)")
    return _LinearChain.apply(x, first.weight, first.bias, second.weight, second.bias)
