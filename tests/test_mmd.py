"""MMD² (SPEC §6): the reference against a float64 double loop, the fast op (blocked CPU path,
Triton kernels under the interpreter, CUDA when present) against float64 brute force.

Tolerances (relative; gradients per tensor relative to its largest entry, rows of zeros apart,
their gradient being `g / 1e-12` as `F.normalize` gives): float64 CPU path 1e-10; fp32 1e-5;
fp16 2e-3 (interpreter) and 5e-3 (CUDA, larger n); bf16 2e-2 (CPU path; CUDA rounds `W` and `b̂`
to bf16 before `W·b̂`, for which a float64 emulation gives at most 6e-3).
"""
import math

import pytest
import torch
import torch.nn.functional as F

import mambarec_fast.ops.mmd as ops_mmd
from mambarec_fast.ops.mmd import EPS, MMDLoss, mmd
from mambarec_fast.reference import mmd_loss


# ----------------------------------------------------------------------------------------------
# Independent statements of the math
# ----------------------------------------------------------------------------------------------
def _double_loop(x, y, sigma):
    """SPEC §6 literally, in Python floats: normalise, then three double sums of exp(−‖a−b‖²/2σ²)."""

    def unit(rows):
        out = []
        for r in rows:
            norm = math.sqrt(sum(v * v for v in r))
            out.append([v / max(norm, 1e-12) for v in r])
        return out

    def mean_k(a, b):
        total = 0.0
        for p in a:
            for q in b:
                total += math.exp(-sum((u - v) ** 2 for u, v in zip(p, q)) / (2 * sigma**2))
        return total / (len(a) * len(b))

    xs, ys = unit(x.tolist()), unit(y.tolist())
    return mean_k(xs, xs) + mean_k(ys, ys) - 2 * mean_k(xs, ys)


