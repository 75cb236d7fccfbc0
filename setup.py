from setuptools import find_packages, setup

setup(
    name="sisa",
    version="0.1.0",
    description="SISA attention (SSM-Informed Softmax Attention): exact reference paths and fused Triton kernels",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["sisa", "sisa.*", "sisa_kernels", "benchmarks"]),
    package_data={"benchmarks": ["lm_eval_tasks/*.yaml", "lm_eval_tasks/*.jsonl", "lm_eval_tasks/*.py"]},
    # Install torch first (pip install torch==2.13.0 takes the CPU wheel): a bare
    # torch requirement with no torch present pulls a multi-GB CUDA build.
    install_requires=["torch>=2.5", "triton", "numpy", "einops"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis"],
        "bench": ["matplotlib"],
        "flash": ["flash-attn"],
        # sisa.hf: Hugging Face config/model classes and the decode cache as a transformers Cache.
        "hf": ["transformers>=5.0", "safetensors>=0.4.3", "accelerate>=1.0"],
        # lm-evaluation-harness (benchmarks/lm_eval_smoke.py and tests/test_hf_lm_eval.py).
        "eval": ["lm-eval>=0.4.5", "transformers>=5.0", "safetensors>=0.4.3", "accelerate>=1.0"],
    },
    entry_points={"console_scripts": [
        "sisa-parity=sisa.parity:main",
        "sisa-bench=benchmarks.run:main",
        "sisa-convert=sisa.convert:main",
    ]},
)
