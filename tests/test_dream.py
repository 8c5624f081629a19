"""DREAM (SPEC §4): the reference against an independent statement of the spec, then the fast
module's matrix path (and its Triton kernels under the interpreter) against the reference. The general
path (`[B, C, H, W]`, `[B, S, C]`) is tested in test_dream_map.py and test_dream_map_kernels.py.

Tolerances (relative to the largest reference magnitude): float64 1e-10 for the CPU algebra,
float32 1e-5 for the Triton kernels against a float64 computation.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambarec_fast.kernels._compat import HAS_TRITON
from mambarec_fast.ops import dream as dream_ops
from mambarec_fast.ops.dream import DREAM
from mambarec_fast.reference import DREAM as ReferenceDREAM

EPS = 1e-5
BRANCH_BNS = ("branch1.1", "branch2.1", "branch3.1", "branch4.1", "branch5_bn")


def rel_err(actual: torch.Tensor, expected: torch.Tensor, floor: float = 1e-30) -> float:
    """Largest absolute difference over the largest reference magnitude (at least `floor`: conv
    biases before a train-mode BatchNorm have exactly-zero true gradients, pure rounding here)."""
    if expected.numel() == 0:
        return 0.0 if actual.numel() == 0 else float("inf")
    scale = expected.abs().max().clamp_min(floor)
    return ((actual.double() - expected.double()).abs().max() / scale).item()


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial parameters and running statistics (so BN affine and eval paths are exercised)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64) * 0.4)
            if name.endswith(("1.weight", "bn.weight")) and param.dim() == 1:
                param.add_(1.0)  # BN gammas around 1
        for name, buf in module.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen, dtype=torch.float64) * 0.3)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen, dtype=torch.float64) + 0.5)
    return module


def pair(dim_in=6, dim_out=4, rate=1, seed=0, dtype=torch.float64):
    ref = randomize(ReferenceDREAM(dim_in, dim_out, rate).to(dtype), seed)
    fast = DREAM(dim_in, dim_out, rate).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


# ---------------------------------------------------------------------------------------------
# The reference against SPEC §4, written independently
# ---------------------------------------------------------------------------------------------
def spec_forward(sd: dict, x4: torch.Tensor, rate: int, training: bool) -> torch.Tensor:
    """SPEC §4 on a `[B, C, H, W]` map with functional ops and a plain state_dict (no running-stat update)."""

    def bn(z, prefix):
        if training:
            mean = z.mean(dim=(0, 2, 3), keepdim=True)
            var = ((z - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        else:
            mean = sd[prefix + ".running_mean"][None, :, None, None]
            var = sd[prefix + ".running_var"][None, :, None, None]
        return (z - mean) / torch.sqrt(var + EPS) * sd[prefix + ".weight"][None, :, None, None] + sd[prefix + ".bias"][None, :, None, None]

    height, width = x4.shape[2:]
    parts = [F.relu(bn(F.conv2d(x4, sd["branch1.0.weight"], sd["branch1.0.bias"]), "branch1.1"))]
    for k, d in ((2, 6 * rate), (3, 12 * rate), (4, 18 * rate)):
        z = F.conv2d(x4, sd[f"branch{k}.0.weight"], sd[f"branch{k}.0.bias"], padding=d, dilation=d)
        parts.append(F.relu(bn(z, f"branch{k}.1")))
    pooled = x4.mean(dim=(2, 3), keepdim=True)
    g = F.relu(bn(F.conv2d(pooled, sd["branch5_conv.weight"], sd["branch5_conv.bias"]), "branch5_bn"))
    parts.append(g.expand(-1, -1, height, width))
    u = torch.cat(parts, dim=1)
    s = u * torch.sigmoid(F.conv2d(u, sd["fusion.spatial.Conv1x1.weight"]))
    c = u * F.relu(F.conv2d(u.mean(dim=(2, 3), keepdim=True), sd["fusion.channel.fc.weight"]))
    a = torch.maximum(c, s)
    return F.relu(bn(F.conv2d(a * u, sd["conv_cat.0.weight"], sd["conv_cat.0.bias"]), "conv_cat.1"))


def spec_matrix_forward(sd: dict, x: torch.Tensor, training: bool) -> torch.Tensor:
    """SPEC §4 on `[N, C]` by direct formulas: centre taps only, scalars c_n, s_n per row."""

    def bn(z, prefix):
        if training:
            mean, var = z.mean(0), z.var(0, unbiased=False)
        else:
            mean, var = sd[prefix + ".running_mean"], sd[prefix + ".running_var"]
        return (z - mean) / torch.sqrt(var + EPS) * sd[prefix + ".weight"] + sd[prefix + ".bias"]

    parts = []
    for name, prefix in zip(("branch1.0", "branch2.0", "branch3.0", "branch4.0", "branch5_conv"), BRANCH_BNS):
        w = sd[name + ".weight"]
        centre = w[:, :, w.shape[2] // 2, w.shape[3] // 2]
        parts.append(F.relu(bn(x @ centre.t() + sd[name + ".bias"], prefix)))
    u = torch.cat(parts, dim=1)
    c = F.relu(u @ sd["fusion.channel.fc.weight"].flatten())[:, None]
    s = torch.sigmoid(u @ sd["fusion.spatial.Conv1x1.weight"].flatten())[:, None]
    a = torch.maximum(u * c, u * s)
    return F.relu(bn((a * u) @ sd["conv_cat.0.weight"].flatten(1).t() + sd["conv_cat.0.bias"], "conv_cat.1"))


@pytest.mark.parametrize("training", [True, False])
def test_reference_matrix_matches_spec_formulas(training):
    ref = randomize(ReferenceDREAM(6, 4).double(), 1).train(training)
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    x = torch.randn(19, 6, dtype=torch.float64)
    assert rel_err(ref(x), spec_matrix_forward(sd, x, training)) < 1e-12


@pytest.mark.parametrize("shape,layout", [((3, 6, 4, 5), "map"), ((2, 6, 20, 23), "map"), ((3, 7, 6), "sequence")])
@pytest.mark.parametrize("training", [True, False])
def test_reference_maps_match_spec_conv2d(shape, layout, training):
    ref = randomize(ReferenceDREAM(6, 4).double(), 2).train(training)
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    x = torch.randn(shape, dtype=torch.float64)
    x4 = x if layout == "map" else x.transpose(1, 2).unsqueeze(2)
    out = ref(x)
    assert out.shape == (shape[0], 4, *x4.shape[2:])
    assert rel_err(out, spec_forward(sd, x4, 1, training)) < 1e-12


def authors_state_dict(dim_in, dim_out, gen):
    """A state_dict spelled as the authors' checkpoints are (SPEC §4 names, 4-D conv weights)."""
    sd = {}
    for k in (1, 2, 3, 4):
        ks = 1 if k == 1 else 3
        sd[f"branch{k}.0.weight"] = torch.randn(dim_out, dim_in, ks, ks, generator=gen)
        sd[f"branch{k}.0.bias"] = torch.randn(dim_out, generator=gen)
    sd["branch5_conv.weight"] = torch.randn(dim_out, dim_in, 1, 1, generator=gen)
    sd["branch5_conv.bias"] = torch.randn(dim_out, generator=gen)
    sd["conv_cat.0.weight"] = torch.randn(dim_out, 5 * dim_out, 1, 1, generator=gen)
    sd["conv_cat.0.bias"] = torch.randn(dim_out, generator=gen)
    for prefix in (*BRANCH_BNS, "conv_cat.1"):
        sd[prefix + ".weight"] = torch.rand(dim_out, generator=gen) + 0.5
        sd[prefix + ".bias"] = torch.randn(dim_out, generator=gen)
        sd[prefix + ".running_mean"] = torch.randn(dim_out, generator=gen)
        sd[prefix + ".running_var"] = torch.rand(dim_out, generator=gen) + 0.5
        sd[prefix + ".num_batches_tracked"] = torch.tensor(7)
    sd["fusion.channel.fc.weight"] = torch.randn(1, 5 * dim_out, 1, 1, generator=gen)
    sd["fusion.spatial.Conv1x1.weight"] = torch.randn(1, 5 * dim_out, 1, 1, generator=gen)
    return sd