def _brute(x, y, sigmas, normalize=True, unbiased=False):
    """Every option by explicit pairwise differences in float64 (differentiable through autograd)."""
    x, y = x.double(), y.double()
    if normalize:
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)

    def k(a, b):
        d2 = (a[:, None, :] - b[None, :, :]).pow(2).sum(2)
        return sum(torch.exp(-d2 / (2 * s**2)) for s in sigmas)

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    if unbiased:
        return (
            (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
            + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
            - 2 * k(x, y).mean()
        )
    return kxx.mean() + kyy.mean() - 2 * k(x, y).mean()


def _inputs(n, m, d=16, dtype=torch.float64, seed=0, shift=0.4):
    """x ~ N(0, 1), y ~ N(shift, 1): distinct distributions keep the loss away from 0 (a relative
    tolerance on a loss near 0 would measure only cancellation)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) + shift
    return x.to(dtype), y.to(dtype)


def _value_and_grads(fn, x, y):
    x, y = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    loss = fn(x, y)
    gx, gy = torch.autograd.grad(loss, (x, y))
    return loss.detach(), gx, gy


def _rel(a, b):
    """Largest error relative to the largest reference entry (float64)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def _assert_matches(got, want, rtol, zero_rows=()):
    """Loss within rtol; each gradient within rtol of its largest entry, zero rows apart."""
    assert abs(got[0].double().item() - want[0].item()) <= rtol * abs(want[0].item()), (got[0], want[0])
    for g, w, zeros in zip(got[1:], want[1:], (zero_rows, ())):
        live = [i for i in range(len(w)) if i not in zeros]
        assert _rel(g[live], w[live]) <= rtol, _rel(g[live], w[live])
        if zeros:
            assert _rel(g[list(zeros)], w[list(zeros)]) <= rtol


@pytest.fixture
def small_blocks(monkeypatch):
    """Force many tiles (several on, off and below the diagonal, ragged last ones) at test sizes."""
    monkeypatch.setattr(ops_mmd, "TILE", 5)


# ----------------------------------------------------------------------------------------------
# The reference (SPEC §6)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,m,sigma", [(1, 1, 1.0), (4, 3, 1.3), (5, 6, 0.5)])
def test_reference_matches_double_loop(n, m, sigma):
    x, y = _inputs(n, m, d=5, seed=n)
    assert mmd_loss(x, y, sigma).item() == pytest.approx(_double_loop(x, y, sigma), rel=1e-12, abs=1e-15)


def test_reference_zero_row_and_identical_sets():
    x, y = _inputs(4, 3, d=5)
    x[1] = 0.0
    assert mmd_loss(x, y, 1.0).item() == pytest.approx(_double_loop(x, y, 1.0), rel=1e-12)
    # MMD²(x, x) = 0 for the biased estimator.
    assert abs(mmd_loss(x, x, 1.0).item()) < 1e-14


# ----------------------------------------------------------------------------------------------
# Blocked path (CPU) against the reference and brute force, float64
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,m", [(1, 1), (7, 7), (257, 257), (7, 12), (257, 31), (1, 9)])
def test_cpu_matches_reference_float64(n, m, monkeypatch):
    monkeypatch.setattr(ops_mmd, "TILE", 5 if max(n, m) < 50 else 40)  # several tiles, ragged last ones
    x, y = _inputs(n, m, seed=n + m)
    got = _value_and_grads(lambda a, b: mmd(a, b, 1.3), x, y)
    want = _value_and_grads(lambda a, b: mmd_loss(a, b, 1.3), x, y)
    _assert_matches(got, want, 1e-10)


def test_cpu_default_block_size_matches_reference():
    x, y = _inputs(300, 200, d=64, seed=3)
    _assert_matches(_value_and_grads(lambda a, b: mmd(a, b, 2.0), x, y), _value_and_grads(lambda a, b: mmd_loss(a, b, 2.0), x, y), 1e-10)


def test_cpu_zero_and_tiny_rows_match_reference(small_blocks):
    x, y = _inputs(9, 6)
    x[2] = 0.0
    x[4] *= 3e-13 / x[4].norm()  # shorter than eps: divided by eps, no gradient through its norm
    y[0] = 0.0
    got = _value_and_grads(lambda a, b: mmd(a, b, 1.0), x, y)
    want = _value_and_grads(lambda a, b: mmd_loss(a, b, 1.0), x, y)
    assert want[1][2].abs().max() > 1e6  # g / eps: the zero row's gradient is huge, and must match
    _assert_matches(got, want, 1e-10, zero_rows=(2, 4))
    assert _rel(got[2][0], want[2][0]) <= 1e-10


def test_cpu_bandwidth_list_is_sum_of_single_bandwidths(small_blocks):
    x, y = _inputs(11, 8)
    sigmas = [0.5, 1.0, 2.0]
    got = _value_and_grads(lambda a, b: mmd(a, b, sigmas), x, y)
    want = _value_and_grads(lambda a, b: sum(mmd_loss(a, b, s) for s in sigmas), x, y)
    _assert_matches(got, want, 1e-10)
    assert _rel(mmd(x, y, (0.5, 1.0, 2.0)), want[0]) <= 1e-10  # any sequence


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("sigmas", [[1.1], [0.6, 3.0]])
def test_cpu_unbiased_and_unnormalized_match_brute_force(normalize, sigmas, small_blocks):
    x, y = _inputs(10, 7, d=6, shift=0.3)
    for unbiased in (False, True):
        got = _value_and_grads(lambda a, b: mmd(a, b, sigmas, normalize=normalize, unbiased=unbiased), x, y)
        want = _value_and_grads(lambda a, b: _brute(a, b, sigmas, normalize, unbiased), x, y)
        _assert_matches(got, want, 1e-10)


def test_unbiased_differs_from_biased():
    x, y = _inputs(6, 5, shift=0.0)
    assert abs(mmd(x, y, unbiased=True).item() - mmd(x, y).item()) > 1e-3
    # One set against itself: the biased estimator is 0, the U-statistic is not.
    assert abs(mmd(x, x).item()) < 1e-12
    assert mmd(x, x, unbiased=True).item() == pytest.approx(_brute(x, x, [1.0], True, True).item(), rel=1e-10)


def test_cpu_gradcheck_float64(small_blocks):
    x, y = _inputs(6, 5, d=4)
    x.requires_grad_(), y.requires_grad_()
    for kw in ({}, {"normalize": False}, {"unbiased": True}, {"sigma": [0.7, 1.9]}):
        assert torch.autograd.gradcheck(lambda a, b: mmd(a, b, **kw), (x, y))
    # Upstream gradient other than 1, through a loss that uses the output twice.
    assert torch.autograd.gradcheck(lambda a, b: mmd(a, b) * 3.0 + mmd(a, b) ** 2, (x, y))


def test_cpu_non_contiguous_inputs():
    x, y = _inputs(12, 9, d=8)
    xt = x.T.contiguous().T  # column-major view of the same values
    ys = torch.cat([y, y], 1)[:, ::2]  # strided columns
    assert not xt.is_contiguous() and not ys.is_contiguous()
    _assert_matches(_value_and_grads(lambda a, b: mmd(a, b), xt, ys), _value_and_grads(lambda a, b: mmd_loss(a, b, 1.0), x, ys.contiguous()), 1e-10)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-2)])
