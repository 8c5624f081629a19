"""Graph propagation: the reference (`torch.sparse.mm`) and the fast ops (`_C` kernels, torch.sparse
fallback) against dense `A @ x` and the dense mean of powers, forward and backward.

Tolerances: float64 1e-12; float32 1e-5 relative, and for the kernels against dense products an
absolute term of 1e-6 * (|A| @ |x|) per element (a few ulps of the sum of absolute terms: a row
of 10,000 float32 products legitimately differs from the float64 sum by ~1e-4).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mambarec_fast import reference
from mambarec_fast.ops import propagation as prop
from mambarec_fast.ops.graph import Graph, csr_transpose
from mambarec_fast.ops.propagation import propagate, spmm

TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}
needs_c = pytest.mark.skipif("cpu" not in prop.KERNEL_DEVICES, reason="mambarec_fast._C not built")


def random_dense(n_rows, n_cols, density=0.3, dtype=torch.float64, seed=0, empty_rows=(), heavy_row=None):
    """A dense matrix with random sparsity, some all-zero rows, optionally one row with many entries."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_rows, n_cols, generator=gen) < density
    for r in empty_rows:
        mask[r] = False
    if heavy_row is not None:
        mask[heavy_row] = True
    return torch.where(mask, torch.randn(n_rows, n_cols, generator=gen, dtype=torch.float64), 0.0).to(dtype)


def dense_mean_of_powers(a: torch.Tensor, x: torch.Tensor, layers: int) -> torch.Tensor:
    terms, h = [x], x
    for _ in range(layers):
        h = a @ h
        terms.append(h)
    return sum(terms) / (layers + 1)


def assert_close_to_dense(actual: torch.Tensor, a: torch.Tensor, x: torch.Tensor) -> None:
    """`actual` ~ `a @ x` computed in float64, within the dtype's tolerance (see the module docstring)."""
    expected = a.double() @ x.double()
    if actual.dtype == torch.float64:
        torch.testing.assert_close(actual, expected, **TOL[torch.float64])
        return
    bound = 1e-5 * expected.abs() + 1e-6 * (a.double().abs() @ x.double().abs()) + 1e-30
    worst = ((actual.double() - expected).abs() / bound).max().item() if actual.numel() else 0.0
    assert worst <= 1.0, f"float32 result off by {worst:.2f}x the tolerance"