@pytest.mark.parametrize("cls", [ReferenceDREAM, DREAM])
def test_authors_state_dict_loads_strict(cls):
    sd = authors_state_dict(5, 3, torch.Generator().manual_seed(3))
    module = cls(5, 3)
    module.load_state_dict(sd, strict=True)
    assert set(module.state_dict()) == set(sd)
    assert torch.equal(module.branch3[0].weight, sd["branch3.0.weight"])


def test_reference_running_stats_follow_batchnorm2d_rule():
    ref = randomize(ReferenceDREAM(6, 4).double(), 4).train()
    sd0 = {k: v.clone() for k, v in ref.state_dict().items()}
    running = {p: (sd0[p + ".running_mean"].clone(), sd0[p + ".running_var"].clone()) for p in (*BRANCH_BNS, "conv_cat.1")}
    for step in range(3):
        x = torch.randn(11, 6, dtype=torch.float64)
        ref(x)
        # the batch statistics of each BN input, from the spec formulas (params unchanged)
        sd = dict(sd0)
        parts = []
        for name, prefix in zip(("branch1.0", "branch2.0", "branch3.0", "branch4.0", "branch5_conv"), BRANCH_BNS):
            w = sd[name + ".weight"]
            z = x @ w[:, :, w.shape[2] // 2, w.shape[3] // 2].t() + sd[name + ".bias"]
            mean, var = running[prefix]
            running[prefix] = (0.9 * mean + 0.1 * z.mean(0), 0.9 * var + 0.1 * z.var(0, unbiased=True))
            zn = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + EPS)
            parts.append(F.relu(zn * sd[prefix + ".weight"] + sd[prefix + ".bias"]))
        u = torch.cat(parts, 1)
        m = torch.maximum(F.relu(u @ sd["fusion.channel.fc.weight"].flatten()), torch.sigmoid(u @ sd["fusion.spatial.Conv1x1.weight"].flatten()))
        z = (u * u * m[:, None]) @ sd["conv_cat.0.weight"].flatten(1).t() + sd["conv_cat.0.bias"]
        mean, var = running["conv_cat.1"]
        running["conv_cat.1"] = (0.9 * mean + 0.1 * z.mean(0), 0.9 * var + 0.1 * z.var(0, unbiased=True))
    state = ref.state_dict()
    for prefix, (mean, var) in running.items():
        assert rel_err(state[prefix + ".running_mean"], mean) < 1e-12
        assert rel_err(state[prefix + ".running_var"], var) < 1e-12
        assert state[prefix + ".num_batches_tracked"].item() == 3