def test_cpu_low_precision_dtypes(dtype, rtol):
    x, y = _inputs(40, 33, d=16, dtype=dtype)
    got = _value_and_grads(lambda a, b: mmd(a, b, 1.0), x, y)
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == dtype
    want = _value_and_grads(lambda a, b: _brute(a, b, [1.0]), x.double(), y.double())
    _assert_matches(got, want, rtol)


def test_cpu_deterministic(small_blocks):
    x, y = _inputs(30, 20, dtype=torch.float32)
    first = _value_and_grads(lambda a, b: mmd(a, b, [1.0, 2.0]), x, y)
    second = _value_and_grads(lambda a, b: mmd(a, b, [1.0, 2.0]), x, y)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_module_matches_function():
    x, y = _inputs(8, 5)
    loss = MMDLoss(sigma=[1.0, 1.5], unbiased=True)
    assert list(loss.parameters()) == []
    assert torch.equal(loss(x, y), mmd(x, y, [1.0, 1.5], unbiased=True))
    assert torch.equal(MMDLoss()(x, y), mmd(x, y))
    assert "sigma=[1.0, 1.5]" in repr(loss) and "unbiased=True" in repr(loss)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x,y,kw,exc,words",
    [
        (torch.randn(4, 3), torch.randn(5, 4), {}, ValueError, "same feature size"),
        (torch.randn(4), torch.randn(4, 1), {}, ValueError, "2-D"),
        (torch.randn(2, 3, 4), torch.randn(2, 4), {}, ValueError, "2-D"),
        (torch.randn(0, 3), torch.randn(2, 3), {}, ValueError, "at least one row"),
        (torch.randn(2, 0), torch.randn(2, 0), {}, ValueError, "at least one row"),
        (torch.randn(2, 3), torch.randn(2, 3).double(), {}, TypeError, "same dtype"),
        (torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int64), {}, TypeError, "float16"),
        (torch.randn(2, 3).numpy(), torch.randn(2, 3), {}, TypeError, "torch.Tensor"),
        (torch.randn(2, 3), torch.randn(2, 3), {"sigma": 0.0}, ValueError, "positive"),
        (torch.randn(2, 3), torch.randn(2, 3), {"sigma": -1.0}, ValueError, "positive"),
        (torch.randn(2, 3), torch.randn(2, 3), {"sigma": float("nan")}, ValueError, "positive"),
        (torch.randn(2, 3), torch.randn(2, 3), {"sigma": [1.0, 0.0]}, ValueError, "positive"),
        (torch.randn(2, 3), torch.randn(2, 3), {"sigma": []}, TypeError, "sigma"),
        (torch.randn(2, 3), torch.randn(2, 3), {"sigma": "1"}, TypeError, "sigma"),
        (torch.randn(2, 3), torch.randn(2, 3), {"sigma": torch.tensor(1.0)}, TypeError, "sigma"),
        (torch.randn(1, 3), torch.randn(4, 3), {"unbiased": True}, ValueError, "at least 2 rows"),
    ],
)
def test_bad_input_raises_clear_error(x, y, kw, exc, words):
    with pytest.raises(exc, match=words):
        mmd(x, y, **kw)


