"""Synthetic sparse-dictionary problems with a known answer, and how well an SAE recovers it.

A problem is a dictionary of ``n_features`` random unit vectors in ``d`` dimensions; each token
switches every feature on independently with its own probability (uniform, or Zipf-like so that a
few features are common and most are rare), optionally with pairs of correlated features (when
a leader fires, its follower also fires with probability ``co_fire_prob``), and gives the active
features magnitudes drawn from U(low, high). Tokens are x = Σ_i a_i d_i, scaled so that
E||x||² = 1 (the training units of docs/recipe.md#normalisation). An SAE trained on such tokens
should find every d_i among its decoder rows: the mean over true features of the best cosine
similarity with any decoder row (MMCS) measures that.

Synopsis::

    problem = synthetic.Problem(d=48, n_features=192, mean_l0=4.0, frequency="zipf", seed=0)
    x, true_l0 = synthetic.sample(problem, n_tokens=2**16, seed=1)   # float32 (n, d), int (n,)
    synthetic.mean_max_cosine(problem, w_dec)                          # MMCS in [-1, 1]
    synthetic.recovery(problem, w_dec, f)    # {"mmcs", "l0", "dead", "matched"} from latents f
    tc = synthetic.TranscoderProblem(problem, d_out=24, affine=True)   # a transcoder's answer
    x, y, true_l0 = synthetic.sample_pairs(tc, n_tokens=2**16, seed=1)
    synthetic.recovery(tc, w_dec, f)         # against the output dictionary

Numpy only, deterministic in (problem, seed); used by tests/sae and benchmarks/recovery.py.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

# Rows generated per chunk (bounds the (rows, n_features) boolean mask's memory).
_CHUNK_ROWS = 1 << 15
# Tokens drawn once per problem to measure the scale that makes E||x||² = 1.
_CALIBRATION_TOKENS = 1 << 16


@dataclasses.dataclass(frozen=True)
class Problem:
    """A synthetic dictionary and the law of its sparse codes.

    Attributes:
        d: input dimension.
        n_features: number of true features (``n_features / d`` is the overcompleteness).
        mean_l0: expected number of active features per token (correlations included).
        frequency: "uniform" (every feature equally likely) or "zipf" (probability ∝ 1/rank^s,
            ranks in a random order).
        zipf_exponent: s of the Zipf law.
        correlated_fraction: fraction of features paired as (leader, follower).
        co_fire_prob: probability that a follower fires when its leader fires.
        magnitude: (low, high) of the uniform law of an active feature's magnitude.
        seed: fixes the dictionary, the probabilities and the pairs.
    """

    d: int
    n_features: int
    mean_l0: float
    frequency: str = "uniform"
    zipf_exponent: float = 1.0
    correlated_fraction: float = 0.0
    co_fire_prob: float = 0.6
    magnitude: tuple[float, float] = (0.5, 1.5)
    seed: int = 0

    def __post_init__(self):
        """Checks the fields (ValueError naming the first bad one)."""
        if self.d < 1 or self.n_features < 1:
            raise ValueError(f"d and n_features must be >= 1, got {self.d}, {self.n_features}")
        if not 0 < self.mean_l0 < self.n_features:
            raise ValueError(f"mean_l0 must be in (0, n_features), got {self.mean_l0}")
        if self.frequency not in ("uniform", "zipf"):
            raise ValueError(f"frequency must be 'uniform' or 'zipf', got {self.frequency!r}")
        if not 0.0 <= self.correlated_fraction <= 1.0:
            raise ValueError(
                f"correlated_fraction must be in [0, 1], got {self.correlated_fraction}"
            )
        if not 0.0 < self.magnitude[0] <= self.magnitude[1]:
            raise ValueError(f"magnitude must be 0 < low <= high, got {self.magnitude}")

    @property
    def dictionary(self) -> np.ndarray:
        """The true features, (n_features, d) float32 unit rows."""
        return _law(self)[0]

    @property
    def probabilities(self) -> np.ndarray:
        """Each feature's own firing probability, (n_features,) float64."""
        return _law(self)[1]


