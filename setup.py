from setuptools import find_packages, setup

setup(
    name="sisa",
    version="0.1.0",
    description="SISA attention (SSM-Informed Softmax Attention): exact reference paths and fused Triton kernels",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["sisa", "sisa_kernels", "benchmarks"]),
    # Install torch first (pip install torch==2.13.0 takes the CPU wheel): a bare
    # torch requirement with no torch present pulls a multi-GB CUDA build.
    install_requires=["torch>=2.5", "triton", "numpy", "einops"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis"],
        "bench": ["matplotlib"],
        "flash": ["flash-attn"],
    },
    entry_points={"console_scripts": [
        "sisa-parity=sisa.parity:main",
        "sisa-bench=benchmarks.run:main",
    ]},
)
