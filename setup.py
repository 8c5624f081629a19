"""Build script: the Python packages and the `mambarec_fast._C` operator library (csrc/).

`kernels/` is installed as the subpackage `mambarec_fast.kernels` through `package_dir`.

`_C` is a CppExtension (CPU kernels only) where CUDA is absent and a CUDAExtension (CPU and CUDA
kernels) where torch has CUDA and a toolkit is found. Switches: FORCE_CUDA=1 builds the CUDA kernels
without a visible GPU (torch must still have CUDA); FORCE_ONLY_CPU=1 skips them. TORCH_CUDA_ARCH_LIST
is respected; unset, it defaults to DEFAULT_CUDA_ARCHS (sm_90 for H100/H200 among them).
"""
import glob
import os

from setuptools import setup

PACKAGES = [
    "mambarec_fast",
    "mambarec_fast.data",
    "mambarec_fast.ops",
    "mambarec_fast.reference",
    "mambarec_fast.kernels",
]

DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0+PTX"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") == "1"


def _with_cuda() -> bool:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if _flag("FORCE_ONLY_CPU"):
        return False
    if _flag("FORCE_CUDA"):
        if torch.version.cuda is None or CUDA_HOME is None:
            raise RuntimeError(f"FORCE_CUDA=1 needs a torch built with CUDA (this one: {torch.__version__}) and a "
                               "CUDA toolkit (set CUDA_HOME); unset it for a CPU-only build")  # fmt: skip
        return True
    return torch.version.cuda is not None and torch.cuda.is_available() and CUDA_HOME is not None


def _extensions():
    """The `_C` extension and the build_ext command, or nothing when torch is not importable."""
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # e.g. metadata-only builds: the ops then fall back to torch.sparse
        return [], {}
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx_flags = ["-O3"]
    if _with_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
        ext = CUDAExtension("mambarec_fast._C", sources, extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]})
    else:
        ext = CppExtension("mambarec_fast._C", sources, extra_compile_args={"cxx": cxx_flags})
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()

setup(
    packages=PACKAGES,
    package_dir={"mambarec_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