@functools.lru_cache(maxsize=32)
def _law(problem: Problem):
    """(dictionary, probabilities, leaders, followers, scale) of a problem, computed once."""
    rng = np.random.default_rng(problem.seed)
    dictionary = rng.standard_normal((problem.n_features, problem.d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    if problem.frequency == "zipf":
        ranks = rng.permutation(problem.n_features) + 1
        weights = 1.0 / ranks.astype(np.float64) ** problem.zipf_exponent
    else:
        weights = np.ones(problem.n_features)
    order = rng.permutation(problem.n_features)
    n_pairs = int(problem.correlated_fraction * problem.n_features) // 2
    leaders, followers = order[:n_pairs], order[n_pairs : 2 * n_pairs]
    probabilities = _probabilities(weights, leaders, problem.co_fire_prob, problem.mean_l0)
    law = (dictionary.astype(np.float32), probabilities, leaders, followers)
    # The scale that makes E||x||² = 1, measured on a calibration draw of its own.
    raw, _ = _draw(problem, law, _CALIBRATION_TOKENS, np.random.default_rng([problem.seed, 2**31]))
    scale = 1.0 / np.sqrt(np.mean(np.sum(np.square(raw, dtype=np.float64), axis=1)))
    return (*law, np.float32(scale))


def _probabilities(weights, leaders, co_fire_prob, mean_l0, cap=0.9) -> np.ndarray:
    """min(c·weights, cap) with c found by bisection so that E[L0] = mean_l0.

    E[L0] = Σ p + co_fire_prob · Σ_leaders p (ignoring the rare case of a follower firing on its
    own as well). The cap keeps the most common Zipf features from firing on every token.
    """

    def expected(c):
        p = np.minimum(c * weights, cap)
        return p.sum() + co_fire_prob * p[leaders].sum()

    if expected(np.inf) < mean_l0:
        raise ValueError(
            f"mean_l0 {mean_l0} is not reachable with per-feature probability <= {cap}"
        )
    low, high = 0.0, 1.0
    while expected(high) < mean_l0:
        high *= 2.0
    for _ in range(100):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if expected(mid) < mean_l0 else (low, mid)
    return np.minimum(high * weights, cap)


def _draw(problem: Problem, law, n_tokens: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Unscaled tokens Σ_i a_i d_i and their active-feature counts."""
    dictionary, probabilities, leaders, followers = law
    low, high = problem.magnitude
    xs, l0s = [], []
    for start in range(0, n_tokens, _CHUNK_ROWS):
        rows = min(_CHUNK_ROWS, n_tokens - start)
        active = rng.random((rows, problem.n_features), dtype=np.float32) < probabilities
        if len(leaders):
            pulled = active[:, leaders] & (rng.random((rows, len(leaders))) < problem.co_fire_prob)
            active[:, followers] |= pulled
        codes = np.zeros(active.shape, np.float32)
        codes[active] = rng.uniform(low, high, size=int(active.sum()))
        xs.append(codes @ dictionary)
        l0s.append(active.sum(axis=1, dtype=np.int32))
    return np.concatenate(xs), np.concatenate(l0s)


def sample(problem: Problem, n_tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws tokens of the problem.

    Args:
        problem: the synthetic problem.
        n_tokens: rows to draw.
        seed: fixes the draw (use different seeds for train and eval).

    Returns:
        (x float32 (n_tokens, d) with E||x||² ≈ 1, active-feature count int32 (n_tokens,)).
    """
    *law, scale = _law(problem)
    x, l0 = _draw(problem, law, n_tokens, np.random.default_rng([problem.seed, seed]))
    return (x * scale).astype(np.float32), l0


@dataclasses.dataclass(frozen=True)
class TranscoderProblem:
    """A transcoder's known answer: a problem's sparse codes written through an output dictionary.

    Output feature i is g_i ∝ d_i M + noise·n_i: input feature d_i through a fixed linear map M
    (d, d_out), plus a random unit deviation n_i of its own, so that no linear map of x gives y
    and the codes themselves must be found. With ``affine``, x also has a dense part z (isotropic
    Gaussian, E||z||² = ``dense``², no feature's) and y a dense affine part x A + b, which only a
    skip-transcoder's W_skip and b_dec can carry:

        x = s Σ_i a_i d_i (+ z),   y = s Σ_i a_i g_i (+ x A + b),   E||s Σ_i a_i d_i||² = 1.

    Without z the affine part would not be identifiable: x A = s Σ_i a_i (d_i A) is itself a
    sparse map, which latents could carry as well as W_skip. With z, the skip term's error
    z (W_skip − A) is a dense residual no sparse code removes, so W_skip = A is the only optimum.

    Attributes:
        inputs: the input problem (its dictionary and the law of the codes).
        d_out: the output width.
        noise: the norm of each feature's deviation from the linear map (before normalising).
        affine: whether x has the dense part z and y the dense part x A + b.
        dense: the norm of z, relative to the sparse part's (with ``affine``).
        seed: fixes M, the deviations, A and b.
    """

    inputs: Problem
    d_out: int
    noise: float = 1.0
    affine: bool = False
    dense: float = 0.5
    seed: int = 0

    @property
    def dictionary(self) -> np.ndarray:
        """The true output features g_i, (n_features, d_out) float32 unit rows."""
        return _transcoder_law(self)[0]

    @property
    def affine_part(self) -> tuple[np.ndarray, np.ndarray]:
        """(A (d, d_out), b (d_out,)), zeros without ``affine``."""
        return _transcoder_law(self)[1:]


@functools.lru_cache(maxsize=8)
def _transcoder_law(problem: TranscoderProblem):
    rng = np.random.default_rng([problem.seed, 7])
    d, d_out = problem.inputs.d, problem.d_out
    linear = rng.standard_normal((d, d_out)) / np.sqrt(d)
    deviation = rng.standard_normal((problem.inputs.n_features, d_out))
    deviation *= problem.noise / np.linalg.norm(deviation, axis=1, keepdims=True)
    outputs = problem.inputs.dictionary.astype(np.float64) @ linear
    outputs = outputs / np.linalg.norm(outputs, axis=1, keepdims=True) + deviation
    outputs /= np.linalg.norm(outputs, axis=1, keepdims=True)
    a = rng.standard_normal((d, d_out)) / np.sqrt(d) if problem.affine else np.zeros((d, d_out))
    b = rng.standard_normal(d_out) * 0.3 if problem.affine else np.zeros(d_out)
    return outputs.astype(np.float32), a.astype(np.float32), b.astype(np.float32)


def sample_pairs(
    problem: TranscoderProblem, n_tokens: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws (x, y) pairs of a transcoder problem (the class docstring).

    Returns:
        (x float32 (n_tokens, d), y float32 (n_tokens, d_out), active-feature count (n_tokens,)).
    """
    *law, scale = _law(problem.inputs)
    dictionary = np.concatenate([law[0], problem.dictionary], axis=1)  # both sides, one draw
    both, l0 = _draw(
        problem.inputs,
        (dictionary, *law[1:]),
        n_tokens,
        np.random.default_rng([problem.seed, seed]),
    )
    x = both[:, : problem.inputs.d] * scale
    y = both[:, problem.inputs.d :] * scale
    if problem.affine:
        rng = np.random.default_rng([problem.seed, seed, 1])
        x = x + rng.standard_normal(x.shape) * (problem.dense / np.sqrt(problem.inputs.d))
        a, b = problem.affine_part
        y = y + x @ a + b
    return x.astype(np.float32), y.astype(np.float32), l0


def mean_max_cosine(problem: Problem, w_dec: np.ndarray) -> float:
    """MMCS: mean over true features of the largest cosine with any decoder row (M, d)."""
    rows = np.asarray(w_dec, np.float64)
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return float(np.mean(np.max(problem.dictionary @ rows.T, axis=1)))


def recovery(problem: Problem, w_dec: np.ndarray, latents: np.ndarray, cos_match=0.9) -> dict:
    """Recovery statistics of one SAE.

    Args:
        problem: the synthetic problem (a `TranscoderProblem`: against its output features).
        w_dec: the SAE's decoder rows (M, d) (any norms).
        latents: its latent activations on eval tokens of the problem, (n, M).
        cos_match: a true feature counts as matched when some row has at least this cosine.

    Returns:
        dict: mmcs, matched (fraction of true features matched), l0 (mean active latents per
        token), dead (fraction of latents that never fire on the eval tokens).
    """
    rows = np.asarray(w_dec, np.float64)
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    best = np.max(problem.dictionary @ rows.T, axis=1)
    active = np.asarray(latents) != 0
    return {
        "mmcs": float(np.mean(best)),
        "matched": float(np.mean(best >= cos_match)),
        "l0": float(np.mean(active.sum(axis=1))),
        "dead": float(np.mean(~active.any(axis=0))),
    }
