"""Random params for tiny Gemma 2 configs without compiling ``model.init_params``.

``jax.eval_shape`` gives the exact params pytree of ``model.init_params``; numpy fills it with
N(0, 0.02²) values (HF's scheme for matrices). Compiling the jitted initialiser costs seconds per
config, which the eval tests' budget cannot spare.
"""

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope import model


def random_params(cfg, seed: int = 0, std: float = 0.02):
    """A params pytree shaped like ``model.init_params(cfg, key)``, filled from numpy."""
    shapes = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * std, s.dtype), shapes)
