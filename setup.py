"""Build script: the Python packages, plus the `mambarec_fast._C` extension once csrc/ has sources.

`kernels/` is installed as the subpackage `mambarec_fast.kernels` through `package_dir`.
"""
from setuptools import setup

PACKAGES = [
    "mambarec_fast",
    "mambarec_fast.data",
    "mambarec_fast.ops",
    "mambarec_fast.reference",
    "mambarec_fast.kernels",
]

setup(
    packages=PACKAGES,
    package_dir={"mambarec_fast.kernels": "kernels"},
)
