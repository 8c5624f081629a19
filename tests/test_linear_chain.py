"""The reassociated Linear chain against nn.Linear(nn.Linear(x)), forward and backward."""
import pytest
import torch
from torch import nn

from mambarec_fast.ops.linear_chain import linear_chain


def _pair(d_in, d_mid, d_out, dtype):
    torch.manual_seed(0)
    return nn.Linear(d_in, d_mid).to(dtype), nn.Linear(d_mid, d_out).to(dtype)


@pytest.mark.parametrize("n, dtype, tol", [(37, torch.float64, 1e-12), (7, torch.float32, 2e-5), (0, torch.float64, 0)])
def test_matches_two_linears(n, dtype, tol):
    first, second = _pair(48, 12, 5, dtype)
    x = torch.randn(n, 48, dtype=dtype, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y = linear_chain(x, first, second)
    ref_first, ref_second = _pair(48, 12, 5, dtype)
    y_ref = ref_second(ref_first(x2))
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x2.grad, rtol=tol, atol=tol)
    for fast, ref in zip(list(first.parameters()) + list(second.parameters()), list(ref_first.parameters()) + list(ref_second.parameters())):
        torch.testing.assert_close(fast.grad, ref.grad, rtol=tol, atol=tol)


def test_gradcheck():
    first, second = _pair(6, 4, 3, torch.float64)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: linear_chain(x, first, second), (x,))
    params = [p for m in (first, second) for p in m.parameters()]
    from mambarec_fast.ops.linear_chain import _LinearChain

    assert torch.autograd.gradcheck(_LinearChain.apply, (x, *params))


def test_non_contiguous_input_and_frozen_input():
    first, second = _pair(10, 4, 3, torch.float64)
    x = torch.randn(10, 9, dtype=torch.float64).T  # [9, 10], non-contiguous
    torch.testing.assert_close(linear_chain(x, first, second), second(first(x)), rtol=1e-12, atol=1e-12)
    linear_chain(x, first, second).sum().backward()  # x needs no grad: parameters still get theirs
    assert first.weight.grad is not None and second.bias.grad is not None


def test_bad_shapes():
    first, second = _pair(10, 4, 3, torch.float64)
    with pytest.raises(ValueError, match=r"\[N, 10\]"):
        linear_chain(torch.randn(3, 9, dtype=torch.float64), first, second)
    with pytest.raises(ValueError, match="cannot chain"):
        linear_chain(torch.randn(3, 10, dtype=torch.float64), first, first)
