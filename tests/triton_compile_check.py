"""Compile every Triton kernel of `mambarec_fast.kernels` for an H100 (sm_90) without a GPU.

The interpreter runs the kernels' arithmetic but not the compiler's rules (tile shapes of
`tl.dot`, types carried through loops, scalar control flow, what lowers to PTX at all), so a
kernel that passes every interpreter test could still fail on its first GPU launch. This script
runs each launcher on CPU tensors with the launches recorded instead of run (their outputs are
left uninitialised: only the launch signatures matter), then compiles each distinct recorded
launch, every autotune config included, to a cubin with Triton's bundled ptxas.

Run by `make test` (target `triton-check`) with TRITON_INTERPRET=0. Version-dependent: it uses
Triton's compiler entry points (`ASTSource`, `GPUTarget`), present in Triton 3.x.
"""
from __future__ import annotations

import os
import sys
import time

os.environ["TRITON_INTERPRET"] = "0"  # read when the kernels are decorated, so before importing them

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
_POINTER = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16",
            torch.int64: "i64", torch.int32: "i32"}
LAUNCHES: dict[tuple, tuple] = {}


def _record(kernel: JITFunction, args: tuple, kwargs: dict, options: dict) -> None:
    """Keep (kernel, signature, constexprs, options) of one launch, once per distinct combination."""
    values = dict(zip(kernel.arg_names, args), **kwargs)
    signature, constexprs = {}, {}
    for param in kernel.params:
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + _POINTER[value.dtype]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{kernel.fn.__name__}: no Triton type for argument {param.name}={value!r}")
    key = (kernel.fn.__qualname__, tuple(signature.items()), repr(sorted(constexprs.items())), repr(sorted(options.items())))
    LAUNCHES.setdefault(key, (kernel, signature, constexprs, options))


def _jit_run(self, *args, grid, warmup, **kwargs):
    _record(self, args, kwargs, {})


def _autotuned_run(self, *args, **kwargs):
    # One config per distinct set of meta-parameters: num_warps / num_stages change the schedule,
    # not what compiles.
    seen = set()
    for config in self.configs:
        if repr(sorted(config.kwargs.items())) not in seen:
            seen.add(repr(sorted(config.kwargs.items())))
            options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
            _record(self.fn, args, dict(kwargs, **config.kwargs), options)


def run_launchers() -> None:
    """Every launcher in every mode (train/eval, with/without backward) at the models' width (64;
    fp32 exact `tl.dot`s), then once with TF32 at padded odd widths; MMD in fp32 and bf16."""
    from mambarec_fast.kernels import dream, dream_map, mmd

    eps = 1e-5
    modes = [(64, 64, False, training, need_backward) for training in (True, False) for need_backward in (True, False)]
    for c, k, tf32, training, need_backward in modes + [(6, 4, True, True, True)]:
        vector1, vector2 = (lambda: torch.rand(5 * k) + 0.5), (lambda: torch.rand(k) + 0.5)
        params = (torch.randn(5 * k, c), vector1(), vector1(), vector1(), vector1(), vector1(), torch.randn(2, 5 * k),
                  torch.randn(k, 5 * k), vector2(), vector2(), vector2(), vector2(), vector2())
        w1, _b1, g1, _be1, _rm1, _rv1, wcs, w2, _b2, g2 = params[:10]
        x = torch.randn(300, c)
        out = dream.matrix_forward(x, *params, training, eps, need_backward, tf32)
        if need_backward:
            dream.matrix_backward(torch.randn(300, k), x, w1, g1, wcs, w2, g2, *out, training, eps, tf32)
        convs = (torch.randn(k, c, 1, 1), *(torch.randn(k, c, 3, 3) for _ in range(3)), torch.randn(k, c, 1, 1))
        geometry = (3, 5, 21, 1, training, eps)  # B, H, W, rate: W beyond every dilation
        x = torch.randn(3 * 5 * 21, c)
        out = dream_map.map_forward(x, *convs, *params[1:], *geometry, need_backward, tf32)
        if need_backward:
            dream_map.map_backward(torch.randn(x.shape[0], k), x, *convs, g1, wcs, w2, g2, *out, *geometry, tf32)
    inv_sigma2 = torch.tensor([1.0, 0.5])
    for dtype in (torch.float32, torch.bfloat16):
        x, y = torch.randn(100, 64, dtype=dtype), torch.randn(90, 64, dtype=dtype)
        for normalize in (True, False):
            mmd.mmd_forward(x, y, inv_sigma2, 1.0, 1.0, -2.0, normalize=normalize, drop_diag=True)
            mmd.mmd_backward(torch.tensor(1.0), x, y, inv_sigma2, 1.0, 1.0, -2.0, normalize=normalize)


def main() -> int:
    JITFunction.run = _jit_run
    Autotuner.run = _autotuned_run
    run_launchers()
    failures = 0
    start = time.perf_counter()
    for (name, *_), (kernel, signature, constexprs, options) in LAUNCHES.items():
        try:
            triton.compile(ASTSource(kernel, signature, constexprs), target=TARGET, options=options)
        except Exception as exc:  # report every failing kernel, not only the first
            failures += 1
            print(f"FAILED {name} {constexprs} {options}:\n{exc}\n", file=sys.stderr)
    kernels = sorted({name for name, *_ in LAUNCHES})
    print(f"triton-check: {len(LAUNCHES)} launches of {len(kernels)} kernels compiled for sm_90 with Triton "
          f"{triton.__version__} in {time.perf_counter() - start:.0f} s, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