def randn(*shape, dtype=torch.float64, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- reference (SPEC §5) against a dense computation ----------------------------------------------
@pytest.mark.parametrize("coalesced", [True, False])
def test_reference_spmm_and_propagate_match_dense(coalesced):
    a = random_dense(9, 9, empty_rows=(2,))
    coo = a.to_sparse()
    if not coalesced:  # split every entry in two halves: torch.sparse.mm must sum duplicates
        idx, val = coo.indices(), coo.values()
        coo = torch.sparse_coo_tensor(torch.cat([idx, idx], 1), torch.cat([val / 2, val / 2]), a.shape,
                                      check_invariants=True)
    x = randn(9, 5)
    torch.testing.assert_close(reference.spmm(coo, x), a @ x, **TOL[torch.float64])
    for layers in (0, 1, 4):
        torch.testing.assert_close(reference.propagate(coo, x, layers), dense_mean_of_powers(a, x, layers),
                                   **TOL[torch.float64])  # fmt: skip
    with pytest.raises(ValueError, match="layers"):
        reference.propagate(coo, x, -1)


def test_reference_propagate_gradient_matches_dense():
    a = random_dense(7, 7)
    x = randn(7, 3).requires_grad_()
    x_dense = x.detach().clone().requires_grad_()
    reference.propagate(a.to_sparse(), x, 3).sum().backward()
    dense_mean_of_powers(a, x_dense, 3).sum().backward()
    torch.testing.assert_close(x.grad, x_dense.grad, **TOL[torch.float64])


# ---- Graph construction -------------------------------------------------------------------------
def test_from_edges_sums_duplicates_and_caches_transpose():
    rows, cols, vals = [0, 2, 0, 1, 2], [1, 0, 1, 3, 3], [1.0, 2.0, 3.0, 4.0, 5.0]
    g = Graph.from_edges(rows, cols, vals, (3, 4), dtype=torch.float64)
    expected = torch.zeros(3, 4, dtype=torch.float64)
    for r, c, v in zip(rows, cols, vals):
        expected[r, c] += v
    assert g.nnz == 4 and g.col.dtype == torch.int32 and g.rowptr.dtype == torch.int32
    torch.testing.assert_close(g.to_torch_sparse().to_dense(), expected)
    torch.testing.assert_close(g.t().to_torch_sparse().to_dense(), expected.T)
    torch.testing.assert_close(g.torch_csr(transpose=True).to_dense(), expected.T)
    assert g.t().t().shape == (3, 4)


def test_from_scipy_and_from_torch_agree():
    a = random_dense(6, 8, seed=3)
    g_scipy = Graph.from_scipy(sp.csr_matrix(a.numpy()), dtype=torch.float32)
    assert g_scipy.dtype == torch.float32
    torch.testing.assert_close(g_scipy.to_torch_sparse().to_dense(), a.float())
    for sparse in (a.to_sparse(), a.to_sparse_csr()):
        g = Graph.from_torch(sparse)
        assert g.dtype == torch.float64 and g.shape == (6, 8)
        torch.testing.assert_close(g.to_torch_sparse().to_dense(), a)
    assert Graph.from_edges(np.array([0, 1]), np.array([1, 0])).to(dtype=torch.float64).dtype == torch.float64


def test_csr_transpose_matches_dense_and_keeps_rows_sorted():
    g = Graph.from_torch(random_dense(5, 7, seed=4).to_sparse())
    rowptr_t, col_t, val_t = csr_transpose(g.rowptr, g.col, g.val, 7)
    t = Graph(rowptr_t, col_t, val_t, (7, 5))
    torch.testing.assert_close(t.to_torch_sparse().to_dense(), g.to_torch_sparse().to_dense().T)
    for r in range(7):
        row_cols = col_t[rowptr_t[r]:rowptr_t[r + 1]]
        assert torch.all(row_cols[1:] > row_cols[:-1])


def test_symmetric_graph_reuses_itself_and_is_checked():
    a = random_dense(6, 6, seed=5)
    g = Graph.from_torch((a + a.T).to_sparse(), symmetric=True)
    assert g.symmetric and g.t() is g and g.col_t is g.col
    with pytest.raises(ValueError, match="differs from its transpose"):
        Graph.from_torch(a.to_sparse(), symmetric=True)
    with pytest.raises(ValueError, match="square"):
        Graph.from_torch(random_dense(3, 4).to_sparse(), symmetric=True)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rows=[0, 5], cols=[0, 1], shape=(3, 3)), ValueError, "rows must lie"),
        (dict(rows=[0, 1], cols=[-1, 1], shape=(3, 3)), ValueError, "cols must lie"),
        (dict(rows=[0, 1], cols=[0]), ValueError, "equal lengths"),
        (dict(rows=[0.0, 1.0], cols=[0, 1]), TypeError, "integer"),
        (dict(rows=[0, 1], cols=[0, 1], vals=[1, 2]), TypeError, "floating"),
        (dict(rows=[0, 1], cols=[0, 1], vals=[1.0]), ValueError, "one value per edge"),
        (dict(rows=[[0, 1]], cols=[[0, 1]]), ValueError, "1-D"),
        (dict(rows=[0], cols=[0], dtype=torch.float16), TypeError, "float32 or float64"),
    ],
)
def test_from_edges_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        Graph.from_edges(**kwargs)


def test_from_torch_and_scipy_reject_dense():
    with pytest.raises(TypeError, match="sparse"):
        Graph.from_torch(torch.eye(3))
    with pytest.raises(TypeError, match="scipy"):
        Graph.from_scipy(np.eye(3))


# ---- compiled kernels against dense ---------------------------------------------------------------
CASES = {
    "random_with_empty_rows": dict(n_rows=23, n_cols=17, empty_rows=(0, 5, 22)),
    "single_row": dict(n_rows=1, n_cols=9),
    "skewed_10000": dict(n_rows=5, n_cols=10_050, density=0.001, heavy_row=3),
    "all_empty": dict(n_rows=4, n_cols=6, density=0.0),
}


@needs_c
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d", [1, 3, 64, 130])
@pytest.mark.parametrize("case", list(CASES))
def test_spmm_matches_dense(case, d, dtype):
    a = random_dense(**CASES[case], dtype=dtype)
    g = Graph.from_torch(a.to_sparse())
    x = randn(a.shape[1], d, dtype=dtype)
    assert_close_to_dense(spmm(g, x), a, x)
    if case == "skewed_10000":
        assert int(g.rowptr.diff().max()) >= 10_000


