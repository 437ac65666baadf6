"""Random LM params and random JumpReLU SAE entries, for the eval and inspect benchmarks.

Both benchmarks time a whole sweep against its SAEs one by one; neither cares what the weights
mean, only their shapes, so they share these two builders.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope import model
from gemmascope.eval.sweep_eval import SaeEntry


def random_params(cfg, seed: int):
    """The model's params for ``cfg``, every leaf N(0, 0.02²), without running its init."""
    shapes = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.02, s.dtype), shapes)


def random_sae(rng, site: str, d: int, width: int, threshold: float) -> SaeEntry:
    """A JumpReLU SAE entry at ``site``: random unit decoder rows, W_enc = W_decᵀ, one θ."""
    w_dec = rng.normal(size=(width, d))
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    params = {
        "W_enc": w_dec.T.astype(np.float32),
        "W_dec": w_dec.astype(np.float32),
        "b_enc": np.zeros(width, np.float32),
        "b_dec": np.zeros(d, np.float32),
        "threshold": np.full(width, threshold, np.float32),
    }
    kind, layer = site.split("/")
    config = {
        "site": site,
        "kind": kind,
        "layer": int(layer),
        "d_in": d,
        "width": width,
        "architecture": "jumprelu",
    }
    return SaeEntry(folder=f"bench/{site}/{threshold}", config=config, params=params)
