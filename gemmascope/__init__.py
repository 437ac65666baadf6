"""gemmascope: Gemma Scope-style sparse autoencoders for Gemma 2, in JAX.

Subpackages (import them directly, e.g. ``from gemmascope import model, sae``):

- ``model``: Gemma 2 in Flax with named capture points; presets; HF safetensors loading.
- ``data``: text corpora -> tokenized, packed sequences with a held-out split.
- ``activations``: the sharded, resumable activation cache; readers; streaming; ArraySource.
- ``sae``: JumpReLU, Gated, TopK, BatchTopK, ReLU-L1 and Matryoshka SAEs; optimizer.
- ``train``: the sharded, stacked-sweep trainer with orbax checkpoints.
- ``eval``: per-SAE metrics (L0, FVU, delta LM loss, KL, ...), tables and plots.
- ``export``: Gemma Scope ``params.npz`` writer and reader.
- ``main``: the absl command line.
"""

__version__ = "0.1.0"