# ---------------------------------------------------------------------------------------------
# The fast module against the reference (CPU algebra, float64)
# ---------------------------------------------------------------------------------------------
def run_and_compare(ref, fast, x, steps=1, tol=1e-10, param_floor=1e-3):
    """Forward (same shape, contiguous), input and parameter gradients after each of `steps`
    calls on `x`, then the running statistics. Parameter gradients are O(1): compared against
    max(param_floor, |reference|)."""
    for _ in range(steps):
        xr = x.detach().clone().requires_grad_()
        xf = x.detach().clone().requires_grad_()
        yr, yf = ref(xr), fast(xf)
        assert yf.shape == yr.shape and yf.is_contiguous()
        assert rel_err(yf, yr) < tol
        grad = torch.randn_like(yr)
        ref.zero_grad()
        fast.zero_grad()
        yr.backward(grad)
        yf.backward(grad)
        assert rel_err(xf.grad, xr.grad, floor=1e-3) < tol  # N = 2 in train mode: true grads ~ 0
        for (name, pr), (_, pf) in zip(ref.named_parameters(), fast.named_parameters()):
            assert rel_err(pf.grad, pr.grad, floor=param_floor) < tol, name
    for (name, br), (_, bf) in zip(ref.named_buffers(), fast.named_buffers()):
        if br.dtype == torch.long:
            assert torch.equal(br, bf), name
        else:
            assert rel_err(bf, br) < tol, name


