"""Graph propagation over a fixed `Graph`: `spmm(graph, x) = A x` and `propagate(graph, x, L)`
`= mean(x, A x, ..., A^L x)` (SPEC §5 steps 3-4), with autograd, for fp32 and fp64.

Paths, chosen here and nowhere else:
- the compiled ops `torch.ops.mambarec_fast.spmm_csr` / `propagate_csr` (csrc/; CPU kernels, and
  CUDA kernels when the extension was built with CUDA). Deterministic: no atomics, every output row
  has one owner that sums its entries in CSR order. Their autograd and fake (meta) kernels are
  registered below, so `torch.compile` traces through them;
- otherwise torch's own CSR `sparse.mm` with the graph's cached transpose for the backward, after
  one warning that says why the compiled ops are unavailable.

Backward (both paths): `y = A x` gives `dx = A^T dy`; `y = (1/(L+1)) sum_l A^l x` gives
`dx = (1/(L+1)) sum_l (A^T)^l dy`, i.e. the same op over the transposed graph (the graph itself
when symmetric). The graph's values get no gradient.
"""
from __future__ import annotations

import numbers
import warnings

import torch

from .graph import Graph, csr_transpose

try:
    from .. import _C  # noqa: F401  (importing it registers torch.ops.mambarec_fast.*)

    _C_ERROR: str | None = None
except ImportError as exc:
    _C_ERROR = f"mambarec_fast._C could not be imported ({exc})"

#: Device types that have compiled kernels ({"cpu"} or {"cpu", "cuda"}; empty without `_C`).
KERNEL_DEVICES = frozenset(
    device
    for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
    if _C_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("mambarec_fast::spmm_csr", key)
)
_warned = False


def _use_kernels(device: torch.device) -> bool:
    global _warned
    if device.type in KERNEL_DEVICES:
        return True
    if not _warned:
        _warned = True
        reason = _C_ERROR or f"mambarec_fast._C was built without {device.type.upper()} kernels"
        warnings.warn(f"{reason}; graph propagation falls back to torch.sparse (slower)", RuntimeWarning, stacklevel=3)
    return False


def _check(graph: Graph, x: torch.Tensor, square: bool) -> None:
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a mambarec_fast.Graph, got {type(graph).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor [n_cols, d], got {getattr(x, 'shape', type(x).__name__)}")
    if x.dtype != graph.dtype:
        raise TypeError(f"x dtype {x.dtype} must match the graph's values ({graph.dtype}); use graph.to(dtype=...)")
    if x.device != graph.device:
        raise ValueError(f"x is on {x.device} but the graph is on {graph.device}; use graph.to(device)")
    if square and graph.shape[0] != graph.shape[1]:
        raise ValueError(f"propagate needs a square graph, got shape {graph.shape}")
    if x.shape[0] != graph.shape[1]:
        raise ValueError(f"x must have {graph.shape[1]} rows (the graph's columns), got shape {tuple(x.shape)}")


def spmm(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """`A x`: graph `[n_rows, n_cols]`, x `[n_cols, d]` of the graph's dtype and device -> `[n_rows, d]`."""
    _check(graph, x, square=False)
    if _use_kernels(x.device):
        return torch.ops.mambarec_fast.spmm_csr(
            graph.rowptr, graph.col, graph.val, x, graph.rowptr_t, graph.col_t, graph.val_t, validate=False
        )
    return _TorchCsrPropagation.apply(graph, x, None)


def propagate(graph: Graph, x: torch.Tensor, layers: int) -> torch.Tensor:
    """`mean(x, A x, ..., A^L x)` for a square graph `[n, n]` and x `[n, d]`, L = `layers` >= 0,
    computed in Horner form without storing the layers (like `mambarec_fast.reference.propagate`)."""
    if isinstance(layers, bool) or not isinstance(layers, numbers.Integral) or layers < 0:
        raise ValueError(f"layers must be an int >= 0, got {layers!r}")
    layers = int(layers)
    _check(graph, x, square=True)
    if _use_kernels(x.device):
        return torch.ops.mambarec_fast.propagate_csr(
            graph.rowptr, graph.col, graph.val, x, layers, graph.rowptr_t, graph.col_t, graph.val_t, validate=False
        )
    return _TorchCsrPropagation.apply(graph, x, layers)


# ---- fallback: torch.sparse CSR products --------------------------------------------------------
def _torch_csr_apply(matrix: torch.Tensor, x: torch.Tensor, layers: int | None) -> torch.Tensor:
    """`matrix @ x` (layers None) or the Horner-form mean of `x .. matrix^L x`, through torch.sparse."""
    if layers is None:
        return torch.sparse.mm(matrix, x)
    h = x
    for _ in range(layers):
        h = x + torch.sparse.mm(matrix, h)
    return h / (layers + 1)


class _TorchCsrPropagation(torch.autograd.Function):
    """`spmm` (layers None) or `propagate` through torch.sparse, the backward over the cached `A^T`."""

    @staticmethod
    def forward(ctx, graph: Graph, x: torch.Tensor, layers: int | None) -> torch.Tensor:
        ctx.graph, ctx.layers = graph, layers
        return _torch_csr_apply(graph.torch_csr(), x, layers)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, _TorchCsrPropagation.apply(ctx.graph.t(), grad, ctx.layers), None


# ---- torch.library registrations of the compiled ops: fake kernels and autograd -----------------
def _spmm_fake(rowptr, col, val, x, rowptr_t=None, col_t=None, val_t=None, validate=True):
    return x.new_empty(rowptr.shape[0] - 1, x.shape[1])


def _propagate_fake(rowptr, col, val, x, layers, rowptr_t=None, col_t=None, val_t=None, validate=True):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output) -> None:
    rowptr, col, val, x = inputs[:4]
    rowptr_t, col_t, val_t = inputs[-4:-1]
    if val.requires_grad or (val_t is not None and val_t.requires_grad):
        raise ValueError("graph values must not require grad: the propagation ops do not differentiate them")
    ctx.layers = inputs[4] if len(inputs) == 9 else None
    ctx.n_cols, ctx.validate = x.shape[0], inputs[-1]
    ctx.save_for_backward(rowptr, col, val, rowptr_t, col_t, val_t)


def _backward(ctx, grad):
    """dx = A^T grad (spmm) or the mean of grad, A^T grad, ..., (A^T)^L grad (propagate)."""
    rowptr, col, val, rowptr_t, col_t, val_t = ctx.saved_tensors
    if rowptr_t is None:  # a direct call without the transpose: build it (Graph always caches it)
        rowptr_t, col_t, val_t = csr_transpose(rowptr, col, val, ctx.n_cols)
    dx = None
    if ctx.needs_input_grad[3]:
        if ctx.layers is None:
            dx = torch.ops.mambarec_fast.spmm_csr(rowptr_t, col_t, val_t, grad, rowptr, col, val, validate=ctx.validate)
        else:
            dx = torch.ops.mambarec_fast.propagate_csr(
                rowptr_t, col_t, val_t, grad, ctx.layers, rowptr, col, val, validate=ctx.validate
            )
    n_inputs = 8 if ctx.layers is None else 9
    return (None, None, None, dx) + (None,) * (n_inputs - 4)


if _C_ERROR is None:
    torch.library.register_fake("mambarec_fast::spmm_csr")(_spmm_fake)
    torch.library.register_fake("mambarec_fast::propagate_csr")(_propagate_fake)
    torch.library.register_autograd("mambarec_fast::spmm_csr", _backward, setup_context=_setup_context)
    torch.library.register_autograd("mambarec_fast::propagate_csr", _backward, setup_context=_setup_context)
