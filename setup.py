"""Installs rwkv_jax (the library) and pallas_kernels (the WKV kernels, a leaf package)."""

import pathlib

from setuptools import find_packages, setup

CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "einops>=0.8,<0.9",
    "ml-collections>=1.1,<1.2",
    "ml_dtypes>=0.5",
    "numpy>=1.26",
    "tokenizers>=0.20,<1",
    "tensorboardX>=2.6,<3",
    "tqdm>=4.66",
    "matplotlib>=3.8,<4",
]

# lm-evaluation-harness: the model "rwkv_jax" (rwkv_jax/evaluation/lm_eval_adapter.py, experiments/lm_eval.py)
EVAL = ["lm-eval==0.4.13"]

TEST = [
    "pytest>=8,<10",
    "pytest-xdist>=3.5,<4",
    "ruff>=0.6",
    # Property-based and coverage-guided fuzzing of the file readers (tests/fuzz).
    "hypothesis>=6.100,<7",
    "atheris==3.0.0",
    # Reference implementations, used by the tests only.
    "torch==2.13.0",
    "transformers>=4.45,<6",
    "rwkv==0.8.32",
    # flash-linear-attention's RWKV-7 model runs our Hugging Face folders with its torch reference ops
    # (tests/checkpoint/test_hf.py); fla imports triton, which installs (and imports) on a CPU-only machine.
    "flash-linear-attention==0.6.0",
    "fla-core==0.6.0",
    "triton>=3.2",
    "safetensors>=0.4",
    # The notebooks are executed headless by tests/test_notebooks.py.
    "nbclient>=0.10,<1",
    "nbformat>=5.9,<6",
    "ipykernel>=6,<8",
    *EVAL,
]

NOTEBOOKS = ["jupyterlab>=4", "ipykernel>=6", "nbclient>=0.10"]

# The other stacks experiments/bench.py and experiments/bench_training.py compare with on the same weights:
# BlinkDL's rwkv package (decode, prefill) and jaxrwkv (training; its RWKV-6 loads a BlinkDL state dict).
BENCH = ["rwkv==0.8.32", "torch==2.13.0", "jaxrwkv==0.0.1"]

setup(
    name="rwkv-jax",
    version="0.1.0",
    description=(
        "RWKV-4, Eagle (RWKV-5), Finch (RWKV-6) and Goose (RWKV-7) in JAX/Flax NNX, with Pallas WKV kernels "
        "and official-checkpoint I/O."
    ),
    long_description=pathlib.Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["rwkv_jax", "rwkv_jax.*", "pallas_kernels", "pallas_kernels.*"]),
    package_data={"rwkv_jax.tokenizers": ["data/*"], "rwkv_jax.native": ["*.cc"]},
    install_requires=CORE,
    extras_require={"test": TEST, "eval": EVAL, "notebooks": NOTEBOOKS, "bench": BENCH},
    license="Apache-2.0",
)
