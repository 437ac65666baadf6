"""gemmascope: Gemma Scope-style sparse autoencoders for Gemma 2 and Gemma 3, in JAX.

The packages, in the order a study runs through them (import them directly, e.g.
``from gemmascope import model, sae``):

- ``model``: Gemma 2 and Gemma 3 in JAX with named capture points; presets; HF safetensors loading.
- ``data``: text corpora -> tokenized, packed sequences with a held-out split.
- ``activations``: the sharded, resumable activation cache; readers; streaming; ArraySource.
- ``sae``: JumpReLU, Gated, TopK, BatchTopK, ReLU-L1 and Matryoshka SAEs; optimizer.
- ``train``: the sharded, stacked-sweep trainer with orbax checkpoints.
- ``eval``: per-SAE metrics (L0, FVU, delta LM loss, KL, ...), tables and plots.
- ``export``: Gemma Scope ``params.npz`` writer and reader.
- ``study``: the study config schema, its jobs, the pipeline stages and the command line
  (``python -m gemmascope``, gemmascope/study/main.py).
- ``plan``: the cost model behind ``--mode=plan`` (FLOPs, time, memory, storage).

Two foundation modules sit beside them: ``files``, through which every stage reads and writes the
workdir's small files (atomic, local or ``gs://``), and ``mesh``, the device mesh and the one table
of logical-axis rules every array is sharded by.
"""

__version__ = "0.1.0"