def test_module_rejects_bad_sigma_at_construction():
    with pytest.raises(ValueError, match="positive"):
        MMDLoss(sigma=-2.0)


# ----------------------------------------------------------------------------------------------
# The custom op: torch.library checks and torch.compile
# ----------------------------------------------------------------------------------------------
def test_opcheck():
    x, y = _inputs(9, 6, d=5)
    x.requires_grad_(), y.requires_grad_()
    torch.library.opcheck(torch.ops.mambarec_fast.mmd_fwd.default, (x, y, [1.0, 2.0], True, False))
    torch.library.opcheck(torch.ops.mambarec_fast.mmd_fwd.default, (x.float(), y.float(), [0.5], False, True))
    torch.library.opcheck(torch.ops.mambarec_fast.mmd_bwd.default, (torch.tensor(1.5, dtype=torch.float64), x.detach(), y.detach(), [1.0], True, False))


def test_torch_compile_one_graph():
    x, y = _inputs(9, 6)
    compiled = torch.compile(lambda a, b: 2.0 * mmd(a, b, 1.2), fullgraph=True, backend="aot_eager")
    got = _value_and_grads(compiled, x, y)
    want = _value_and_grads(lambda a, b: 2.0 * mmd_loss(a, b, 1.2), x, y)
    _assert_matches(got, want, 1e-10)


# ----------------------------------------------------------------------------------------------
# Triton kernels under the interpreter (CPU tensors; conftest sets TRITON_INTERPRET=1)
# ----------------------------------------------------------------------------------------------
def _kernels():
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("the interpreter tests run where there is no GPU (the CUDA path is tested below)")
    from mambarec_fast.kernels import mmd as kmmd

    return kmmd


def _triton_value_and_grads(x, y, sigmas, normalize=True, unbiased=False, split=1, grad=1.0):
    """Launchers called directly, as the op would on CUDA."""
    kmmd = _kernels()
    inv = torch.tensor([1.0 / s**2 for s in sigmas], dtype=torch.float32)
    weights = ops_mmd._pair_weights(len(x), len(y), unbiased)
    loss = kmmd.mmd_forward(x, y, inv, *weights, normalize=normalize, drop_diag=unbiased, eps=EPS, block=16)
    g = torch.tensor(grad, dtype=x.dtype)
    gx, gy = kmmd.mmd_backward(g, x, y, inv, *weights, normalize=normalize, eps=EPS, block_m=16, split=split)
    return loss, gx, gy


def _brute_value_and_grads(x, y, sigmas, normalize=True, unbiased=False, grad=1.0):
    loss, gx, gy = _value_and_grads(lambda a, b: _brute(a, b, sigmas, normalize, unbiased), x.double(), y.double())
    return loss, gx * grad, gy * grad


@pytest.mark.parametrize("n,m,split", [(1, 1, 1), (7, 7, 1), (33, 20, 2), (70, 17, 3)])
def test_triton_interpreter_matches_float64(n, m, split):
    x, y = _inputs(n, m, d=24, dtype=torch.float32, seed=n)
    got = _triton_value_and_grads(x, y, [1.3], split=split, grad=0.7)
    assert got[1].dtype == torch.float32 and got[1].shape == x.shape and got[2].shape == y.shape
    _assert_matches(got, _brute_value_and_grads(x, y, [1.3], grad=0.7), 1e-5)


