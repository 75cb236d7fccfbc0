"""Only the package list (metadata: pyproject.toml). The repository's benchmarks/
folder, with any subpackages, installs as ``sisa_benchmarks``: an install must not
claim the top-level name ``benchmarks``. From a checkout, ``python -m benchmarks.X``
still works (its imports are relative)."""
from setuptools import find_packages, setup

bench = ["sisa_benchmarks" + name[len("benchmarks"):] for name in find_packages(include=["benchmarks", "benchmarks.*"])]
setup(packages=find_packages(include=["sisa", "sisa.*", "sisa_kernels", "sisa_kernels.*"]) + bench,
      package_dir={"sisa_benchmarks": "benchmarks"})
