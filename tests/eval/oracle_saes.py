"""SAEs whose evaluation is known exactly, shared by the eval tests.

``identity_sae(d)`` reconstructs exactly: W_enc = [I, −I], W_dec = [I; −I], zero biases and
thresholds, so x̂ = relu(x) − relu(−x) = x (FVU 0, delta LM loss and KL exactly 0).
``zero_sae(d)`` reconstructs nothing: splicing it is zero-ablating the site.
"""

import numpy as np


def identity_sae(d: int) -> dict:
    eye = np.eye(d)
    return {
        "W_enc": np.concatenate([eye, -eye], 1),
        "W_dec": np.concatenate([eye, -eye], 0),
        "b_enc": np.zeros(2 * d),
        "b_dec": np.zeros(d),
        "threshold": np.zeros(2 * d),
    }


def zero_sae(d: int) -> dict:
    return {k: np.zeros_like(v) for k, v in identity_sae(d).items()}
