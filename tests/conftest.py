"""Shared fixtures. TRITON_INTERPRET must be set before any kernel module is imported."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests use small tensors: one intra-op thread is as fast, and it keeps a shared or loaded
# machine from the oversubscription stalls that multiply small-op latency many times over.
torch.set_num_threads(int(os.environ.get("MAMBAREC_TEST_THREADS", "1")))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(os.environ.get("MAMBAREC_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """`../shared/data` beside the checkout (real public data); skips when absent, as on a user's machine."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set MAMBAREC_SHARED_DATA to its folder)")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
