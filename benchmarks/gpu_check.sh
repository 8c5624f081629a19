#!/usr/bin/env bash
# One call on a lent GPU machine (H100/H200; under 9.5 minutes: the per-call limit is 10): build a CUDA wheel, install it into a
# clean folder, run the GPU tests and the benchmarks against the INSTALLED wheel, and write the log,
# test report and benchmark files under $OUT. Usage (repo root): OUT=/some/dir bash benchmarks/gpu_check.sh
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$repo/benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no GPU"; exit 1; }
$py -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"

echo "== build the CUDA wheel"
cd "$repo" && rm -rf dist build/bdist* build/lib* build/temp*
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
  timeout 180 $py -m pip wheel . --no-build-isolation --no-deps -w dist -q || { echo "wheel build failed"; exit 1; }
target=$(mktemp -d)/site
$py -m pip install -q --no-deps --no-index --target "$target" dist/*.whl || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=$target
cd /tmp  # nothing below may import the source tree
$py -c "import mambarec_fast, mambarec_fast._C, torch; from mambarec_fast.ops.propagation import KERNEL_DEVICES; \
print('installed at', mambarec_fast.__file__, 'kernels on', sorted(KERNEL_DEVICES)); assert 'cuda' in KERNEL_DEVICES"

echo "== GPU tests (every Triton and CUDA op against its reference on the GPU)"
timeout 120 $py -m pytest "$repo/tests" -m gpu -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" || status=1

echo "== DREAM at the issue's target sizes and the [32, 64, 64, 64] general-path case"
timeout 100 $py "$repo/benchmarks/bench_dream.py" --device cuda --sizes 7050 23033 --repeats 7 | tee "$OUT/dream_cuda.md" || status=1

echo "== the whole job and each op (fast vs reference vs torch.compile of the reference)"
timeout 150 $py "$repo/benchmarks/run.py" --device cuda --sizes quick --repeats 5 --out "$OUT" || status=1
exit $status
