# make test / make bench: each creates or reuses ./.venv, installs torch 2.13.0 only when no torch
# is importable there, installs the project (no build isolation: it builds against that torch)
# with its test dependencies, then runs.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mambarec_fast-installed
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.cuh csrc/*/*.h csrc/*.h)

.PHONY: test bench venv clean cuda-check triton-check wheel wheel-smoke

# Compile check of the torch-free CUDA kernels with the machine's nvcc (no CUDA torch needed), with
# ptxas's register/spill report; skipped with a message when nvcc is absent.
NVCC      ?= nvcc
CUDA_ARCH ?= sm_90
CUDA_SRCS := $(wildcard csrc/cuda/*.cu)

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) $(SOURCES)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install --no-build-isolation -e ".[test,bench]"
	touch $(STAMP)

venv: $(STAMP)

cuda-check:
	@if command -v $(NVCC) >/dev/null 2>&1; then \
		mkdir -p build/cuda-check; \
		for src in $(CUDA_SRCS); do \
			out=build/cuda-check/$$(basename $$src .cu); \
			echo "$(NVCC) -arch=$(CUDA_ARCH) -Xptxas -v $$src"; \
			if $(NVCC) -std=c++17 -O3 -arch=$(CUDA_ARCH) -Xptxas -v -c $$src -o $$out.o >$$out.log 2>&1; then \
				grep -E "warning|Compiling entry|registers|spill" $$out.log | c++filt | sed -e 's/^ptxas info *: //'; \
			else \
				cat $$out.log; exit 1; \
			fi; \
		done; \
	else \
		echo "cuda-check: $(NVCC) not found, skipping the CUDA compile check"; \
	fi

# Compile every Triton kernel for sm_90 with Triton's own compiler (no GPU needed): what the
# interpreter tests cannot catch. About 2 minutes cold; Triton caches the results.
triton-check: $(STAMP)
	TRITON_INTERPRET=0 TRITON_DEFAULT_FP_FUSION=1 $(PY) tests/triton_compile_check.py

# A wheel of the project with its compiled extension (CPU here; FORCE_CUDA=1 for CUDA kernels).
wheel: $(STAMP)
	rm -rf dist build/bdist* build/lib*
	$(PY) -m pip wheel . --no-build-isolation --no-deps -w dist

# Install the wheel into a fresh virtual environment (dependencies seen through a .pth file, the
# project itself only from the wheel) and run a smoke test against it from outside the tree.
WHEEL_VENV := build/wheel-venv
wheel-smoke: wheel
	rm -rf $(WHEEL_VENV)
	$(PY) -m venv --without-pip $(WHEEL_VENV)
	site=$$($(WHEEL_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") && \
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > $$site/mambarec_fast_deps.pth && \
	$(PY) -m pip install -q --no-deps --no-index --target $$site dist/*.whl
	cd build && wheel-venv/bin/python ../tests/wheel_smoke.py

test: $(STAMP) cuda-check triton-check wheel-smoke
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf build dist *.egg-info mambarec_fast/*.so