@pytest.mark.parametrize("normalize,unbiased,sigmas", [(True, True, [1.0]), (False, False, [2.0]), (False, True, [0.9, 2.5])])
def test_triton_interpreter_options(normalize, unbiased, sigmas):
    x, y = _inputs(35, 18, d=10, dtype=torch.float32, shift=0.3)
    if not normalize:
        x, y = x * 0.3, y * 0.3  # keep ‖a − b‖²/2σ² moderate
    got = _triton_value_and_grads(x, y, sigmas, normalize, unbiased, split=2)
    _assert_matches(got, _brute_value_and_grads(x, y, sigmas, normalize, unbiased), 1e-5)


def test_triton_interpreter_zero_rows_and_strides():
    x, y = _inputs(21, 40, d=12, dtype=torch.float32)
    x[5] = 0.0
    x[9] *= 3e-13 / x[9].norm()
    x = x.T.contiguous().T  # column-major
    y = torch.cat([y, y], 1)[:, 1::2]
    got = _triton_value_and_grads(x, y, [1.0])
    _assert_matches(got, _brute_value_and_grads(x, y, [1.0]), 1e-5, zero_rows=(5, 9))


def test_triton_interpreter_float16():
    """fp16 operands, `W` and `b̂` rounded to fp16 before `W·b̂` (the interpreter has no bf16
    arithmetic: bf16 is tested on the GPU only)."""
    x, y = _inputs(33, 20, d=24, dtype=torch.float16)
    got = _triton_value_and_grads(x, y, [1.0, 0.1], split=2)
    assert got[0].dtype == torch.float64 and got[1].dtype == torch.float16
    _assert_matches(got, _brute_value_and_grads(x, y, [1.0, 0.1]), 2e-3)


def test_triton_interpreter_deterministic():
    x, y = _inputs(33, 17, d=8, dtype=torch.float32)
    first, second = _triton_value_and_grads(x, y, [1.0], split=2), _triton_value_and_grads(x, y, [1.0], split=2)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ----------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("n,m", [(7, 5), (300, 257), (2048, 2048)])
def test_cuda_matches_float64(dtype, rtol, n, m):
    x, y = _inputs(n, m, d=64, dtype=dtype, seed=n)
    x, y = x.cuda(), y.cuda()
    got = _value_and_grads(lambda a, b: mmd(a, b, 1.0), x, y)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    want = _value_and_grads(lambda a, b: mmd_loss(a, b, 1.0), x.double(), y.double())
    _assert_matches(got, want, rtol)


@pytest.mark.gpu
def test_cuda_options_zero_rows_and_determinism():
    x, y = _inputs(500, 333, d=48, dtype=torch.float32, shift=0.3)
    x[7] = 0.0
    x, y = x.cuda(), y.cuda()
    for kw in ({"unbiased": True}, {"sigma": [0.7, 1.5, 3.0]}, {"normalize": False, "sigma": 4.0}):
        sigmas = kw.get("sigma", 1.0)
        sigmas = sigmas if isinstance(sigmas, list) else [sigmas]
        got = _value_and_grads(lambda a, b: mmd(a, b, **kw), x, y)
        want = _value_and_grads(
            lambda a, b: _brute(a, b, sigmas, kw.get("normalize", True), kw.get("unbiased", False)), x.double(), y.double()
        )
        _assert_matches(got, want, 1e-5, zero_rows=(7,) if kw.get("normalize", True) else ())
        again = _value_and_grads(lambda a, b: mmd(a, b, **kw), x, y)
        for a, b in zip(got, again):
            assert torch.equal(a, b)


@pytest.mark.gpu
def test_cuda_float64_uses_blocked_path_and_compiles():
    x, y = _inputs(100, 90, d=64)
    x, y = x.cuda(), y.cuda()
    _assert_matches(_value_and_grads(lambda a, b: mmd(a, b), x, y), _value_and_grads(lambda a, b: mmd_loss(a, b, 1.0), x, y), 1e-10)
    compiled = torch.compile(lambda a, b: mmd(a, b), fullgraph=True)
    xf, yf = x.float(), y.float()
    _assert_matches(_value_and_grads(compiled, xf, yf), _value_and_grads(lambda a, b: mmd_loss(a, b, 1.0), x, y), 1e-5)