@pytest.mark.parametrize("n", [2, 37, 130])
@pytest.mark.parametrize("training", [True, False])
def test_matrix_matches_reference(n, training):
    ref, fast = pair(seed=n)
    ref.train(training)
    fast.train(training)
    run_and_compare(ref, fast, torch.randn(n, 6, dtype=torch.float64), steps=3)


def test_matrix_rate2_noncontiguous_and_eval_after_training():
    ref, fast = pair(dim_in=5, dim_out=3, rate=2, seed=5)
    x = torch.randn(5, 41, dtype=torch.float64).t()  # non-contiguous [41, 5]
    assert not x.is_contiguous()
    run_and_compare(ref, fast, x, steps=2)
    ref.eval()
    fast.eval()
    run_and_compare(ref, fast, x)
    with torch.no_grad():  # the folded inference branch
        assert rel_err(fast(x), ref(x)) < 1e-10


@pytest.mark.parametrize("training", [True, False])
def test_matrix_row_blocks_match_reference(monkeypatch, training):
    """The CPU op runs its [N, 5Ch] work over blocks of rows: several blocks and a ragged last one."""
    monkeypatch.setattr(dream_ops, "_ROW_BLOCK", 16)
    ref, fast = pair(seed=17)
    ref.train(training)
    fast.train(training)
    run_and_compare(ref, fast, torch.randn(37, 6, dtype=torch.float64), steps=2)


def test_non_centre_taps_get_exactly_zero_gradient():
    _, fast = pair()
    fast(torch.randn(9, 6, dtype=torch.float64)).square().sum().backward()
    for conv in (fast.branch2[0], fast.branch3[0], fast.branch4[0]):
        grad = conv.weight.grad.clone()
        assert grad[:, :, 1, 1].abs().sum() > 0
        grad[:, :, 1, 1] = 0
        assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("shape", [(13, 6), (2, 6, 5, 4)])
def test_double_running_stat_update_equals_reference_called_twice(shape):
    ref, fast = pair(seed=8)
    twice = DREAM(6, 4).double()
    twice.load_state_dict(fast.state_dict())
    x = torch.randn(shape, dtype=torch.float64)
    for _ in range(2):
        y_first = ref(x)
        y_second = ref(x)  # the authors' second call for the MMD term
        assert torch.equal(y_first, y_second)
        assert rel_err(fast(x, running_stat_updates=2), y_first) < 1e-10
        twice(x)
        twice.repeat_running_stats_update()
    for module in (fast, twice):
        for (name, br), (_, bf) in zip(ref.named_buffers(), module.named_buffers()):
            assert (torch.equal(br, bf) if br.dtype == torch.long else rel_err(bf, br) < 1e-12), name
    assert ref.branch1[1].num_batches_tracked.item() == 4
    fast.eval()
    before = {k: v.clone() for k, v in fast.state_dict().items()}
    fast(x, running_stat_updates=2)
    assert all(torch.equal(v, before[k]) for k, v in fast.state_dict().items())


def test_state_dict_round_trip_both_ways():
    ref, fast = pair(seed=9)
    back = ReferenceDREAM(6, 4).double()
    back.load_state_dict(fast.state_dict(), strict=True)
    for key, value in ref.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_low_precision_close_to_float64_reference(dtype, tol):
    ref, fast = pair(seed=10)
    fast = fast.to(dtype)
    x = torch.randn(300, 6, dtype=torch.float64)
    assert rel_err(fast(x.to(dtype)), ref(x)) < tol