@needs_c
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_direct_op_int32_and_int64_indices(index_dtype):
    a = random_dense(11, 11, seed=6)
    csr = a.to_sparse_csr()
    x = randn(11, 4)
    rowptr, col = csr.crow_indices().to(index_dtype), csr.col_indices().to(index_dtype)
    torch.testing.assert_close(torch.ops.mambarec_fast.spmm_csr(rowptr, col, csr.values(), x), a @ x)
    out = torch.ops.mambarec_fast.propagate_csr(rowptr, col, csr.values(), x, 3)
    torch.testing.assert_close(out, dense_mean_of_powers(a, x, 3))


@needs_c
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layers", [0, 1, 2, 4])
def test_propagate_matches_layer_by_layer_reference(layers, dtype):
    a = random_dense(40, 40, density=0.15, seed=7, empty_rows=(3,)) / 3
    g = Graph.from_torch(a.to_sparse().to(dtype))
    x = randn(40, 64, dtype=dtype)
    expected = reference.propagate(g.to_torch_sparse(), x, layers)
    torch.testing.assert_close(propagate(g, x, layers), expected, **TOL[dtype])


@needs_c
def test_non_contiguous_and_empty_inputs():
    a = random_dense(8, 8, seed=8)
    g = Graph.from_torch(a.to_sparse())
    x = randn(5, 8).T  # [8, 5], not contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(spmm(g, x), a @ x)
    torch.testing.assert_close(propagate(g, x, 2), dense_mean_of_powers(a, x, 2))
    assert spmm(g, torch.empty(8, 0, dtype=torch.float64)).shape == (8, 0)
    empty = Graph.from_edges([], [], torch.empty(0, dtype=torch.float64), (0, 0))
    assert propagate(empty, torch.empty(0, 4, dtype=torch.float64), 3).shape == (0, 4)


# ---- autograd ---------------------------------------------------------------------------------------
@needs_c
@pytest.mark.parametrize("symmetric", [False, True])
def test_gradcheck_spmm_and_propagate(symmetric):
    a = random_dense(9, 9, seed=9, empty_rows=(4,))
    g = Graph.from_torch((a + a.T if symmetric else a).to_sparse(), symmetric=symmetric)
    x = randn(9, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: spmm(g, v), (x,))
    assert torch.autograd.gradcheck(lambda v: propagate(g, v, 3), (x,))
    assert torch.autograd.gradgradcheck(lambda v: propagate(g, v, 2), (x,))


@needs_c
def test_gradcheck_rectangular_and_direct_op_without_transpose():
    a = random_dense(5, 8, seed=10)
    g = Graph.from_torch(a.to_sparse())
    x = randn(8, 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: spmm(g, v), (x,))
    # A direct call without the transposed CSR: the backward builds it.
    assert torch.autograd.gradcheck(lambda v: torch.ops.mambarec_fast.spmm_csr(g.rowptr, g.col, g.val, v), (x,))


@needs_c
def test_values_requiring_grad_are_rejected():
    g = Graph.from_torch(random_dense(4, 4).to_sparse())
    val = g.val.clone().requires_grad_()
    with pytest.raises(ValueError, match="must not require grad"):
        torch.ops.mambarec_fast.spmm_csr(g.rowptr, g.col, val, randn(4, 2).requires_grad_())


@needs_c
def test_results_are_bitwise_deterministic_across_runs_and_thread_counts():
    a = random_dense(300, 300, density=0.05, seed=11, heavy_row=7)
    g = Graph.from_torch(a.to_sparse().float())
    x = randn(300, 64, dtype=torch.float32).requires_grad_()
    grad = randn(300, 64, dtype=torch.float32, seed=2)

    def run():
        x.grad = None
        y = propagate(g, x, 4)
        y.backward(grad)
        return y.detach().clone(), x.grad.clone()

    threads = torch.get_num_threads()
    first, second = run(), run()
    try:
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
    for out in (second, single):
        assert torch.equal(first[0], out[0]) and torch.equal(first[1], out[1])


@needs_c
def test_opcheck():
    g = Graph.from_torch(random_dense(7, 7, seed=12).to_sparse())
    x = randn(7, 5).requires_grad_()
    transpose = (g.rowptr_t, g.col_t, g.val_t)
    torch.library.opcheck(torch.ops.mambarec_fast.spmm_csr.default, (g.rowptr, g.col, g.val, x, *transpose))
    torch.library.opcheck(torch.ops.mambarec_fast.propagate_csr.default, (g.rowptr, g.col, g.val, x, 3, *transpose))
    torch.library.opcheck(torch.ops.mambarec_fast.spmm_csr.default, (g.rowptr, g.col, g.val, x))


