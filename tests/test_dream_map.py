"""DREAM's general path (`[B, C, H, W]`, `[B, S, C]`): the fast module's fused op against the reference.

Tolerances: float64 1e-10 relative for outputs, input gradients and running statistics. Parameter
gradients are O(1) and compared against max(1, |reference|): the conv biases before a train-mode
BatchNorm have exactly-zero true gradients, so both sides are pure rounding there.
"""
from __future__ import annotations

import pytest
import torch

from mambarec_fast.ops import dream_map as map_ops
from mambarec_fast.ops.dream import DREAM
from test_dream import EPS, check_cuda_fp32_against_float64, pair, rel_err, run_and_compare


def compare_steps(ref, fast, x, steps=1):
    """`run_and_compare` with parameter gradients against max(1, |reference|) (see the docstring)."""
    run_and_compare(ref, fast, x, steps=steps, param_floor=1.0)


def fused_only(module):
    """Make the reference fallback raise, so that a call proves the fused op ran."""

    def fail(_x):
        raise AssertionError("the fused general path did not run")

    module._forward_reference = fail
    return module


@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (3, 6, 7, 25), (2, 6, 20, 19), (3, 9, 6), (2, 1, 6)])
@pytest.mark.parametrize("training", [True, False])
def test_matches_reference(shape, training):
    """H, W smaller than every dilation (only the centre taps see data), between them, and larger;
    `[B, S, C]` sequences, one of length 1."""
    ref, fast = pair(seed=sum(shape))
    ref.train(training)
    fast.train(training)
    x = torch.randn(shape, dtype=torch.float64)
    compare_steps(ref, fused_only(fast), x, steps=2)
    if not training:
        with torch.no_grad():  # the folded inference branch
            assert rel_err(fast(x), ref(x)) < 1e-10


def test_rate2_noncontiguous_channels_last_and_eval_after_training():
    ref, fast = pair(dim_in=5, dim_out=3, rate=2, seed=3)
    fused_only(fast)
    x = torch.randn(3, 5, 9, 30, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    compare_steps(ref, fast, x, steps=2)
    compare_steps(ref, fast, torch.randn(3, 5, 30, 9, dtype=torch.float64).transpose(2, 3))
    sequence = torch.randn(4, 5, 11, dtype=torch.float64).transpose(1, 2)  # non-contiguous [B, S, C]
    compare_steps(ref, fast, sequence)
    ref.eval()
    fast.eval()
    compare_steps(ref, fast, x)
    with torch.no_grad():
        assert rel_err(fast(x), ref(x)) < 1e-10


def test_two_running_stat_updates_equal_two_reference_calls():
    ref, fast = pair(seed=4)
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64)
    for _ in range(2):
        ref(x)
        ref(x)
        fast(x, running_stat_updates=2)
    for (name, br), (_, bf) in zip(ref.named_buffers(), fast.named_buffers()):
        assert (torch.equal(br, bf) if br.dtype == torch.long else rel_err(bf, br) < 1e-12), name


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 2e-2)])
def test_low_precision_close_to_float64_reference(dtype, tol):
    """Half-precision maps compute in float32 inside (the reference's own bfloat16 error here
    reaches 6e-2), so only the input and output roundings remain."""
    ref, fast = pair(seed=5)
    fast = fast.to(dtype)
    x = torch.randn(2, 6, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    xf = x.to(dtype).requires_grad_()
    y = fast(xf)
    assert y.dtype == dtype
    assert rel_err(y, ref(x)) < tol
    y.sum().backward()
    assert xf.grad.dtype == dtype and fast.branch2[0].weight.grad.dtype == dtype
    assert fast.branch1[1].running_mean.dtype == dtype
    assert rel_err(fast.branch1[1].running_mean, ref.branch1[1].running_mean) < tol


def test_errors_and_empty_inputs():
    ref, fast = pair(seed=6)
    with pytest.raises(ValueError, match=r"more than 1 sample.*\(1, 6, 4, 4\)"):
        fast(torch.randn(1, 6, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"empty spatial size.*\(2, 6, 0, 3\)"):
        fast(torch.randn(2, 6, 0, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="6 input channels"):
        fast(torch.randn(2, 5, 4, 4, dtype=torch.float64))
    empty = torch.randn(0, 6, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="more than 1 sample"):
        fast(empty)
    ref.eval()
    fast.eval()
    assert fast(empty).shape == ref(empty).shape == (0, 4, 4, 3)
    assert fast(torch.randn(1, 7, 6, dtype=torch.float64)).shape == (1, 4, 1, 7)


def op_inputs(batch=2, c=3, k=2, seed=11):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, low=None):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return (t.abs() + low) if low is not None else t

    return dict(
        wb1=rnd(k, c, 1, 1), wb2=rnd(k, c, 3, 3), wb3=rnd(k, c, 3, 3), wb4=rnd(k, c, 3, 3), w5=rnd(k, c, 1, 1),
        b1=rnd(5 * k), g1=rnd(5 * k, low=0.5), be1=rnd(5 * k) + 0.5, rm1=rnd(5 * k), rv1=rnd(5 * k, low=0.5),
        wcs=rnd(2, 5 * k), w2=rnd(k, 5 * k), b2=rnd(k), g2=rnd(k, low=0.5), be2=rnd(k) + 1.0, rm2=rnd(k),
        rv2=rnd(k, low=0.5),
    )


@pytest.mark.parametrize("training", [True, False])
def test_op_gradcheck_and_opcheck(training):
    batch, height, width, c = 3, 2, 7, 3  # W > 6: the first dilated branch reaches real pixels
    params = op_inputs(batch, c)
    params["x"] = torch.randn(batch * height * width, c, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    order = ["x", *op_inputs(batch, c)]
    diff = [name for name in order if name not in ("rm1", "rv1", "rm2", "rv2")]
    extra = (batch, height, width, 1, training, EPS, True, False)

    def first_output(*tensors):
        args = dict(params, **dict(zip(diff, tensors)))
        return map_ops.dream_map_forward(*(args[name] for name in order), *extra)[0]

    leaves = [params[name].clone().requires_grad_() for name in diff]
    assert torch.autograd.gradcheck(first_output, leaves, atol=1e-7, rtol=1e-5)
    args = dict(params, **dict(zip(diff, leaves)))
    torch.library.opcheck(
        map_ops.dream_map_forward, tuple(args[name] for name in order) + extra,
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


def test_torch_compile_fullgraph_keeps_the_op():
    ref, fast = pair(seed=14)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    compare_steps(ref, compiled, torch.randn(2, 6, 5, 8, dtype=torch.float64))


@pytest.mark.gpu
@pytest.mark.parametrize("training", [True, False])
def test_cuda_module_fp32_matches_float64_reference(training):
    """The Triton general path end to end; parameter gradients against max(1, |reference|)."""
    check_cuda_fp32_against_float64(torch.randn(4, 64, 23, 37, dtype=torch.float64), training, param_floor=1.0)
