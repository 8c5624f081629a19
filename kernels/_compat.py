"""Everything that depends on the Triton or torch version, in one place.

Kernels import `triton`/`tl` from here; ops wrap launches with `wrap_triton` from here.
"""
from __future__ import annotations

import os

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