@needs_c
def test_torch_compile_traces_the_ops():
    g = Graph.from_torch(random_dense(10, 10, seed=13).to_sparse())

    def fn(v):
        return propagate(g, spmm(g, v), 2).sum()

    x = randn(10, 4).requires_grad_()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    eager_x = x.detach().clone().requires_grad_()
    out, expected = compiled(x), fn(eager_x)
    out.backward()
    expected.backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x.grad, eager_x.grad)


# ---- bad inputs -------------------------------------------------------------------------------------
def _csr(n=4, seed=14):
    g = Graph.from_torch(random_dense(n, n, seed=seed, density=0.5).to_sparse())
    return g.rowptr, g.col, g.val, randn(n, 3)


@needs_c
@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda rp, c, v, x: (rp.float(), c, v, x), TypeError, "rowptr must be int32 or int64"),
        (lambda rp, c, v, x: (rp, c.long(), v, x), TypeError, "col must have rowptr's dtype"),
        (lambda rp, c, v, x: (rp, c, v.float(), x), TypeError, "must match x dtype"),
        (lambda rp, c, v, x: (rp, c, v, x.int()), TypeError, "x must be float32 or float64"),
        (lambda rp, c, v, x: (rp[:0], c, v, x), ValueError, "n_rows \\+ 1 >= 1"),
        (lambda rp, c, v, x: (rp, c, v[:-1], x), ValueError, "equal length"),
        (lambda rp, c, v, x: (rp, c, v, x[0]), ValueError, "2-D"),
        (lambda rp, c, v, x: (rp.flip(0), c, v, x), ValueError, "rowptr\\[0\\] must be 0"),
        (lambda rp, c, v, x: (rp[:-1], c, v, x), ValueError, "rowptr\\[-1\\] must equal nnz"),
        (lambda rp, c, v, x: (rp, c + 100, v, x), ValueError, "column indices must lie in"),
        (lambda rp, c, v, x: (rp, c - 100, v, x), ValueError, "column indices must lie in"),
        (lambda rp, c, v, x: (rp, c, v, x[:2]), ValueError, "column indices must lie in"),
    ],
)
def test_direct_op_rejects_bad_inputs(mutate, error, match):
    rowptr, col, val, x = mutate(*_csr())
    with pytest.raises(error, match=match):
        torch.ops.mambarec_fast.spmm_csr(rowptr, col, val, x)


@needs_c
def test_direct_op_rejects_non_monotone_rowptr_and_bad_propagate_args():
    rowptr, col, val, x = _csr()
    bad = torch.tensor([0, 2, 1, 3], dtype=torch.int32)  # starts at 0, ends at nnz, goes down
    with pytest.raises(ValueError, match="non-decreasing"):
        torch.ops.mambarec_fast.spmm_csr(bad, torch.tensor([0, 1, 2], dtype=torch.int32), val[:3], x)
    with pytest.raises(ValueError, match="layers must be >= 0"):
        torch.ops.mambarec_fast.propagate_csr(rowptr, col, val, x, -1)
    with pytest.raises(ValueError, match="square"):
        torch.ops.mambarec_fast.propagate_csr(rowptr[:-1] * 0, col[:0], val[:0], x, 2)
    with pytest.raises(ValueError, match="given together"):
        torch.ops.mambarec_fast.spmm_csr(rowptr, col, val, x, rowptr, None, None)
    with pytest.raises(ValueError, match="transposed graph"):
        torch.ops.mambarec_fast.spmm_csr(rowptr, col, val, x, rowptr[:-1], col, val)


