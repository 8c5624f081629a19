"""Smoke test of an INSTALLED wheel (not the source tree), run by `make wheel-smoke` / `make test`.

Catches packaging mistakes that the in-tree test suite cannot see: a module or `kernels/` file left
out of the wheel, an unshipped compiled extension.
"""
import sys
import tempfile
from pathlib import Path

import mambarec_fast

source_tree = Path(__file__).resolve().parents[1]
installed = Path(mambarec_fast.__file__).resolve()
if installed.parent == source_tree / "mambarec_fast":
    sys.exit(f"wheel smoke test imported the source tree ({installed}), not the installed wheel")

from mambarec_fast import _C  # noqa: E402,F401  the compiled extension is shipped
from mambarec_fast.cli import main  # noqa: E402
from mambarec_fast.kernels import dream, mmd  # noqa: E402,F401  the Triton kernels are shipped
from mambarec_fast.ops.propagation import KERNEL_DEVICES  # noqa: E402

assert "cpu" in KERNEL_DEVICES, f"compiled CPU kernels not registered: {KERNEL_DEVICES}"
with tempfile.TemporaryDirectory() as tmp:
    assert main(["make-synthetic", "tiny", f"{tmp}/tiny"]) == 0
    train = ["train", "--data", f"{tmp}/tiny", "--epochs", "1", "--set", "embedding_size=16", "--out", f"{tmp}/run", "--no-progress"]
    assert main(train) == 0
    assert main(["recommend", f"{tmp}/run/best.pt", "--k", "5", "--out", f"{tmp}/recs.csv"]) == 0
print(f"wheel smoke test passed against {installed.parent}")