def test_errors():
    _, fast = pair()
    with pytest.raises(ValueError, match="6 input channels"):
        fast(torch.randn(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="more than 1"):
        fast(torch.randn(1, 6, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        fast(torch.ones(4, 6, dtype=torch.long))
    with pytest.raises(TypeError, match="float64"):
        fast(torch.randn(4, 6, dtype=torch.float32))
    with pytest.raises(ValueError, match="running_stat_updates"):
        fast(torch.randn(4, 6, dtype=torch.float64), running_stat_updates=0)
    with pytest.raises(RuntimeError, match="train-mode forward"):
        DREAM(6, 4).repeat_running_stats_update()
    fast.eval()
    assert fast(torch.randn(1, 6, dtype=torch.float64)).shape == (1, 4)
    assert fast(torch.randn(0, 6, dtype=torch.float64)).shape == (0, 4)


@pytest.mark.parametrize("training", [True, False])
def test_op_gradcheck_and_opcheck(training):
    gen = torch.Generator().manual_seed(11)

    def rnd(*shape, low=None):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return (t.abs() + low) if low is not None else t

    n, c, k = 7, 3, 2
    inputs = dict(
        x=rnd(n, c), w1=rnd(5 * k, c), b1=rnd(5 * k), g1=rnd(5 * k, low=0.5), be1=rnd(5 * k),
        rm1=rnd(5 * k), rv1=rnd(5 * k, low=0.5), wcs=rnd(2, 5 * k), w2=rnd(k, 5 * k), b2=rnd(k),
        g2=rnd(k, low=0.5), be2=rnd(k) + 1.0, rm2=rnd(k), rv2=rnd(k, low=0.5),
    )
    diff = ["x", "w1", "b1", "g1", "be1", "wcs", "w2", "b2", "g2", "be2"]

    def first_output(*tensors):
        args = dict(inputs, **dict(zip(diff, tensors)))
        return dream_ops.dream_matrix_forward(*args.values(), training, EPS, True, False)[0]

    leaves = [inputs[name].clone().requires_grad_() for name in diff]
    assert torch.autograd.gradcheck(first_output, leaves, atol=1e-7, rtol=1e-5)
    args = tuple(dict(inputs, **dict(zip(diff, leaves))).values()) + (training, EPS, True, False)
    torch.library.opcheck(dream_ops.dream_matrix_forward, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


# ---------------------------------------------------------------------------------------------
# Triton kernels (the interpreter here; the GPU on a CUDA machine), fp32 against float64
# ---------------------------------------------------------------------------------------------
def kernel_case(n, c, k, training, seed):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, pos=False):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return t.abs() + 0.5 if pos else t

    return [
        rnd(n, c), rnd(5 * k, c) * 0.5, rnd(5 * k), rnd(5 * k, pos=True), rnd(5 * k), rnd(5 * k),
        rnd(5 * k, pos=True), rnd(2, 5 * k) * 0.5, rnd(k, 5 * k) * 0.3, rnd(k), rnd(k, pos=True),
        rnd(k) + 0.5, rnd(k), rnd(k, pos=True),
    ]


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.parametrize("n,c,k,training,need_backward", [
    (37, 6, 4, True, True), (37, 6, 4, False, True), (21, 6, 4, False, False), (70, 16, 5, True, True),
])
def test_triton_matrix_kernels_match_float64(n, c, k, training, need_backward):
    from mambarec_fast.kernels import dream as kernels

    device = "cuda" if torch.cuda.is_available() else "cpu"
    args64 = kernel_case(n, c, k, training, seed=n + c)
    y64, saved64, *stats64 = dream_ops._forward_torch(*args64, training, EPS, need_backward)
    args32 = [a.float().to(device) for a in args64]
    y, *saved, mean1, var1, mean2, var2 = kernels.matrix_forward(*args32, training, EPS, need_backward, False)
    # The saved tensors are the kernels' own ([z1, u, p, cs, z2]); u and cs mean the same on both paths.
    assert len(saved) == 5
    if need_backward:
        assert rel_err(saved[1].cpu(), saved64[0]) < 1e-5, "u"
        assert rel_err(saved[3].cpu(), saved64[1]) < 1e-5, "cs"
    for name, g, e in zip(("y", "mean1", "var1", "mean2", "var2"), (y, mean1, var1, mean2, var2), (y64, *stats64)):
        assert g.shape == e.shape, name
        if e.numel():
            assert rel_err(g.cpu(), e) < 1e-5, name
    if not need_backward:
        return
    gy = torch.randn(y64.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x, w1, b1, g1, wcs, w2, g2 = (args64[i] for i in (0, 1, 2, 3, 7, 8, 10))
    grads64 = dream_ops._backward_torch(gy, x, w1, b1, g1, wcs, w2, g2, y64, saved64, *stats64, training, EPS)
    inputs32 = [t.float().to(device) for t in (x, w1, g1, wcs, w2, g2)]
    grads32 = kernels.matrix_backward(gy.float().to(device), *inputs32, y, *saved, mean1, var1, mean2, var2, training, EPS, False)
    for name, g, e in zip(("dx", "dw1", "db1", "dg1", "dbe1", "dwcs", "dw2", "db2", "dg2", "dbe2"), grads32, grads64):
        assert g.shape == e.shape, name
        tol = 1e-4 if name == "db1" else 1e-5  # db1 sums to ~0 in train mode: pure rounding
        assert rel_err(g.cpu(), e) < tol or (g.cpu().double() - e).abs().max() < 1e-5, name


def test_eval_pack_cache_follows_parameter_updates():
    ref, fast = pair(seed=12)
    ref.eval()
    fast.eval()
    x = torch.randn(9, 6, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(fast(x), ref(x)) < 1e-10
        cached = fast._pack_cache[1]
        assert fast(x) is not None and fast._pack_cache[1] is cached  # reused while nothing changed
        for module in (ref, fast):  # an optimizer-like in-place step and a running-stat change
            module.branch3[0].weight.mul_(1.5)
            module.conv_cat[1].running_var.add_(0.25)
        assert rel_err(fast(x), ref(x)) < 1e-10
    fast.load_state_dict(randomize(ReferenceDREAM(6, 4).double(), 13).state_dict())
    ref.load_state_dict(fast.state_dict())
    with torch.no_grad():
        assert rel_err(fast(x), ref(x)) < 1e-10


def test_torch_compile_fullgraph_keeps_the_op():
    """`aot_eager` traces the fake kernels and the autograd formula without a C++ toolchain."""
    ref, fast = pair(seed=14)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    run_and_compare(ref, compiled, torch.randn(20, 6, dtype=torch.float64))
    ref.eval()
    fast.eval()
    x = torch.randn(20, 6, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(compiled(x), ref(x)) < 1e-10


def check_cuda_fp32_against_float64(x: torch.Tensor, training: bool, param_floor: float = 1e-3):
    """The fast module on CUDA in fp32 (Triton, ieee dots) against the float64 reference on the
    CPU: output, input and parameter gradients, running statistics, and an eval-mode no-grad call."""
    ref, fast = pair(dim_in=64, dim_out=64, seed=15)
    fast = fast.float().cuda().train(training)
    ref.train(training)
    xr = x.clone().requires_grad_()
    xf = x.float().cuda().requires_grad_()
    yr, yf = ref(xr), fast(xf)
    assert rel_err(yf.cpu(), yr) < 1e-5
    grad = torch.randn_like(yr)
    yr.backward(grad)
    yf.backward(grad.float().cuda())
    assert rel_err(xf.grad.cpu(), xr.grad, floor=1e-3) < 1e-4
    for (name, pr), (_, pf) in zip(ref.named_parameters(), fast.named_parameters()):
        assert rel_err(pf.grad.cpu(), pr.grad, floor=param_floor) < 1e-4, name
    for (name, br), (_, bf) in zip(ref.named_buffers(), fast.named_buffers()):
        assert (torch.equal(br, bf.cpu()) if br.dtype == torch.long else rel_err(bf.cpu(), br) < 1e-5), name
    if not training:
        with torch.no_grad():
            assert rel_err(fast(xf.detach()).cpu(), ref(x)) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("training", [True, False])
def test_cuda_module_fp32_matches_float64_reference(training):
    check_cuda_fp32_against_float64(torch.randn(1000, 64, dtype=torch.float64), training)


def test_cumulative_average_batchnorm_momentum_none():
    ref = randomize(ReferenceDREAM(6, 4, bn_mom=None).double(), 16)
    fast = DREAM(6, 4, bn_mom=None).double()
    fast.load_state_dict(ref.state_dict())
    for _ in range(2):
        x = torch.randn(15, 6, dtype=torch.float64)
        ref(x)
        ref(x)
        fast(x, running_stat_updates=2)
    for (name, br), (_, bf) in zip(ref.named_buffers(), fast.named_buffers()):
        assert (torch.equal(br, bf) if br.dtype == torch.long else rel_err(bf, br) < 1e-12), name