def test_public_api_rejects_bad_inputs():
    g = Graph.from_torch(random_dense(4, 5).to_sparse())
    with pytest.raises(TypeError, match="mambarec_fast.Graph"):
        spmm(torch.eye(4).to_sparse(), randn(4, 2))
    with pytest.raises(TypeError, match="dtype"):
        spmm(g, randn(5, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="5 rows"):
        spmm(g, randn(4, 2))
    with pytest.raises(ValueError, match="2-D"):
        spmm(g, randn(5))
    with pytest.raises(ValueError, match="square"):
        propagate(g, randn(5, 2), 2)
    for layers in (-1, True, 1.5):
        with pytest.raises(ValueError, match="layers"):
            propagate(Graph.from_torch(random_dense(4, 4).to_sparse()), randn(4, 2), layers)


# ---- torch.sparse fallback ------------------------------------------------------------------------
def test_fallback_matches_dense_with_one_warning(monkeypatch):
    monkeypatch.setattr(prop, "KERNEL_DEVICES", frozenset())
    monkeypatch.setattr(prop, "_warned", False)
    a = random_dense(12, 12, seed=15, empty_rows=(1,))
    g = Graph.from_torch(a.to_sparse())
    x = randn(12, 3).requires_grad_()
    with pytest.warns(RuntimeWarning, match="falls back to torch.sparse"):
        out = propagate(g, x, 3)
    torch.testing.assert_close(out, dense_mean_of_powers(a, x.detach(), 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        torch.testing.assert_close(spmm(g, x), a @ x)
        assert torch.autograd.gradcheck(lambda v: propagate(g, v, 2), (x,))
        assert torch.autograd.gradcheck(lambda v: spmm(g, v), (x,))


# ---- GPU (run where a CUDA device and the CUDA kernels exist) --------------------------------------
@pytest.mark.gpu
def test_gpu_kernels_registered():
    assert "cuda" in prop.KERNEL_DEVICES, "mambarec_fast._C was built without CUDA kernels (rebuild with FORCE_CUDA=1)"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d", [1, 3, 64, 130])
@pytest.mark.parametrize("case", list(CASES))
def test_gpu_spmm_and_propagate_match_dense(case, d, dtype):
    a = random_dense(**CASES[case], dtype=dtype)
    g = Graph.from_torch(a.to_sparse()).to("cuda")
    x = randn(a.shape[1], d, dtype=dtype)
    assert_close_to_dense(spmm(g, x.cuda()).cpu(), a, x)
    if a.shape[0] == a.shape[1]:
        torch.testing.assert_close(propagate(g, x.cuda(), 3).cpu(), dense_mean_of_powers(a, x, 3), **TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, offset", [(torch.float64, 1), (torch.float32, 1), (torch.float32, 2)])
def test_gpu_misaligned_and_non_contiguous_rows(dtype, offset):
    a = random_dense(33, 33, seed=16, dtype=dtype)
    g = Graph.from_torch(a.to_sparse()).to("cuda")
    base = randn(33 * 65 + offset, dtype=dtype).cuda()
    # Contiguous but off the 16-byte boundary: the kernels must fall back to narrower packs.
    misaligned = base[offset:offset + 33 * 64].view(33, 64)
    strided = base[offset:].view(33, 65)[:, :64]
    for x in (misaligned, strided):
        assert_close_to_dense(spmm(g, x).cpu(), a, x.cpu())
        expected = dense_mean_of_powers(a.double(), x.cpu().double(), 2).to(dtype)
        torch.testing.assert_close(propagate(g, x, 2).cpu(), expected, **TOL[dtype])


@pytest.mark.gpu
def test_gpu_gradcheck_determinism_and_cpu_agreement():
    a = random_dense(200, 200, density=0.05, seed=17, heavy_row=3)
    g = Graph.from_torch(a.to_sparse())
    gc = g.to("cuda")
    x = randn(9, 9).requires_grad_()
    small = Graph.from_torch(random_dense(9, 9, seed=18).to_sparse()).to("cuda")
    assert torch.autograd.gradcheck(lambda v: propagate(small, v, 3), (x.cuda().detach().requires_grad_(),))
    xf = randn(200, 64, dtype=torch.float32).cuda()
    gf = gc.to(dtype=torch.float32)
    first, second = propagate(gf, xf, 4), propagate(gf, xf, 4)
    assert torch.equal(first, second)
    torch.testing.assert_close(first.cpu(), propagate(g.to(dtype=torch.float32), xf.cpu(), 4), **TOL[torch.float32])


@pytest.mark.gpu
def test_gpu_opcheck_and_bad_inputs():
    g = Graph.from_torch(random_dense(7, 7, seed=19).to_sparse()).to("cuda")
    x = randn(7, 5).cuda().requires_grad_()
    torch.library.opcheck(torch.ops.mambarec_fast.propagate_csr.default,
                          (g.rowptr, g.col, g.val, x, 2, g.rowptr_t, g.col_t, g.val_t))  # fmt: skip
    with pytest.raises(ValueError, match="column indices must lie in"):
        torch.ops.mambarec_fast.spmm_csr(g.rowptr, g.col + 50, g.val, x)
    with pytest.raises(ValueError, match="device"):
        torch.ops.mambarec_fast.spmm_csr(g.rowptr.cpu(), g.col, g.val, x)
