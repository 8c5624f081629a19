"""Everything that depends on the Triton or torch version, in one place.

Kernels import `triton`/`tl` from here; ops wrap launches with `wrap_triton` from here.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # the CPU torch wheel does not depend on Triton
    triton = None
    tl = None
    HAS_TRITON = False

#: True when kernels run under the Triton interpreter (read when `@triton.jit` decorates).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def wrap_triton(kernel):
    """`torch.library.wrap_triton(kernel)` so torch.compile sees the launch; the raw kernel when
    interpreting (some torch versions reject interpreted kernels there)."""
    if INTERPRET:
        return kernel
    from torch.library import wrap_triton as _wrap

    return _wrap(kernel)


@contextmanager
def cudnn_tf32(allowed: bool):
    """cuDNN's TF32 switch set to `allowed` for the duration (torch's global default is on), then
    the caller's setting back: the launchers' ATen convolutions follow their `allow_tf32`."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous
